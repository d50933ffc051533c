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


# -- one result type for every path (issue 14 item 2) ------------------------------------------


REF = {"AP": 0.80, "AP50": 0.95, "AP75": 0.85}


@pytest.mark.parametrize("layout, ref_key, cand_key", [("compile", "reference", "artifact"),
                                                        ("device", "reference_fp32_onnx", "engine")])
def test_a_gate_result_round_trips_through_each_paths_json(layout, ref_key, cand_key):
    from edgecsp.gate import GateResult

    gate = GateResult.measure(REF, {"AP": 0.78, "AP50": 0.93, "AP75": 0.8, "images": 9}, 1.0, "val.json", 9,
                              layout=layout, evaluator="numpy")
    assert gate.status == "accepted-drop" and gate.ap50_drop_points == 2.0 and gate.ap_drop_points == 2.0
    data = gate.to_manifest()
    assert data[ref_key] == REF and data[cand_key] == {"AP": 0.78, "AP50": 0.93, "AP75": 0.8}
    assert data["passed"] is False and data["status"] == "accepted-drop" and data["evaluator"] == "numpy"
    assert GateResult.from_manifest(json.loads(json.dumps(data))) == gate
    assert gate.with_tolerance(2.5).status == "passed"  # the same measurement, another profile


def test_every_verdict_and_its_refusal():
    from edgecsp.gate import GateResult

    assert GateResult.measure(REF, REF, 1.0, "d", 4).passed
    vacuous = GateResult.measure({"AP": 0.0, "AP50": 0.01, "AP75": 0.0}, REF, 1.0, "d", 4)
    assert vacuous.status == "vacuous-reference"
    with pytest.raises(EdgeCSPError, match="detects nothing"):
        vacuous.enforce(False, "d", "unused")
    dropped = GateResult.measure(REF, {**REF, "AP50": 0.5}, 1.0, "d", 4)
    with pytest.raises(EdgeCSPError, match="^loses 45"):
        dropped.enforce(False, "d", f"loses {dropped.ap50_drop_points:.0f}")
    dropped.enforce(True, "d", "allowed")  # --allow-accuracy-drop keeps it
    unverified = GateResult.unverified(1.0)
    unverified.enforce(False, "d", "never raised")
    assert unverified.to_manifest() == {"status": "unverified", "dataset": None, "images": None, "passed": False,
                                        "tolerance_points": 1.0}


def test_the_benchmark_report_keeps_its_layout():
    from edgecsp.gate import GateResult

    report = GateResult.measure(REF, {"AP": 0.8, "AP50": 0.95, "AP75": 0.85}, 1.0, "val.json", 6).to_report()
    assert report["AP50"] == 0.95 and report["reference"] == REF and report["ap_drop_points"] == 0.0
    assert report["passed"] is True and report["tolerance_points"] == 1.0 and report["images"] == 6


def test_old_manifests_read_as_gate_results():
    from edgecsp.gate import GateResult

    old = GateResult.from_manifest({"passed": True, "images": 12, "reference": REF, "artifact": REF})
    assert old.status == "passed" and old.reference == REF and old.layout == "compile"
    assert GateResult.from_manifest(None).status == "unverified"
