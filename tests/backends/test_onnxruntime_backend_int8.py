"""ONNX Runtime INT8: which convolutions stay float for speed (the RGB stem), on a tiny graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecsp.backends import BuildRequest, get_backend
from edgecsp.backends.onnxruntime_backend import narrow_input_convs, quantized_nodes
from edgecsp.calibration import CalibrationRecipe, CalibrationSet
from edgecsp.targets import load_target


def _tiny(path) -> None:
    """images (1,3,32,32) -> conv 3->8 -> LeakyRelu -> conv 8->16 -> LeakyRelu -> predictions."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)
             for name, shape in (("w0", (8, 3, 3, 3)), ("b0", (8,)), ("w1", (16, 8, 3, 3)), ("b1", (16,)))]
    nodes = [helper.make_node("Conv", ["images", "w0", "b0"], ["c0"], name="stem", pads=[1] * 4),
             helper.make_node("LeakyRelu", ["c0"], ["a0"], name="stem_act", alpha=0.1),
             helper.make_node("Conv", ["a0", "w1", "b1"], ["c1"], name="body", pads=[1] * 4, strides=[2, 2]),
             helper.make_node("LeakyRelu", ["c1"], ["predictions"], name="body_act", alpha=0.1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, [1, 16, 16, 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_narrow_input_convs_finds_the_stem_and_its_activation(tmp_path):
    _tiny(tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert narrow_input_convs(model) == ["stem", "stem_act"]
    assert narrow_input_convs(model, min_channels=9) == ["stem", "stem_act", "body", "body_act"]


@pytest.mark.parametrize("float_stem", [True, False])
def test_float_stem_build_option(tmp_path, float_stem):
    _tiny(tmp_path / "m.onnx")
    profile = load_target("onnxruntime")
    images = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    recipe = CalibrationRecipe(num_images=4, keep_head_float=False)
    request = BuildRequest(onnx_path=tmp_path / "m.onnx", precision="int8", profile=profile, out_dir=tmp_path / "out",
                           calibration=CalibrationSet(images=images, data_hash="random", sources=[]),
                           options={**profile.build, "recipe": recipe, "float_stem": float_stem})
    result = get_backend("onnxruntime").build(request)
    quantized = set(quantized_nodes(onnx.load(str(tmp_path / "out" / result.engine))))
    assert "body" in quantized
    assert ("stem" in quantized) is not float_stem
    assert result.info["float_stem"] == (["stem", "stem_act"] if float_stem else [])
