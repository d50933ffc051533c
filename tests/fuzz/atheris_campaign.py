"""Coverage-guided fuzzing of edgecsp's parsers with atheris (libFuzzer), outside CI.

    pip install atheris
    python tests/fuzz/atheris_campaign.py TARGET [CORPUS_DIR] -max_total_time=600
    python tests/fuzz/atheris_campaign.py all -max_total_time=120   # every target in turn

TARGET is one of the names in ``TARGETS``. Each input must end in success or in one line of
EdgeCSPError; anything else is a crash, which libFuzzer stops on and saves as ``crash-<sha1>``.
Keep such a file as a regression example in the hypothesis tests (tests/fuzz/). The corpus is
seeded with the real files (shared Darknet cfgs, target profiles, recipes, the nightly suite).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
WORK = Path(tempfile.mkdtemp(prefix="edgecsp-atheris-"))
os.environ.setdefault("EDGECSP_CACHE_DIR", str(WORK / "cache"))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _file(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def darknet_cfg(data: bytes) -> None:
    from edgecsp.darknet.cfg import parse_cfg
    from edgecsp.darknet.model import DarknetModel

    cfg = parse_cfg(_file("fuzz.cfg", data))
    DarknetModel(cfg, input_size=64)


def checkpoint(data: bytes) -> None:
    from edgecsp.models.checkpoint import resolve_model

    resolve_model(str(_file("fuzz.safetensors", data)))


def target_profile(data: bytes) -> None:
    from edgecsp.targets import load_target

    load_target(_file("fuzz-target.toml", data))


def calibration_recipe(data: bytes) -> None:
    from edgecsp.calibration import load_recipe

    load_recipe(_file("fuzz-recipe.toml", data))


def benchmark_suite(data: bytes) -> None:
    from edgecsp.bench.suite import load_suite

    load_suite(_file("fuzz-suite.toml", data))


def image(data: bytes) -> None:
    from edgecsp.data.preprocess import load_image_rgb

    load_image_rgb(_file("fuzz.png", data))


def coco(data: bytes) -> None:
    from edgecsp.data.coco import resolve_dataset

    root = WORK / "coco"
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations.json").write_bytes(data)
    dataset = resolve_dataset(root)
    for i in range(min(len(dataset), 4)):
        dataset.targets(i)


def manifest(data: bytes) -> None:
    from edgecsp.artifact import open_artifact

    root = WORK / "artifact"
    root.mkdir(exist_ok=True)
    (root / "manifest.json").write_bytes(data)
    # Resealed, so the campaign reaches the parser and schema behind the digest check.
    (root / "manifest.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  manifest.json\n")
    open_artifact(root)


def tarball(data: bytes) -> None:
    from edgecsp.artifact import open_artifact

    open_artifact(_file("fuzz.tar.gz", data))


TARGETS = {f.__name__: f for f in (darknet_cfg, checkpoint, target_profile, calibration_recipe, benchmark_suite,
                                   image, coco, manifest, tarball)}
SEEDS = {
    "darknet_cfg": sorted((SHARED / "darknet-cfg").glob("*.cfg")),
    "target_profile": sorted((REPO / "targets").glob("*.toml")),
    "calibration_recipe": sorted((REPO / "calibration").glob("*.toml")),
    "benchmark_suite": [REPO / "benchmarks" / "nightly.toml"],
}
CHECKPOINT_SEED = REPO / "edgecsp" / "assets" / "demo" / "csp-tiny-efm-shapes.safetensors"


def _generated_seeds(name: str) -> dict[str, bytes]:
    """Small valid inputs for targets with no file in the repository to start from."""
    import io
    import json
    import tarfile

    manifest = {"schema": "edgecsp-artifact/1", "engine": "model.onnx", "precision": "fp32",
                "files": {"model.onnx": {"sha256": "0" * 64, "bytes": 1}},
                "backend": {"name": "onnxruntime", "version": "1", "info": {}},
                "model": {"input_size": [320, 320], "class_names": ["a"], "num_classes": 1},
                "inputs": [{"name": "images", "shape": [1, 3, 320, 320]}]}
    if name == "checkpoint":  # the demo's real description over one small tensor: header and JSON paths
        import torch
        from safetensors import safe_open
        from safetensors.torch import save as save_bytes

        with safe_open(str(CHECKPOINT_SEED), framework="pt") as f:
            meta = f.metadata()
        return {"small.safetensors": save_bytes({"w": torch.zeros(2)}, metadata=meta)}
    if name == "manifest":
        return {"manifest.json": json.dumps(manifest).encode()}
    if name == "coco":
        return {"coco.json": json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8}],
                                         "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                                                          "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0}],
                                         "categories": [{"id": 1, "name": "a"}]}).encode()}
    if name == "image":
        from PIL import Image

        out = {}
        for fmt in ("PNG", "JPEG", "BMP"):
            buf = io.BytesIO()
            Image.new("RGB", (8, 6), (10, 20, 30)).save(buf, fmt)
            out[f"seed.{fmt.lower()}"] = buf.getvalue()
        return out
    if name == "tarball":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            data = json.dumps(manifest).encode()
            info = tarfile.TarInfo("art/manifest.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return {"seed.tar.gz": buf.getvalue()}
    return {}


def main() -> None:
    import atheris

    name, rest = sys.argv[1], sys.argv[2:]
    if name == "all":
        for each in TARGETS:
            print(f"== {each}", flush=True)
            subprocess.run([sys.executable, __file__, each, *rest], check=False)
        return
    if name not in TARGETS:
        sys.exit(f"unknown target {name!r}; known: all, {', '.join(TARGETS)}")
    corpus = [a for a in rest if not a.startswith("-")]
    if not corpus:  # a fresh corpus seeded with the real files
        seed_dir = WORK / f"corpus-{name}"
        seed_dir.mkdir()
        for p in SEEDS.get(name, []):
            if p.is_file():
                (seed_dir / p.name).write_bytes(p.read_bytes())
        for file_name, data in _generated_seeds(name).items():
            (seed_dir / file_name).write_bytes(data)
        rest = [*rest, str(seed_dir)]

    with atheris.instrument_imports(include=["edgecsp"]):
        import edgecsp.artifact  # noqa: F401 - instrumented for coverage
        import edgecsp.bench.suite  # noqa: F401
        import edgecsp.calibration  # noqa: F401
        import edgecsp.darknet.cfg  # noqa: F401
        import edgecsp.darknet.model  # noqa: F401
        import edgecsp.data.coco  # noqa: F401
        import edgecsp.data.preprocess  # noqa: F401
        import edgecsp.models.checkpoint  # noqa: F401
        import edgecsp.targets  # noqa: F401
    from edgecsp.errors import EdgeCSPError

    target = TARGETS[name]

    def one_input(data: bytes) -> None:
        try:
            target(data)
        except EdgeCSPError as err:
            if "\n" in str(err) or not str(err).strip():
                raise AssertionError(f"error message is not one line: {str(err)!r}") from None

    atheris.Setup([sys.argv[0], *rest], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
