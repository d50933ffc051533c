"""The model's memory traffic per frame, by hand, and weight bytes at their stored type."""

from __future__ import annotations

import numpy as np
import pytest

from edgecsp.bench import traffic


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
