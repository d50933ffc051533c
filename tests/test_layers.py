"""The package's import layers: no module imports one on a higher layer.

Imports inside functions count too (a lazy import is still a dependency). Modules of one layer
may import each other. The order, lowest first:

0 foundation   errors, fsutil, paths, ...: no other part of edgecsp below them
1 domain       models, Darknet files, data sets, training, postprocessing, AP: the detector itself
2 engines      export, calibration, backends, device profiles, artifacts and their manifest,
               evaluation, the predictor: one model turned into one engine and run
3 pipeline     compile as steps (export -> calibrate -> build -> verify -> publish)
4 bench        benchmarks and the nightly: they compile through the pipeline's public steps
5 fleet        the nightly across devices
6 commands     python -m edgecsp.<verb> and their shared option helpers
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edgecsp"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("edgecsp", "errors", "fsutil", "paths", "tomlfile", "resources", "extras", "options", "gate",
                    "faults")),
    ("domain", ("models", "darknet", "data", "training", "postprocess", "complexity", "cocoap", "onnx_graph")),
    ("engines", ("onnx_writer", "calibration", "backends", "jetson", "targets", "artifact", "manifest", "signing",
                 "binding", "coco_eval", "verifyset", "predictor", "streaming", "video")),
    ("pipeline", ("pipeline",)),
    ("bench", ("bench",)),
    ("fleet", ("fleet",)),
    ("commands", ("compile", "export", "evaluate", "detect", "benchmark", "summary", "train", "nightly", "verify",
                  "worker", "data.__main__", "cli")),
]

# (importer, imported): why the one exception is not a layering problem.
ALLOWED = {
    ("edgecsp", "edgecsp.predictor"): "edgecsp.load, the public entry point: a lazy re-export of predictor.load",
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def _layer(module: str) -> int:
    """The layer of a module: the longest matching name in LAYERS (``data.__main__`` before ``data``)."""
    rel = module.split(".", 1)[1] if "." in module else "edgecsp"
    best, index = -1, None
    for i, (_, names) in enumerate(LAYERS):
        for name in names:
            if (rel == name or rel.startswith(name + ".")) and len(name) > best:
                best, index = len(name), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return index


def _imports(path: Path, mods: dict[str, Path]) -> set[tuple[str, int]]:
    """(imported edgecsp module, line) for every import in the file, at any depth."""

    def resolve(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rpartition(".")[0]
        return name

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {(resolve(a.name), node.lineno) for a in node.names if a.name.split(".")[0] == "edgecsp"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "edgecsp":
            for a in node.names:  # ``from edgecsp import cli`` imports the module edgecsp.cli
                full = f"{node.module}.{a.name}"
                found.add((full if full in mods else resolve(node.module), node.lineno))
    return found


def _violations() -> list[str]:
    mods = _modules()
    found = []
    for module, path in sorted(mods.items()):
        for imported, line in sorted(_imports(path, mods)):
            if _layer(imported) > _layer(module) and (module, imported) not in ALLOWED:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[_layer(module)][0]}) "
                             f"imports {imported} ({LAYERS[_layer(imported)][0]})")
    return found


def test_no_module_imports_a_higher_layer():
    assert _violations() == []


def test_every_module_has_a_layer():
    for module in _modules():
        _layer(module)  # asserts


def test_no_private_names_across_packages():
    """A leading underscore is a module's own business: bench/ reaches the pipeline through its
    public steps, not its helpers."""
    mods = _modules()
    found = []
    for module, path in sorted(mods.items()):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgecsp."):
                other = node.module.rpartition(".")[0]
                mine = module.rpartition(".")[0] if path.name != "__init__.py" else module
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                if private and other != mine and node.module != module:
                    found.append(f"{module} imports {', '.join(private)} from {node.module}")
    assert found == [], found


def test_the_checker_sees_lazy_imports(tmp_path):
    """The checker finds an import inside a function (a violation hiding there is still one)."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from edgecsp.pipeline import compile_artifact\n")
    assert ("edgecsp.pipeline", 2) in _imports(f, _modules())
    assert _layer("edgecsp.pipeline") > _layer("edgecsp.paths")
