"""Benchmark harness, memory and bandwidth figures, reports, and the benchmark CLI end to end.

Timings are never asserted (the machine is shared); what is checked is the method: warm-up,
minimum duration and query count, per-query latencies, the counting, the figures' arithmetic,
the report schema, and the errors.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from edgecsp.backends.base import Capabilities, Runner
from edgecsp.bench import bandwidth, counters, memory, report, traffic
from edgecsp.bench.harness import Settings, measure
from edgecsp.errors import EdgeCSPError

PNG = b"\x89PNG\r\n\x1a\n"


class FakeRunner(Runner):
    """Counts calls; ``run`` does a little numpy work (releases the GIL) and returns (N, 3, 11)."""

    input_shape = (1, 3, 8, 8)

    def __init__(self, thread_safe: bool = False, streams: int = 1, work: int = 20_000):
        self.calls = 0
        self.thread_safe, self.streams = thread_safe, streams
        self._lock = threading.Lock()
        self._a = np.random.default_rng(0).random(work)
        self.in_flight = self.max_in_flight = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        np.sort(self._a)
        time.sleep(0.0005)  # lets other threads in, so streams really overlap
        with self._lock:
            self.in_flight -= 1
        return np.zeros((len(batch), 3, 11), np.float32)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(thread_safe=self.thread_safe, parallel=self.streams)

    def describe(self) -> dict:
        return {"backend": "fake"}


INPUTS = [np.zeros((1, 3, 8, 8), np.float32), np.ones((1, 3, 8, 8), np.float32)]


# -- harness ------------------------------------------------------------------------------------------


def test_latency_runs_at_least_min_queries_even_past_the_duration():
    r = FakeRunner()
    m = measure(r, INPUTS, Settings("latency", duration_s=0.0, warmup_s=0.0, min_queries=57))
    assert m.queries == 57 and m.frames == 57 and m.streams == 1 and m.mode == "sync"
    assert r.calls == 57  # no warm-up asked, no extra calls
    assert len(m.latencies_ns) == 57 and (m.latencies_ns > 0).all()


def test_latency_runs_at_least_the_duration_after_a_warmup():
    r = FakeRunner()
    m = measure(r, INPUTS, Settings("latency", duration_s=0.3, warmup_s=0.1, min_queries=1))
    assert m.wall_s >= 0.3
    assert m.warmup_queries > 0 and r.calls == m.warmup_queries + m.queries
    lat = m.latency_ms()
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # FPS is frames over the measured wall time, which is at least the sum of query latencies
    assert m.fps == pytest.approx(m.queries / m.wall_s)
    assert m.wall_s >= m.latencies_ns.sum() / 1e9


def test_hooks_bracket_only_the_measured_phase():
    r = FakeRunner()
    seen = {}
    measure(r, INPUTS, Settings("latency", duration_s=0.0, warmup_s=0.05, min_queries=5),
            on_start=lambda: seen.setdefault("start", r.calls), on_end=lambda: seen.setdefault("end", r.calls))
    assert seen["start"] > 0 and seen["end"] - seen["start"] == 5


def test_throughput_with_parallel_streams_counts_every_frame():
    r = FakeRunner(thread_safe=True, streams=3)
    batch = [np.zeros((4, 3, 8, 8), np.float32)]
    m = measure(r, batch, Settings("throughput", duration_s=0.2, warmup_s=0.05, min_queries=30))
    assert m.mode == "threads" and m.streams == 3 and m.scenario == "throughput"
    assert m.queries >= 30 and m.frames == 4 * m.queries
    assert r.max_in_flight > 1  # the streams really ran concurrently
    assert r.calls >= m.queries + m.warmup_queries


def test_throughput_refuses_threads_on_a_runner_that_is_not_thread_safe():
    with pytest.raises(EdgeCSPError, match="not safe to call from 2 threads"):
        measure(FakeRunner(), INPUTS, Settings("throughput", duration_s=0.1, warmup_s=0, min_queries=1, streams=2))
    m = measure(FakeRunner(), INPUTS, Settings("throughput", duration_s=0.0, warmup_s=0, min_queries=3))
    assert m.mode == "sync" and m.scenario == "throughput"  # one stream: the backend parallelises inside


@pytest.mark.parametrize("kwargs, match", [({"scenario": "offline"}, "unknown scenario"),
                                           ({"min_queries": 0}, "min_queries"), ({"duration_s": -1}, ">= 0")])
def test_bad_settings(kwargs, match):
    with pytest.raises(EdgeCSPError, match=match):
        Settings(**kwargs)


def test_openvino_throughput_keeps_its_infer_requests_busy():
    ov = pytest.importorskip("openvino")
    import openvino.opset13 as ops

    x = ops.parameter([1, 3, 16, 16], np.float32, name="images")
    w = ops.constant(np.random.default_rng(0).random((8, 3, 3, 3)).astype(np.float32))
    model = ov.Model([ops.result(ops.convolution(x, w, [1, 1], [1, 1], [1, 1], [1, 1]))], [x])

    from edgecsp.backends.openvino_backend import OpenVINORunner

    class Requests(OpenVINORunner):
        def run(self, batch):
            raise AssertionError("the throughput scenario drives infer requests, not run()")

    core = ov.Core()
    runner = Requests(core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_NUM_THREADS": 1}),
                      core, "CPU", "throughput")
    data = [np.random.default_rng(1).random((1, 3, 16, 16)).astype(np.float32)]
    m = measure(runner, data, Settings("throughput", duration_s=0.1, warmup_s=0.05, min_queries=40, streams=3))
    assert m.mode == "infer-requests" and m.streams == 3
    assert m.queries >= 40 and (m.latencies_ns > 0).all() and m.wall_s >= 0.1
    runner.close()  # the compiled model released after its requests: must not hang


# -- memory ---------------------------------------------------------------------------------------------


def test_peak_rss_sees_an_allocation_and_is_reset_per_window():
    with memory.PeakRSS() as big:
        a = np.ones(150 * 1024 * 1024 // 8)  # 150 MB, touched
        del a
    assert big.peak - big.before >= 120 * memory.MB, big.as_dict()
    with memory.PeakRSS() as small:
        np.ones(1000).sum()
    if "reset" in small.method:  # the kernel's peak mark was reset: the big window does not leak in
        assert small.peak < big.peak - 100 * memory.MB, (small.as_dict(), big.as_dict())


def test_artifact_size_and_backend_memory(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    assert memory.artifact_bytes(tmp_path) == 1000
    assert memory.artifact_bytes(tmp_path, {"files": {"a.bin": {"bytes": 1000}, "b": {"bytes": 24}}}) == 1024

    class Reports:
        def memory_bytes(self):
            return 3 * memory.MB

    assert memory.backend_memory(Reports()) == {"mb": 3.0, "reason": None}
    none = memory.backend_memory(FakeRunner())
    assert none["mb"] is None and "fake reports no memory" in none["reason"]


# -- bandwidth, traffic, counters -----------------------------------------------------------------------


def test_stream_and_platform_peak_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path))
    first = bandwidth.platform_peak(threads=2, array_mb=2, repeats=2, matrix=128, compute_seconds=0.01)
    assert first["cached"] is False and first["stream"]["copy_gbs"] > 0 and first["stream"]["triad_gbs"] > 0
    assert first["peak_gbs"] == max(first["stream"]["copy_gbs"], first["stream"]["triad_gbs"])
    assert first["peak_gmacs_by_precision"]["fp32"] > 0

    def no_measuring(*a, **k):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(bandwidth, "stream", no_measuring)
    again = bandwidth.platform_peak(threads=2, array_mb=2)
    assert again["cached"] is True and again["peak_gbs"] == first["peak_gbs"]
    gpu = bandwidth.platform_peak(threads=2, hardware={"peak_gmacs": 1000.0, "peak_dram_gbps": 68.0})
    assert gpu["peak_gmacs"] == 1000.0 and gpu["measured_peak_gmacs"] == first["peak_gmacs"]
    assert gpu["datasheet_peak_gbs"] == 68.0
    with pytest.raises(AssertionError, match="measured again"):
        bandwidth.platform_peak(threads=2, array_mb=2, refresh=True)


def test_traffic_of_one_convolution_by_hand():
    from torch import nn

    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1))
    counts = traffic.graph_counts(conv, 8)
    assert counts == {"macs": 8 * 8 * 8 * 3 * 9, "cio": 3 * 64 + 8 * 64}
    wb = traffic.torch_weight_bytes(conv, 4)
    assert wb == (8 * 3 * 9 + 8) * 4
    int8 = traffic.cost(counts, 224, "test", "int8", traffic.activation_bytes("int8"))
    assert int8.traffic_bytes_per_frame(1) == 224 + 704 * 1
    assert int8.traffic_bytes_per_frame(4) == 224 / 4 + 704  # weights once per query of 4 frames
    fp32 = traffic.cost(counts, wb, "test", "fp32", traffic.activation_bytes("fp32", "f32"))
    bw, cp = traffic.bandwidth_figures(fp32, fps=1000.0, batch=1, peak={"peak_gbs": 10.0,
                                       "peak_gmacs_by_precision": {"fp32": 50.0, "int8": 200.0}},
                                       measured=None, arithmetic="fp32")
    per_frame = wb + 704 * 4
    assert bw["achieved_gbs"] == pytest.approx(per_frame * 1000 / 1e9, abs=1e-4)
    assert bw["fraction_of_peak"] == pytest.approx(bw["achieved_gbs"] / 10.0, rel=1e-3)
    assert cp["achieved_gmacs"] == pytest.approx(counts["macs"] * 1000 / 1e9, abs=1e-3)
    assert cp["platform_peak_gmacs"] == 50.0
    _, cp8 = traffic.bandwidth_figures(int8, 1000.0, 1, {"peak_gbs": 10.0, "peak_gmacs_by_precision":
                                                          {"fp32": 50.0, "int8": 200.0}}, None, "int8")
    assert cp8["platform_peak_gmacs"] == 200.0  # an int8 engine against the int8 ceiling


def test_onnx_weight_bytes_count_weights_at_their_stored_type(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.zeros((16, 3, 3, 3), np.int8), "w_q"),
             numpy_helper.from_array(np.zeros((16,), np.float32), "bias"),
             numpy_helper.from_array(np.array([1, 16, 1, 1], np.int64), "shape")]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], inits)
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), path)
    assert traffic.onnx_weight_bytes(path) == 16 * 27 * 1 + 16 * 4  # int64 shape left out


def test_perf_output_parsing():
    text = ("# started on ...\n\n"
            "1536.25,MiB,uncore_imc_0/cas_count_read/,2000000000,100.00,,\n"
            "512.00,MiB,uncore_imc_0/cas_count_write/,2000000000,100.00,,\n"
            "1000,,uncore_imc_free_running_0/data_read/,2000000000,100.00,,\n")
    total, problem = counters.parse_perf_stat(text)
    assert problem is None and total == pytest.approx(2048.25 * 2 ** 20 + 64_000)
    _, problem = counters.parse_perf_stat("<not supported>,,uncore_imc_0/cas_count_read/,0,100.00,,\n")
    assert "not supported" in problem
    _, problem = counters.parse_perf_stat("Error: access denied\n")
    assert "no counts" in problem


def test_memory_controller_discovery(tmp_path):
    intel = tmp_path / "intel"
    for pmu in ("uncore_imc_0", "uncore_imc_1"):
        (intel / pmu / "events").mkdir(parents=True)
        (intel / pmu / "events" / "cas_count_read").write_text("event=0x04,umask=0x03")
        (intel / pmu / "events" / "cas_count_write").write_text("event=0x04,umask=0x0c")
    (intel / "cpu").mkdir()
    events, why = counters.imc_events(intel)
    assert why is None and events == ["uncore_imc_0/cas_count_read/", "uncore_imc_0/cas_count_write/",
                                      "uncore_imc_1/cas_count_read/", "uncore_imc_1/cas_count_write/"]
    vm = tmp_path / "vm"
    for pmu in ("software", "tracepoint"):
        (vm / pmu).mkdir(parents=True)
    events, why = counters.imc_events(vm)
    assert events == [] and "no memory-controller PMU" in why and "software" in why
    amd = tmp_path / "amd"
    (amd / "amd_df").mkdir(parents=True)
    assert "AMD" in counters.imc_events(amd)[1]
    c = counters.open_counters(pmu_dir=vm, perf="/usr/bin/true")
    c.start()
    c.stop()
    assert c.result["measured_gbs"] is None and "no memory-controller PMU" in c.result["reason"]


# -- the CLI end to end, on a real (tiny) OpenVINO artifact ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory, shapes_small):
    """A real artifact: a 64x64 detector checkpoint exported to ONNX and converted to OpenVINO IR."""
    ov = pytest.importorskip("openvino")
    import torch

    from edgecsp.artifact import finalize, staging_dir
    from edgecsp.models.checkpoint import describe, save_checkpoint
    from edgecsp.models.detector import build_detector
    from edgecsp.onnx_writer import export_onnx
    from edgecsp.pipeline import model_hash_of
    from edgecsp.targets import load_target

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = build_detector("csp-tiny-efm", num_classes=6, input_size=64).eval()
    from edgecsp.data.coco import resolve_dataset

    names = resolve_dataset(shapes_small["val"]).class_names  # evaluated on that set: its classes, by name
    ckpt = save_checkpoint(root / "tiny.safetensors", model, describe(model, names, name="tiny"))
    rng = np.random.default_rng(0)
    export_onnx(model, root / "tiny.onnx", batch=1, input_size=64,
                parity_images=[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)])
    out = root / "tiny-intel-cpu-fp32"
    staging = staging_dir(out)
    ov.save_model(ov.convert_model(str(root / "tiny.onnx")), str(staging / "model.xml"), compress_to_fp16=False)
    c = model.config
    k = sum((64 // s) ** 2 for s in c.strides) * (len(c.anchors) // len(c.strides))
    from dataclasses import asdict

    manifest = {"model": {"name": "tiny", "source": str(ckpt), "hash": model_hash_of(model), "class_names": names,
                          "num_classes": 6, "input_size": [64, 64], "config": asdict(c)},
                "target": load_target("intel-cpu").as_dict(),
                "backend": {"name": "openvino", "version": ov.__version__,
                            "info": {"precision": "fp32", "inference_precision": "f32", "device": "CPU",
                                     "performance_hint": "LATENCY"}},
                "precision": "fp32", "engine": "model.xml",
                "inputs": [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"}],
                "outputs": [{"name": "predictions", "shape": [1, k, 11], "dtype": "float32"}]}
    finalize(staging, out, manifest, tarball=False)
    # A small platform peak in the (per-run) cache: the CLI reads it instead of measuring for seconds.
    bandwidth.platform_peak(array_mb=2, repeats=1, matrix=128, compute_seconds=0.01)
    return {"artifact": out, "val": shapes_small["val"], "root": root}


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


def test_real_runners_declare_what_they_can_do(tiny_artifact):
    """The harness reads capabilities and calls parallel_calls; every call gives run()'s answer."""
    import edgecsp
    from edgecsp.backends import get_backend

    x = np.random.default_rng(2).random((1, 3, 64, 64)).astype(np.float32)
    ov_runner = edgecsp.load(tiny_artifact["artifact"], mode="throughput", u8_input=False).runner
    ort_runner = get_backend("onnxruntime").open_runner(tiny_artifact["root"] / "tiny.onnx", {}, mode="throughput")
    ov_caps, ort_caps = ov_runner.capabilities, ort_runner.capabilities
    assert (ov_caps.parallel_kind, ov_caps.thread_safe, ov_caps.async_queue) == ("infer-requests", False, True)
    assert (ort_caps.parallel_kind, ort_caps.thread_safe, ort_caps.async_queue) == ("threads", True, False)
    assert ov_caps.parallel >= 1 and ort_caps.parallel == ort_runner.streams >= 1
    for runner in (ov_runner, ort_runner):
        want = runner.run(x)
        calls = runner.parallel_calls(2)
        assert len(calls) == 2
        for call in calls:
            np.testing.assert_allclose(call(x), want, rtol=0, atol=1e-5)
        runner.close()
    with pytest.raises(EdgeCSPError, match="has no asynchronous request queue"):
        ort_runner.infer_queue()


