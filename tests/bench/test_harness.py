"""The measuring harness: warm-up, minimum duration and query count, per-query latencies, streams.

Timings are never asserted (the machine is shared); what is checked is the method.
"""

from __future__ import annotations

import numpy as np
import pytest
from fake_runner import INPUTS, FakeRunner

from edgecsp.bench.harness import Settings, measure
from edgecsp.errors import EdgeCSPError

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
