"""Untrusted files: planted pickles, hostile archives, manifests that point outside the artifact,
unlisted engines and native libraries an artifact asks for. Each attack is refused with one
line, and the test checks that the attacker's code or write did not happen."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import edgecsp
from edgecsp.artifact import open_artifact
from edgecsp.errors import EdgeCSPError

PACKAGE = Path(edgecsp.__file__).resolve().parent


# -- no pickle on any load path ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``: proof of code execution."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _planted_files(tmp_path: Path, marker: Path) -> list[Path]:
    import torch

    raw = tmp_path / "model.safetensors"
    raw.write_bytes(pickle.dumps(_Payload(marker)))
    pt = tmp_path / "model.pt"
    torch.save({"state_dict": _Payload(marker)}, pt)  # a zip checkpoint whose data.pkl runs the payload
    pkl = tmp_path / "weights.pkl"
    pkl.write_bytes(pickle.dumps({"w": _Payload(marker)}))
    return [raw, pt, pkl]


def test_a_malicious_pickle_where_a_checkpoint_is_expected_is_refused_without_running(tmp_path):
    from edgecsp.models.checkpoint import resolve_model

    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker)))  # control: the payload does run when unpickled
    assert marker.exists()
    marker.unlink()
    for planted in _planted_files(tmp_path, marker):
        # refused by name (.pt/.pkl) or as a file that is not safetensors; never unpickled
        with pytest.raises(EdgeCSPError, match="not a readable safetensors|is not a model edgecsp reads"):
            resolve_model(str(planted))
        assert not marker.exists(), f"{planted.name} ran code"


def test_the_cli_refuses_a_planted_pickle_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    pt = _planted_files(tmp_path, marker)[1]
    for verb in (["edgecsp.compile", "--target", "onnxruntime", "--model", str(pt)],
                 ["edgecsp.evaluate", "--model", str(pt)],
                 ["edgecsp.train", "--darknet-cfg", str(pt), "--darknet-weights", str(pt), "--data", str(tmp_path)]):
        r = subprocess.run([sys.executable, "-m", *verb], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 2, (verb, r.stderr[-1500:])
        assert "Traceback" not in r.stderr and r.stderr.strip().startswith("error: "), r.stderr[-1500:]
        assert not marker.exists()


# Calls that deserialize code-carrying formats. None may appear in edgecsp: weights are
# safetensors, caches and manifests JSON, Darknet weights raw floats.
_UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("torch", "load"), ("marshal", "loads"),
                 ("yaml", "load"), ("dill", "load"), ("joblib", "load"), ("shelve", "open"),
                 ("cloudpickle", "load"), ("np", "load"), ("numpy", "load")}


def test_no_load_path_can_deserialize_code():
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{path.name}: import {n}" for n in names if n and n.split(".")[0] in
                          ("pickle", "dill", "cloudpickle", "shelve", "marshal", "joblib")]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value,
                                                                                                ast.Name):
                if (node.func.value.id, node.func.attr) in _UNSAFE_CALLS:
                    found.append(f"{path.name}:{node.lineno}: {node.func.value.id}.{node.func.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
                found.append(f"{path.name}:{node.lineno}: {node.func.id}()")
    assert found == []


def test_a_damaged_engine_cache_entry_is_rebuilt_not_trusted(tmp_path, monkeypatch, shapes_small):
    from edgecsp.pipeline import CompileOptions, compile_artifact

    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path / "cache"))
    opts = dict(target="onnxruntime", precision="fp32", data=shapes_small["val"], verify_images=4)
    compile_artifact(CompileOptions(**opts, out=tmp_path / "a"), progress=lambda line: None)
    (entry,) = (tmp_path / "cache" / "engines").iterdir()
    engine = next(p for p in entry.iterdir() if p.suffix == ".onnx")
    engine.write_bytes(engine.read_bytes()[:1000])  # truncated (or replaced) behind edgecsp's back
    lines: list[str] = []
    _, manifest = compile_artifact(CompileOptions(**opts, out=tmp_path / "b"), progress=lines.append)
    assert not any("reusing the cached build" in line for line in lines)
    open_artifact(tmp_path / "b")


# -- hostile archives -------------------------------------------------------------------------------------


def _tar_with(tmp_path: Path, ort_artifact: Path, add) -> Path:
    """A copy of a real artifact's .tar.gz with one hostile entry added by ``add(tar)``."""
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(ort_artifact.iterdir()):
            tar.add(f, arcname=f"art/{f.name}")
        add(tar)
    return path


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("attack, make, message", [
    ("absolute path", lambda out: _entry(str(out / "pwned-abs")), "unsafe path"),
    ("dot-dot", lambda out: _entry("art/../../../pwned-dotdot"), "unsafe path"),
    ("symlink", lambda out: _entry("art/link", tarfile.SYMTYPE, link="/etc/passwd"), "symlink"),
    ("symlink to a listed name", lambda out: _entry("art/model.onnx.extra", tarfile.SYMTYPE, link="../../x"),
     "symlink"),
    ("hard link", lambda out: _entry("art/hard", tarfile.LNKTYPE, link="/etc/passwd"), "hard link"),
    ("device file", lambda out: _entry("art/dev", tarfile.CHRTYPE), "device file"),
    ("fifo", lambda out: _entry("art/fifo", tarfile.FIFOTYPE), "fifo"),
])
def test_hostile_archive_entries_are_refused_and_nothing_is_extracted(tmp_path, monkeypatch, ort_artifact, attack,
                                                                      make, message):
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path / "cache"))
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = _tar_with(tmp_path, ort_artifact, lambda tar: tar.addfile(*make(outside)))
    with pytest.raises(EdgeCSPError, match=message):
        edgecsp.load(hostile)
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "pwned-dotdot").exists() and not Path("/pwned-dotdot").exists()
    extracted = tmp_path / "cache" / "artifacts"
    assert not extracted.exists() or list(extracted.iterdir()) == []  # not even a partial extraction


