"""ONNX Runtime backend: FP32 parity with PyTorch, INT8 (QDQ) accuracy and structure, the accuracy
fallback ladder, runner behaviour and the failures users can hit (damaged engine, no onnxruntime).

Accuracy runs on the first EVAL_IMAGES images of the default validation set with the demo
detector; the full 200-image table is in the backend's report.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgecsp.backends import BuildRequest, get_backend
from edgecsp.backends.onnxruntime_backend import OnnxRuntimeBackend, pre_head_nodes
from edgecsp.calibration import calibration_set, load_recipe
from edgecsp.errors import EdgeCSPError
from edgecsp.onnx_graph import head_nodes
from edgecsp.targets import load_target

EVAL_IMAGES = 100
SIZE = 320


@pytest.fixture(scope="module")
def backend() -> OnnxRuntimeBackend:
    be = get_backend("onnxruntime")
    assert isinstance(be, OnnxRuntimeBackend)
    return be


@pytest.fixture(scope="module")
def demo():
    from edgecsp.models.checkpoint import resolve_model

    return resolve_model("demo")


@pytest.fixture(scope="module")
def dataset():
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.shapes import default_val_dir

    return resolve_dataset(default_val_dir())


@pytest.fixture(scope="module")
def fp32_onnx(demo, dataset, tmp_path_factory) -> Path:
    from edgecsp.onnx_writer import export_onnx

    model, description = demo
    path = tmp_path_factory.mktemp("ort") / "fp32.onnx"
    export_onnx(model, path, batch=1, input_size=SIZE, parity_images=[dataset[i][0] for i in range(2)],
                description=description)
    return path


@pytest.fixture(scope="module")
def torch_metrics(demo, dataset) -> dict:
    from edgecsp.coco_eval import evaluate, torch_predict_fn

    return evaluate(torch_predict_fn(demo[0]), dataset, SIZE, progress=False, max_images=EVAL_IMAGES)


def _request(onnx_path, out_dir, precision="fp32", recipe=None, images=None, **kw) -> BuildRequest:
    profile = load_target("onnxruntime")
    calib = calibration_set(recipe, SIZE) if recipe is not None else None
    if calib is not None and images is not None:
        calib.images = calib.images[:images]
    return BuildRequest(onnx_path=onnx_path, precision=precision, profile=profile, out_dir=out_dir, calibration=calib,
                        options={**profile.build, "recipe": recipe}, **kw)


def _metrics(backend, engine: Path, dataset, info: dict) -> dict:
    from edgecsp.coco_eval import evaluate

    with backend.open_runner(engine, {"backend": {"info": info}}, threads=1) as runner:
        return evaluate(runner.run, dataset, SIZE, progress=False, max_images=EVAL_IMAGES)


def _weight_source(model: onnx.ModelProto) -> dict[str, str]:
    """Conv name -> op type producing its weight ("initializer" for a float constant)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = node.input[1]
            if w in inits:
                assert inits[w].data_type == onnx.TensorProto.FLOAT
                out[node.name] = "initializer"
            else:
                out[node.name] = producer[w].op_type
    return out


@pytest.fixture(scope="module")
def int8_build(backend, fp32_onnx, tmp_path_factory):
    # 32 calibration images keep the test quick; the report's table uses the recipe's 128.
    recipe = replace(load_recipe("default"), num_images=32)
    out = tmp_path_factory.mktemp("ort-int8")
    return out, backend.build(_request(fp32_onnx, out, "int8", recipe))


def test_registered(backend):
    import onnxruntime  # type: ignore[import-untyped]

    assert backend.name == "onnxruntime" and backend.precisions == ("fp32", "int8")
    assert backend.version() == onnxruntime.__version__


def test_fp32_matches_pytorch(backend, demo, dataset, fp32_onnx, torch_metrics, tmp_path):
    import torch

    result = backend.build(_request(fp32_onnx, tmp_path))
    assert result.engine == "model.onnx" and result.files == ["model.onnx"]
    assert (tmp_path / "model.onnx").is_file() and result.info["graph_optimization"] == "all"

    # A batch of 3 on a batch-1 engine: the runner splits it.
    batch = np.stack([np.random.default_rng(i).random((3, SIZE, SIZE), dtype=np.float32) for i in range(3)])
    with backend.open_runner(tmp_path / result.engine, {}) as runner:
        out = runner.run(batch)
    with torch.inference_mode():
        expected = demo[0].predict(torch.from_numpy(batch)).numpy()
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=5e-3)

    measured = _metrics(backend, tmp_path / result.engine, dataset, result.info)
    assert abs(measured["AP50"] - torch_metrics["AP50"]) <= 0.001
    assert abs(measured["AP"] - torch_metrics["AP"]) <= 0.001


