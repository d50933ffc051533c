"""The compile pipeline end to end, artifacts, edgecsp.load, and its bad-input behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgecsp
from edgecsp.errors import EdgeCSPError
from edgecsp.pipeline import CompileOptions, compile_artifact

QUIET = lambda line: None  # noqa: E731


def _compile(tmp_path, shapes_small, **kw) -> tuple[Path, dict]:
    opts = dict(target="intel-cpu", precision="fp32", data=shapes_small["val"], out=tmp_path / "art", verify_images=12)
    opts.update(kw)
    return compile_artifact(CompileOptions(**opts), progress=QUIET)


@pytest.fixture(scope="module")
def ov_fp32(tmp_path_factory, shapes_small):
    return _compile(tmp_path_factory.mktemp("c"), shapes_small)


def test_artifact_has_engine_manifest_checksums_and_accuracy(ov_fp32):
    out, manifest = ov_fp32
    assert (out / "model.xml").is_file() and (out / "model.bin").is_file()
    assert out.with_name(out.name + ".tar.gz").is_file()
    assert set(manifest["files"]) == {"model.xml", "model.bin"}
    assert manifest["backend"]["name"] == "openvino" and manifest["precision"] == "fp32"
    assert manifest["model"]["class_names"][0] == "circle"
    acc = manifest["accuracy"]
    assert acc["passed"] and abs(acc["ap50_drop_points"]) < 0.1  # fp32 engine equals PyTorch
    assert not list(out.parent.glob(".*partial*")), "staging directory left behind"


def test_load_directory_and_tarball_give_the_same_detections(ov_fp32, shapes_small):
    out, _ = ov_fp32
    image = sorted((shapes_small["val"] / "images").iterdir())[0]
    with edgecsp.load(out) as a, edgecsp.load(out.with_name(out.name + ".tar.gz")) as b:
        da, db = a(image)[0], b(image)[0]
        assert len(da) >= 1
        np.testing.assert_allclose(da.boxes, db.boxes)
        assert a.class_names == b.class_names


def test_tampered_or_truncated_engine_is_refused(ov_fp32, tmp_path):
    import shutil

    out, _ = ov_fp32
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "model.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    with pytest.raises(EdgeCSPError, match="sha256"):
        edgecsp.load(copy)
    (copy / "model.bin").write_bytes(b"")
    with pytest.raises(EdgeCSPError, match="tampered or truncated"):
        edgecsp.load(copy)


def test_accuracy_gate_fails_the_compile_and_writes_nothing(tmp_path, shapes_small, monkeypatch):
    import dataclasses

    import edgecsp.targets

    # A tolerance no build can meet (profile files refuse negative ones, so it is set here).
    real = edgecsp.targets.load_target
    monkeypatch.setattr(edgecsp.targets, "load_target",
                        lambda name: dataclasses.replace(real(name), max_ap50_drop=-5.0))
    profile = "onnxruntime"
    with pytest.raises(EdgeCSPError, match="loses .* AP50 points"):
        _compile(tmp_path, shapes_small, target=str(profile))
    assert not (tmp_path / "art").exists() and not list(tmp_path.glob(".art*"))
    out, manifest = _compile(tmp_path, shapes_small, target=str(profile), allow_accuracy_drop=True)
    assert manifest["accuracy"]["passed"] is False and (out / "model.onnx").is_file()


def test_export_failure_leaves_no_artifact(tmp_path, tmp_path_factory, shapes_small, monkeypatch):
    import edgecsp.onnx_writer as onnx_writer

    def broken(*a, **k):
        raise EdgeCSPError("export failed: planted")

    monkeypatch.setattr(onnx_writer, "export_onnx", broken)
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path_factory.mktemp("cold-cache")))  # no cached export to reuse
    with pytest.raises(EdgeCSPError, match="planted"):
        _compile(tmp_path, shapes_small)
    assert list(tmp_path.iterdir()) == []


def test_int8_second_compile_reuses_the_cached_calibration(tmp_path, shapes_small):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[calibration]\nsource = "coco"\npath = "{shapes_small["train"]}"\nnum_images = 8\n')
    lines: list[str] = []
    opts = CompileOptions(target="onnxruntime", precision="int8", calibration=str(recipe), data=shapes_small["val"],
                          out=tmp_path / "a", verify_images=12, allow_accuracy_drop=True)
    _, first = compile_artifact(opts, progress=lines.append)
    assert not any("reusing the cached build" in line for line in lines)
    opts.out = tmp_path / "b"
    lines.clear()
    _, second = compile_artifact(opts, progress=lines.append)
    assert any("reusing the cached build" in line for line in lines)
    assert first["files"]["model.onnx"]["sha256"] == second["files"]["model.onnx"]["sha256"]
    assert second["calibration"]["images"] == 8 and second["calibration"]["data_hash"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgecsp.compile", *args], capture_output=True, text=True)


def test_compile_cli_steps_on_stderr_and_the_artifact_on_stdout(tmp_path, shapes_small, capsys):
    import json

    from edgecsp import cli
    from edgecsp.compile import main

    common = ["--target", "onnxruntime", "--precision", "fp32", "--data", str(shapes_small["val"]), "--verify-images", "4"]
    assert cli.run(main, [*common, "--out", str(tmp_path / "a")]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "a") and "[1/4] export" in err and "[4/4] verify" in err
    assert cli.run(main, [*common, "--out", str(tmp_path / "b"), "--json"]) == 0  # the build comes from the cache
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads((tmp_path / "b" / "manifest.json").read_text()) and "[3/4]" in err


@pytest.mark.parametrize("args, message", [
    (["--target", "no-such-device"], "unknown target"),
    (["--target", "onnxruntime", "--precision", "fp16"], "does not support precision"),
    (["--target", "intel-cpu", "--model", "missing.safetensors"], "does not exist"),
])
def test_compile_cli_bad_input_is_one_line_and_no_artifact(tmp_path, args, message):
    r = _cli(*args, "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_empty_calibration_folder_is_a_clear_error(tmp_path, shapes_small):
    empty = tmp_path / "empty"
    empty.mkdir()
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[calibration]\nsource = "folder"\npath = "{empty}"\n')
    r = _cli("--target", "onnxruntime", "--precision", "int8", "--calibration", str(recipe),
             "--data", str(shapes_small["val"]), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "holds no images" in r.stderr and not (tmp_path / "out").exists()


def test_a_warm_compile_reuses_every_step_and_builds_the_same_artifact(tmp_path, tmp_path_factory, shapes_small,
                                                                       monkeypatch):
    """Issue 15 item 6: a second identical compile does only what changed (here: nothing), says
    which steps it reused, and publishes the same engine and manifest (apart from when and how fast)."""
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path_factory.mktemp("warm-cache")))  # the first one is cold
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[calibration]\nsource = "coco"\npath = "{shapes_small["train"]}"\nnum_images = 8\n')
    opts = CompileOptions(target="onnxruntime", precision="int8", calibration=str(recipe), data=shapes_small["val"],
                          out=tmp_path / "a", verify_images=4, allow_accuracy_drop=True)
    cold: list[str] = []
    _, first = compile_artifact(opts, progress=cold.append)
    assert first["reused"] == {} and not any("reused" in line for line in cold), cold
    opts.out = tmp_path / "b"
    warm: list[str] = []
    _, second = compile_artifact(opts, progress=warm.append)
    assert set(second["reused"]) == {"export", "calibration", "build", "verify"}, warm
    for step in ("[1/4] export: reused", "[2/4] calibration data: reused", "[3/4] onnxruntime int8: reused",
                 "[4/4] verify: reused"):
        assert sum(line.startswith(step) for line in warm) == 1, (step, warm)

    def same(m: dict) -> dict:
        return {k: v for k, v in m.items() if k not in ("created", "timings", "reused")}

    assert same(first) == same(second)
    assert first["files"][first["engine"]] == second["files"][second["engine"]]