def test_the_real_tarball_loads_and_predicts(tmp_path, monkeypatch, ort_artifact):
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path / "cache"))
    image = np.full((200, 300, 3), 114, np.uint8)
    with edgecsp.load(ort_artifact.with_name(ort_artifact.name + ".tar.gz")) as predictor:
        assert isinstance(predictor(image), list)


# -- manifests that point outside, unlisted engines --------------------------------------------------------


def _copy(artifact: Path, tmp_path: Path) -> tuple[Path, dict]:
    dest = tmp_path / artifact.name
    shutil.copytree(artifact, dest)
    return dest, json.loads((dest / "manifest.json").read_text())


def _save(root: Path, manifest: dict) -> None:
    """An attacker who edits the manifest and recomputes its digest: the checks behind the digest must hold."""
    from edgecsp.artifact import write_manifest

    write_manifest(root, manifest)


def _listed(path: Path) -> dict:
    from edgecsp.artifact import sha256_file

    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def test_manifest_paths_cannot_leave_the_artifact(tmp_path, ort_artifact):
    root, manifest = _copy(ort_artifact, tmp_path / "a")
    outside = tmp_path / "outside.onnx"
    shutil.copy(root / manifest["engine"], outside)  # a real engine, correctly hashed, but outside
    for name in ("../outside.onnx", str(outside), "sub/../../outside.onnx"):
        m = dict(manifest, engine=name, files={**manifest["files"], name: _listed(outside)})
        _save(root, m)
        with pytest.raises(EdgeCSPError, match="unsafe file path"):
            edgecsp.load(root)


def test_a_listed_file_that_is_a_link_out_of_the_artifact_is_refused(tmp_path, ort_artifact):
    root, manifest = _copy(ort_artifact, tmp_path / "a")
    outside = tmp_path / "outside.onnx"
    shutil.copy(root / manifest["engine"], outside)
    (root / "linked.onnx").symlink_to(outside)
    _save(root, dict(manifest, engine="linked.onnx", files={**manifest["files"], "linked.onnx": _listed(outside)}))
    with pytest.raises(EdgeCSPError, match="not a regular file inside the artifact"):
        edgecsp.load(root)


def test_an_engine_not_listed_in_the_manifest_is_not_loaded(tmp_path, ort_artifact):
    root, manifest = _copy(ort_artifact, tmp_path / "a")
    shutil.copy(root / manifest["engine"], root / "swapped.onnx")  # present in the folder, not in the list
    _save(root, dict(manifest, engine="swapped.onnx"))
    with pytest.raises(EdgeCSPError, match="not among the files it lists"):
        edgecsp.load(root)


def test_every_file_is_verified_before_a_backend_sees_it(tmp_path, ort_artifact, ov_artifact):
    root, manifest = _copy(ort_artifact, tmp_path / "a")
    engine = root / manifest["engine"]
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 1  # one flipped bit
    engine.write_bytes(bytes(data))
    with pytest.raises(EdgeCSPError, match="fails its sha256 check"):
        edgecsp.load(root)

    # OpenVINO reads model.bin beside model.xml by itself: the .bin must be listed and verified too.
    root, manifest = _copy(ov_artifact, tmp_path / "b")
    files = {k: v for k, v in manifest["files"].items() if not k.endswith(".bin")}
    _save(root, dict(manifest, files=files))
    with pytest.raises(EdgeCSPError, match=r"does not list \(model.bin\)"):
        edgecsp.load(root)
    with pytest.raises(EdgeCSPError, match="model.bin is not listed"):  # the backend's own check, too
        from edgecsp.backends import get_backend

        get_backend("openvino").open_runner(root / "model.xml", dict(manifest, files=files))


