"""benchmarks/paper_claims.py's core on one small twin at a tiny input: the table's structure and
its BFLOPs ratio against edgecsp's complexity figures (no timing assertions: speed is the
benchmark's to print)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from edgecsp.summary import summarize

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paper_claims.py"


@pytest.fixture(scope="module")
def claims():
    spec = importlib.util.spec_from_file_location("paper_claims", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["paper_claims"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_twin_row_structure_and_bflops_ratio(claims, tmp_path):
    pair = claims.Pair("classifier", "mobilenetv2", "cspmobilenetv2")
    rows = claims.measure_pair(pair, [("onnxruntime", "fp32")], size=32, warmup=1, iterations=2, work=tmp_path,
                               progress=lambda line: None)
    assert len(rows) == 1
    row = rows[0]
    assert "skipped" not in row, row.get("skipped")
    assert (row["target"], row["precision"], row["input"], row["kind"]) == ("onnxruntime", "fp32", 32, "classifier")
    base, csp = summarize("mobilenetv2", input_size=32)["bflops"], summarize("cspmobilenetv2", input_size=32)["bflops"]
    assert row["bflops_baseline"] == pytest.approx(base, abs=1e-4)
    assert row["bflops_csp"] == pytest.approx(csp, abs=1e-4)
    assert row["bflops_ratio"] == pytest.approx(csp / base, abs=1e-4)
    assert row["bflops_ratio"] < 1  # CSP cuts MobileNet-v2's computation (the paper: -11%)
    assert row["p50_ms_baseline"] > 0 and row["p50_ms_csp"] > 0
    assert row["latency_ratio"] == pytest.approx(row["p50_ms_csp"] / row["p50_ms_baseline"], rel=1e-3)

    table = claims.markdown(rows).splitlines()
    assert table[0].startswith("| pair | target | precision | input |") and "BFLOPs ratio" in table[0]
    assert "latency ratio" in table[0]
    assert len(table) == 3 and table[2].count("|") == table[0].count("|")
    assert table[2].startswith("| mobilenetv2 vs cspmobilenetv2 | onnxruntime | fp32 | 32 |")


def test_skipped_target_keeps_its_row_and_reason(claims):
    row = {"pair": "a vs b", "target": "jetson", "precision": "int8", "input": 64, "bflops_baseline": 1.0,
           "bflops_csp": 0.8, "bflops_ratio": 0.8, "skipped": "TensorRT is not installed"}
    line = claims.markdown([row]).splitlines()[2]
    assert "skipped: TensorRT is not installed" in line and "0.800" in line


def test_pair_and_target_selection(claims):
    assert [p.csp for p in claims.select_pairs("classifiers")] == [p.csp for p in claims.CLASSIFIER_PAIRS]
    assert [p.csp for p in claims.select_pairs("csppeleenet-efm")] == ["csppeleenet-efm"]
    with pytest.raises(claims_error()):
        claims.select_pairs("no-such-model")
    assert claims.parse_targets("onnxruntime:INT8") == [("onnxruntime", "int8")]
    assert ("jetson", "fp16") in claims.parse_targets("jetson")  # a target alone: its reduced precisions


def claims_error():
    from edgecsp.errors import EdgeCSPError

    return EdgeCSPError
