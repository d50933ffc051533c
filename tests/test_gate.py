"""The accuracy gate cannot be skipped silently: zero images is an error, an artifact kept past
its gate or built without it says so in accuracy.status, edgecsp.load warns about it in one
line, the nightly flags it, and a reference that detects nothing is no pass (issue 13, issue 11
item 7)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import edgecsp
from edgecsp.errors import EdgeCSPError
from edgecsp.gate import status_of
from edgecsp.pipeline import CompileOptions, compile_artifact


def QUIET(line: str) -> None:
    pass


def _compile(tmp_path: Path, data: Path, **kw) -> tuple[Path, dict]:
    opts = {"target": "onnxruntime", "precision": "fp32", "data": data, "out": tmp_path / "art", "verify_images": 4}
    opts.update(kw)
    return compile_artifact(CompileOptions(**opts), progress=QUIET)


@pytest.mark.parametrize("images", [0, -3])
def test_zero_or_negative_verify_images_is_an_error_not_a_pass(tmp_path, shapes_small, images):
    with pytest.raises(EdgeCSPError, match="--verify-images must be a positive number"):
        _compile(tmp_path, shapes_small["val"], verify_images=images)
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("images", ["0", "-3"])
def test_compile_cli_refuses_zero_verify_images_in_one_line(tmp_path, images):
    r = subprocess.run([sys.executable, "-m", "edgecsp.compile", "--target", "onnxruntime", "--verify-images", images,
                        "--out", str(tmp_path / "out")], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "--verify-images" in r.stderr and not (tmp_path / "out").exists()


def test_benchmark_accuracy_with_zero_eval_images_is_an_error(ort_artifact):
    from edgecsp.bench.run import BenchmarkOptions, run_benchmark

    with pytest.raises(EdgeCSPError, match="--eval-images must be a positive number"):
        run_benchmark(BenchmarkOptions(artifact=ort_artifact, accuracy=True, eval_images=0), progress=QUIET)


def test_a_verified_artifact_says_passed_and_loads_without_a_warning(ort_artifact, caplog):
    manifest = json.loads((ort_artifact / "manifest.json").read_text())
    assert manifest["accuracy"]["status"] == "passed" and manifest["accuracy"]["images"] == 4
    with caplog.at_level(logging.WARNING, logger="edgecsp"):
        edgecsp.load(ort_artifact).close()
    assert not caplog.records


def test_no_verify_is_said_in_the_manifest_and_load_warns_in_one_line(tmp_path, shapes_small):
    out, manifest = _compile(tmp_path, shapes_small["val"], verify=False)
    assert manifest["accuracy"]["status"] == "unverified" and manifest["accuracy"]["passed"] is False
    code = f"import edgecsp; edgecsp.load({str(out)!r}).close()"
    r = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "accuracy status unverified" in lines[0], r.stderr


def _relabelled(tmp_path: Path, val: Path) -> Path:
    """The validation set with every box given another class: the right model on the wrong class
    mapping, so the FP32 reference itself scores (almost) nothing."""
    data = json.loads((val / "annotations.json").read_text())
    ids = [c["id"] for c in data["categories"]]
    for a in data["annotations"]:
        a["category_id"] = ids[(ids.index(a["category_id"]) + 1) % len(ids)]
    root = tmp_path / "relabelled"
    root.mkdir()
    (root / "annotations.json").write_text(json.dumps(data))
    (root / "images").symlink_to(val / "images")
    return root


def test_a_reference_that_detects_nothing_fails_the_compile_unless_allowed(tmp_path, shapes_small, caplog):
    data = _relabelled(tmp_path, shapes_small["val"])
    with pytest.raises(EdgeCSPError, match="the FP32 reference scores AP50 .* detects nothing on this data"):
        _compile(tmp_path, data, verify_images=8)
    assert not (tmp_path / "art").exists()
    out, manifest = _compile(tmp_path, data, verify_images=8, allow_accuracy_drop=True)
    acc = manifest["accuracy"]
    assert acc["status"] == "vacuous-reference" and acc["reference"]["AP50"] < 0.05 and acc["passed"] is False
    with caplog.at_level(logging.WARNING, logger="edgecsp"):
        edgecsp.load(out).close()
    assert [r.getMessage() for r in caplog.records if "vacuous-reference" in r.getMessage()]


def test_manifests_written_before_the_status_keep_their_meaning():
    assert status_of({"accuracy": {"passed": True, "images": 12}}) == "passed"
    assert status_of({"accuracy": {"passed": False, "images": 12}}) == "accepted-drop"
    assert status_of({"accuracy": {"passed": True, "images": None}}) == "unverified"  # the old --verify-images 0
    assert status_of({}) == "unverified"


def test_the_nightly_flags_an_artifact_that_did_not_pass_its_gate():
    from edgecsp.bench.nightly import accuracy_gate, status_gate

    assert status_gate("job", "passed") is None
    for status in ("unverified", "accepted-drop", "vacuous-reference"):
        finding = status_gate("job", status)
        assert finding is not None and finding.regressed and status in finding.describe()
    vacuous = accuracy_gate("job", {"ap50_drop_points": 0.0, "passed": False, "status": "vacuous-reference",
                                    "AP50": 0.0, "reference": {"AP50": 0.0}, "tolerance_points": 1.0})
    assert vacuous is not None and vacuous.regressed
