"""The Runner interface on real runners: capabilities, parallel calls, memory_bytes."""

from __future__ import annotations

import numpy as np
import pytest

from edgecsp.bench import memory
from edgecsp.errors import EdgeCSPError


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