def test_int8_is_qdq_with_float_head(int8_build, fp32_onnx):
    out, result = int8_build
    info = result.info
    assert result.files == ["model.onnx"]
    assert info["format"] == "QDQ" and info["method"] == "minmax" and info["per_channel"] is True
    assert info["calibration_images"] == 32 and info["rung"] == "recipe" and info["accuracy_checked"] is False
    assert info["head_convs_float"] is True and info["quantized_nodes"] > 50

    model = onnx.load(str(out / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 50 and ops.count("DequantizeLinear") > 50

    fp32 = onnx.load(str(fp32_onnx))
    head = set(head_nodes(fp32))
    head_convs = [n.name for n in fp32.graph.node if n.op_type == "Conv" and n.name in head]
    assert len(head_convs) == 3
    source = _weight_source(model)
    assert all(source[c] == "initializer" for c in head_convs)  # float weights
    # The RGB stem (3 input channels) stays float too: ORT has no fast int8 kernel for it.
    init_dims = {i.name: list(i.dims) for i in fp32.graph.initializer}
    stem = [n.name for n in fp32.graph.node if n.op_type == "Conv" and init_dims[n.input[1]][1] == 3]
    assert len(stem) == 1 and stem[0] in info["float_stem"] and source[stem[0]] == "initializer"
    body = [c for c in source if c not in head and c not in stem]
    assert body and all(source[c] == "DequantizeLinear" for c in body)  # int8 weights
    # Nothing after the prediction convs is quantized: no Q/DQ node carries a head tensor.
    head_outputs = {o for n in fp32.graph.node if n.name in head for o in n.output}
    qdq_inputs = {n.input[0] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert not head_outputs & qdq_inputs


def test_int8_accuracy(backend, int8_build, dataset, torch_metrics):
    out, result = int8_build
    measured = _metrics(backend, out / result.engine, dataset, result.info)
    assert torch_metrics["AP50"] - measured["AP50"] <= 0.01
    assert torch_metrics["AP"] - measured["AP"] <= 0.03


def test_int8_head_quantized_when_recipe_says_so(backend, fp32_onnx, tmp_path):
    recipe = replace(load_recipe("default"), num_images=4, keep_head_float=False)
    result = backend.build(_request(fp32_onnx, tmp_path, "int8", recipe))
    # Only the RGB stem (the target's float_stem, a speed choice) stays float.
    stem = result.info["float_stem"]
    assert result.info["head_convs_float"] is False and result.info["excluded_nodes"] == len(stem) == 2
    source = _weight_source(onnx.load(str(tmp_path / "model.onnx")))
    assert all(op == "DequantizeLinear" for name, op in source.items() if name not in stem)


class _Validate:
    """Scripted AP50s: the first call is the FP32 reference, the next ones the rungs in order."""

    def __init__(self, scores):
        self.scores, self.calls = list(scores), 0

    def __call__(self, predict) -> float:
        out = predict(np.full((2, 3, SIZE, SIZE), 0.5, np.float32))  # a working predict function
        assert out.shape[0] == 2 and np.isfinite(out).all()
        self.calls += 1
        return self.scores.pop(0)


def test_fallback_ladder_stops_at_first_passing_rung(backend, fp32_onnx, tmp_path):
    recipe = replace(load_recipe("default"), num_images=4)
    validate = _Validate([0.99, 0.90, 0.95, 0.985])
    result = backend.build(_request(fp32_onnx, tmp_path, "int8", recipe, validate=validate, max_ap50_drop=0.01))
    info = result.info
    assert validate.calls == 4
    assert [r["rung"] for r in info["ladder"]] == ["recipe", "percentile", "pre-head"]
    assert info["rung"] == "pre-head" and info["passed"] is True
    assert info["method"] == "percentile"  # pre-head reuses the better calibration of the two tried
    assert info["ladder"][-1]["ap50_drop_points"] == pytest.approx(0.5)
    assert info["excluded_nodes"] > info["head_nodes"]
    # The pre-head block really is float in the written model.
    model = onnx.load(str(tmp_path / "model.onnx"))
    pre = set(pre_head_nodes(onnx.load(str(fp32_onnx)), head_nodes(onnx.load(str(fp32_onnx)))))
    assert pre and all(src == "initializer" for name, src in _weight_source(model).items() if name in pre)


def test_fallback_ladder_keeps_best_when_none_passes(backend, fp32_onnx, tmp_path):
    recipe = replace(load_recipe("percentile"), num_images=4)
    validate = _Validate([0.99, 0.80, 0.90, 0.85])
    result = backend.build(_request(fp32_onnx, tmp_path, "int8", recipe, validate=validate, max_ap50_drop=0.01))
    info = result.info
    # A percentile recipe skips the percentile rung: recipe, pre-head, conv-only.
    assert [r["rung"] for r in info["ladder"]] == ["recipe", "pre-head", "conv-only"]
    assert info["rung"] == "pre-head" and info["passed"] is False
    assert (tmp_path / "model.onnx").is_file()


def test_no_fallback_when_disabled(backend, fp32_onnx, tmp_path):
    recipe = replace(load_recipe("default"), num_images=4)
    validate = _Validate([0.99, 0.5])
    req = _request(fp32_onnx, tmp_path, "int8", recipe, validate=validate)
    req.options["accuracy_fallback"] = False
    info = backend.build(req).info
    assert [r["rung"] for r in info["ladder"]] == ["recipe"] and info["passed"] is False


def test_build_errors(backend, fp32_onnx, tmp_path):
    with pytest.raises(EdgeCSPError, match="needs calibration images"):
        backend.build(_request(fp32_onnx, tmp_path, "int8"))
    req = _request(fp32_onnx, tmp_path)
    req.options["graph_optimisation"] = "all"
    with pytest.raises(EdgeCSPError, match="unknown onnxruntime build option"):
        backend.build(req)
    with pytest.raises(EdgeCSPError, match="not 'fp16'"):
        backend.build(_request(fp32_onnx, tmp_path, "fp16"))


def test_runner_options_and_shapes(backend, fp32_onnx):
    with backend.open_runner(fp32_onnx, {}, threads=1) as runner:
        assert runner.input_shape == (1, 3, SIZE, SIZE)
        d = runner.describe()
        assert d["providers"] == ["CPUExecutionProvider"] and d["threads"] == 1 and d["graph_optimization"] == "all"
        with pytest.raises(EdgeCSPError, match="expects batches shaped"):
            runner.run(np.zeros((1, 3, 256, 256), np.float32))
    with backend.open_runner(fp32_onnx, {}, mode="throughput") as runner:
        assert runner.describe()["threads"] == 1 and runner.streams >= 1 and runner.thread_safe
    with pytest.raises(EdgeCSPError, match="unknown onnxruntime runner option"):
        backend.open_runner(fp32_onnx, {}, device="GPU")
    with pytest.raises(EdgeCSPError, match="mode must be"):
        backend.open_runner(fp32_onnx, {}, mode="fast")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing"])
def test_damaged_engine(backend, fp32_onnx, tmp_path, damage):
    engine = tmp_path / "model.onnx"
    if damage == "truncated":
        data = fp32_onnx.read_bytes()
        engine.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        engine.write_bytes(b"\x00not an onnx file" * 64)
    with pytest.raises(EdgeCSPError, match="rebuild the artifact"):
        backend.open_runner(engine, {})


def test_missing_onnxruntime(backend, fp32_onnx, tmp_path, monkeypatch):
    # A None entry makes "import onnxruntime" (and its submodules) raise ImportError.
    for name in [m for m in sys.modules if m == "onnxruntime" or m.startswith("onnxruntime.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for call in (backend.version, lambda: backend.open_runner(fp32_onnx, {}),
                 lambda: backend.build(_request(fp32_onnx, tmp_path))):
        with pytest.raises(EdgeCSPError, match=r"pip install 'edgecsp\[host\]'"):
            call()


def test_static_batch_reads_each_librarys_first_dimension():
    """One helper for the fixed batch of an input, whichever library describes it (0: dynamic)."""
    import openvino as ov

    from edgecsp.backends.base import static_batch

    def onnx_model(dim0):
        inp = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [dim0, 3, 64, 64])
        out = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [dim0, 3, 64, 64])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["images"], ["out"])], "g", [inp], [out])
        return onnx.helper.make_model(graph)

    assert static_batch(onnx_model(4)) == 4 and static_batch(onnx_model("batch")) == 0
    assert static_batch([2, 3, 64, 64]) == 2 and static_batch(["batch", 3, 64, 64]) == 0
    assert static_batch((-1, 3, 64, 64)) == 0 and static_batch([None, 3]) == 0 and static_batch([]) == 0
    core = ov.Core()
    fixed = core.read_model(onnx_model(3).SerializeToString(), b"")
    assert static_batch(fixed) == 3 and static_batch(core.compile_model(fixed, "CPU")) == 3
    dynamic = core.read_model(onnx_model("batch").SerializeToString(), b"")
    assert static_batch(dynamic) == 0