def test_unlisted_files_beside_the_engine_are_refused(tmp_path, ort_artifact):
    """ONNX Runtime reads external-data files beside a model by itself: only listed files may be there."""
    root, manifest = _copy(ort_artifact, tmp_path / "a")
    (root / "weights.data").write_bytes(b"\0" * 64)
    with pytest.raises(EdgeCSPError, match=r"does not list \(weights.data\)"):
        edgecsp.load(root)


def test_an_oversized_archive_header_is_refused_before_it_is_read(tmp_path, monkeypatch, ort_artifact):
    """A pax header declaring 64 MB (a few KB compressed) would be read whole into memory by tarfile."""
    import gzip

    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path / "cache"))
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 64 << 20
    raw = header.tobuf(format=tarfile.USTAR_FORMAT) + b"\0" * (64 << 20)
    bomb = tmp_path / "bomb.tar.gz"
    bomb.write_bytes(gzip.compress(raw, compresslevel=9))
    assert bomb.stat().st_size < 200_000
    with pytest.raises(EdgeCSPError, match="extended header of 67108864 bytes"):
        edgecsp.load(bomb)


def test_compile_never_replaces_a_folder_that_is_not_an_artifact(tmp_path, shapes_small):
    from edgecsp.pipeline import CompileOptions, compile_artifact

    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(EdgeCSPError, match="exists and is not an edgecsp artifact"):
        compile_artifact(CompileOptions(target="onnxruntime", precision="fp32", data=shapes_small["val"],
                                        out=precious, verify_images=4), progress=lambda line: None)
    assert (precious / "thesis.tex").read_text() == "years of work"


def _load_many(tarball: str, cache: str, rounds: int) -> None:
    os.environ["EDGECSP_CACHE_DIR"] = cache
    from edgecsp.artifact import open_artifact as open_

    for _ in range(rounds):
        open_(tarball)


def test_parallel_first_loads_of_one_tarball_never_disturb_each_other(tmp_path, ort_artifact):
    import multiprocessing

    tarball = str(ort_artifact.with_name(ort_artifact.name + ".tar.gz"))
    ctx = multiprocessing.get_context("spawn")
    for round_ in range(3):  # a fresh cache each round: every process extracts at once
        cache = str(tmp_path / f"cache{round_}")
        procs = [ctx.Process(target=_load_many, args=(tarball, cache, 3)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]


# -- native libraries: only from locations the user names ------------------------------------------------

_LIBRARY_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void on_load(void) {
    const char *marker = getenv("EDGECSP_TEST_MARKER");
    if (marker) { FILE *f = fopen(marker, "w"); if (f) fclose(f); }
}
"""


@pytest.fixture(scope="module")
def marker_library(tmp_path_factory) -> Path:
    """A shared library whose load-time constructor creates $EDGECSP_TEST_MARKER: proof it was loaded."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a C compiler to build the test library (install gcc)")
    root = tmp_path_factory.mktemp("lib")
    (root / "marker.c").write_text(_LIBRARY_C)
    built = subprocess.run([cc, "-shared", "-fPIC", "-o", str(root / "libmarker.so"), str(root / "marker.c")],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"the C compiler cannot build the test library: {built.stderr.strip()[:200]}")
    return root / "libmarker.so"


@pytest.mark.parametrize("artifact", ["ort_artifact", "ov_artifact"])
def test_libraries_named_in_an_artifact_are_never_loaded_only_user_named_ones(tmp_path, monkeypatch, request,
                                                                              artifact, marker_library):
    marker = tmp_path / "loaded"
    monkeypatch.setenv("EDGECSP_TEST_MARKER", str(marker))
    marker_library = Path(shutil.copy(marker_library, tmp_path / "libmarker.so"))  # a fresh copy: dlopen runs
    root, manifest = _copy(request.getfixturevalue(artifact), tmp_path / "a")
    asks = [str(marker_library)]
    manifest["backend"]["info"].update(libraries=asks, extensions=asks, plugins=asks, custom_ops=asks)
    _save(root, dict(manifest, libraries=asks, extensions=asks, plugins=asks))
    image = np.full((120, 160, 3), 114, np.uint8)
    with edgecsp.load(root) as predictor:
        predictor(image)
    assert not marker.exists(), "a library named by the artifact was loaded"

    with pytest.raises(EdgeCSPError, match="cannot load"):  # loaded (the marker proves it), then refused:
        edgecsp.load(root, libraries=[marker_library])  # it is not a real extension / custom-op library
    assert marker.exists()
    with pytest.raises(EdgeCSPError, match="does not exist"):
        edgecsp.load(root, libraries=[tmp_path / "missing.so"])
