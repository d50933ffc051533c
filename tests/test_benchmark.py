"""python -m edgecsp.benchmark end to end on a real (tiny) OpenVINO artifact: report, baselines, refusals."""

from __future__ import annotations

import json

import pytest

from edgecsp.bench import report

PNG = b"\x89PNG\r\n\x1a\n"




def test_benchmark_cli_end_to_end_with_both_baselines(tiny_artifact, tmp_path, capsys):
    from edgecsp import cli
    from edgecsp.benchmark import main

    out = tmp_path / "report"
    code = cli.run(main, ["--artifact", str(tiny_artifact["artifact"]), "--scenario", "both", "--duration", "0.2",
                          "--warmup", "0.05", "--min-queries", "3", "--compare", "torch,onnxruntime-fp32",
                          "--data", str(tiny_artifact["val"]), "--accuracy", "--eval-images", "6",
                          "--out", str(out), "--json", str(tmp_path / "copy.json"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rep = json.loads((out / "benchmark.json").read_text())
    assert report.validate(rep) == []
    assert rep == json.loads((tmp_path / "copy.json").read_text())
    names = [(r["name"], r["scenario"]) for r in rep["results"]]
    assert names == [("tiny-intel-cpu-fp32", "latency"), ("tiny-intel-cpu-fp32", "throughput"),
                     ("pytorch-eager-fp32", "latency"), ("pytorch-eager-fp32", "throughput"),
                     ("onnxruntime-fp32", "latency"), ("onnxruntime-fp32", "throughput")]
    art = rep["results"][0]
    assert art["queries"] >= 3 and art["fps"] > 0 and art["first_inference_ms"] > 0 and art["load_s"] > 0
    assert rep["results"][1]["mode"] == "infer-requests"  # OpenVINO's throughput scenario: requests in flight
    for r in (art, rep["results"][1], rep["results"][4]):  # the engine's own memory: OpenVINO, ONNX Runtime
        assert r["memory"]["backend_mb"] > 0 and r["memory"]["backend_reason"] is None, r["memory"]
    assert rep["results"][2]["memory"]["backend_mb"] is None and rep["results"][2]["memory"]["backend_reason"]
    assert set(art["ratios"]) == {"pytorch-eager-fp32", "onnxruntime-fp32"}
    assert art["ratios"]["onnxruntime-fp32"]["fps"] == pytest.approx(art["fps"] / rep["results"][4]["fps"], rel=1e-3)
    bw = art["bandwidth"]
    # weights (fp32 IR) + CIO x 4 bytes, from the graph
    assert bw["model_traffic_mb_per_frame"] == pytest.approx(bw["weights_mb"] + bw["activations_mb_per_frame"], abs=1e-3)
    assert bw["activation_bytes"] == 4 and bw["achieved_gbs"] > 0
    assert (bw["measured_gbs"] is None) == bool(bw["measured_reason"])
    assert rep["settings"]["duration_s"] == 0.2 and rep["settings"]["compare"] == ["torch", "onnxruntime-fp32"]
    assert rep["machine"]["key"] and rep["platform_peak"]["peak_gbs"] > 0 and rep["platform_peak"]["cached"]
    assert rep["accuracy"]["images"] == 6 and rep["accuracy"]["passed"] in (True, False)
    assert rep["accuracy"]["tolerance_points"] == 1.0  # the intel-cpu profile's
    csv_lines = (out / "benchmark.csv").read_text().splitlines()
    assert len(csv_lines) == 7 and csv_lines[0].startswith("name,kind,scenario")
    for png in ("latency.png", "throughput.png", "roofline.png"):
        assert (out / png).read_bytes()[:8] == PNG
    assert "tiny-intel-cpu-fp32" in captured.out and "ratios (this / baseline)" in captured.out
    assert "eng MB" in captured.out
    # "--json FILE" is the spelling before --json meant the same in every command: it still writes FILE
    assert "warning: --json FILE is now --json-out FILE" in captured.err


def test_benchmark_cli_json_is_the_report_on_stdout(tiny_artifact, tmp_path, capsys):
    from edgecsp import cli
    from edgecsp.benchmark import main

    out = tmp_path / "report"
    code = cli.run(main, ["--artifact", str(tiny_artifact["artifact"]), "--duration", "0.05", "--warmup", "0",
                          "--min-queries", "2", "--data", str(tiny_artifact["val"]), "--no-plots", "--out", str(out),
                          "--json", "--json-out", str(tmp_path / "copy.json")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rep = json.loads(captured.out)  # stdout holds the report and nothing else
    assert rep == json.loads((out / "benchmark.json").read_text()) == json.loads((tmp_path / "copy.json").read_text())
    assert rep["results"][0]["queries"] >= 2 and "report: " in captured.err


def test_artifact_whose_checksums_fail_is_refused(tiny_artifact, tmp_path, capsys):
    import shutil

    from edgecsp import cli
    from edgecsp.benchmark import main

    bad = tmp_path / "tampered"
    shutil.copytree(tiny_artifact["artifact"], bad)
    with open(bad / "model.bin", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    code = cli.run(main, ["--artifact", str(bad), "--duration", "0.01", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "model.bin fails its sha256 check" in err[0] and "rebuild" in err[0]
    assert not (tmp_path / "r").exists()


def test_bad_benchmark_arguments(tiny_artifact, tmp_path, capsys):
    from edgecsp import cli
    from edgecsp.benchmark import main

    art = str(tiny_artifact["artifact"])
    for args, match in [(["--compare", "tensorflow"], "unknown baseline 'tensorflow'"),
                        (["--batch", "4"], "fixed batch of 1")]:
        assert cli.run(main, ["--artifact", art, "--out", str(tmp_path / "r"), *args]) == 2
        assert match in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # refused by the option's type, in one line
        main(["--artifact", art, "--min-queries", "0"])
    assert exit_.value.code == 2 and "--min-queries: expected an integer from 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--artifact", art, "--target", "intel-cpu"])  # mutually exclusive