def test_real_runners_report_their_memory(tiny_artifact):
    """OpenVINO's and ONNX Runtime's runners say what their engine took (neither library reports
    it for the CPU); the benchmark's backend-memory figure reads it."""
    import edgecsp
    from edgecsp.backends import get_backend

    ov_runner = edgecsp.load(tiny_artifact["artifact"], u8_input=False).runner
    ort_runner = get_backend("onnxruntime").open_runner(tiny_artifact["root"] / "tiny.onnx", {}, threads=1)
    x = np.zeros((1, 3, 64, 64), np.float32)
    for runner in (ov_runner, ort_runner):
        loaded = runner.memory_bytes()
        assert loaded is not None and loaded > 0, type(runner).__name__
        runner.run(x)  # the first query's working memory counts too, once
        after_first = runner.memory_bytes()
        runner.run(x)
        assert after_first >= loaded and runner.memory_bytes() == after_first
        assert memory.backend_memory(runner)["mb"] == round(after_first / memory.MB, 2) > 0
        runner.close()


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


def test_report_schema_check_catches_missing_fields():
    good = {"schema": report.SCHEMA, "machine": {}, "settings": {}, "results": [
        {"name": "x", "scenario": "latency", "fps": 1.0, "latency_ms": {"p50": 1, "p90": 1, "p99": 1, "max": 1},
         "peak_rss_mb": 1.0, "bandwidth": {"model_traffic_mb_per_frame": 1, "achieved_gbs": 1, "platform_peak_gbs": 1,
                                           "measured_gbs": None, "measured_reason": "vm"}}]}
    assert report.validate(good) == []
    bad = json.loads(json.dumps(good))
    del bad["results"][0]["latency_ms"]["p99"]
    bad["results"][0]["bandwidth"]["measured_reason"] = None
    problems = report.validate(bad)
    assert any("p99" in p for p in problems) and any("without a reason" in p for p in problems)
