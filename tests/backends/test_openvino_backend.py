"""OpenVINO backend: IR per precision, NNCF int8 with a float head, accuracy-aware path, runner.

Accuracy is measured on the first 100 images of the default validation set with the demo
detector: OV FP32 and FP16 must match PyTorch's AP50 within 0.001, INT8 within 0.01.
int8 builds calibrate on 32 images (the default recipe uses 128) to keep the file fast.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecsp.backends import BuildRequest, get_backend
from edgecsp.errors import EdgeCSPError

VAL_IMAGES = 100
CALIB_IMAGES = 32


@pytest.fixture(scope="module")
def ov():
    return pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def backend(ov):
    return get_backend("openvino")


@pytest.fixture(scope="module")
def profile():
    from edgecsp.targets import load_target

    return load_target("intel-cpu")


@pytest.fixture(scope="module")
def demo():
    from edgecsp.models.checkpoint import resolve_model

    return resolve_model("demo")


@pytest.fixture(scope="module")
def onnx_path(demo, tmp_path_factory) -> Path:
    model, description = demo
    path = tmp_path_factory.mktemp("ov-onnx") / "demo.onnx"
    try:
        from edgecsp.onnx_writer import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        export_onnx(model, path, opset=17, batch=1, description=description)
        return path
    import torch

    class Wrapper(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.predict(x)

    size = model.config.input_size
    torch.onnx.export(Wrapper(model).eval(), torch.rand(1, 3, size, size), str(path), input_names=["images"],
                      output_names=["predictions"], opset_version=17, dynamo=False)
    return path


@pytest.fixture(scope="module")
def dataset():
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.shapes import default_val_dir

    return resolve_dataset(default_val_dir())


def _ap50(predict, dataset) -> float:
    from edgecsp.coco_eval import evaluate

    return evaluate(predict, dataset, 320, progress=False, max_images=VAL_IMAGES)["AP50"]


@pytest.fixture(scope="module")
def torch_ap50(demo, dataset) -> float:
    from edgecsp.coco_eval import torch_predict_fn

    return _ap50(torch_predict_fn(demo[0]), dataset)


@pytest.fixture(scope="module")
def calibration():
    from edgecsp.calibration import calibration_set, load_recipe

    return calibration_set(dataclasses.replace(load_recipe("default"), num_images=CALIB_IMAGES), 320)


def _build(backend, profile, onnx_path, out_dir, precision, **kw):
    return backend.build(BuildRequest(onnx_path=onnx_path, precision=precision, profile=profile,
                                      out_dir=out_dir, **kw))


@pytest.fixture(scope="module")
def fp32_artifact(backend, profile, onnx_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov-fp32")
    return out, _build(backend, profile, onnx_path, out, "fp32")


@pytest.fixture(scope="module")
def int8_artifact(backend, profile, onnx_path, calibration, dataset, tmp_path_factory):
    """keep_head_float (default recipe), accuracy-aware with validation: measure, then skip the loop."""
    from edgecsp.calibration import load_recipe

    out = tmp_path_factory.mktemp("ov-int8")
    result = _build(backend, profile, onnx_path, out, "int8", calibration=calibration,
                    validate=lambda predict: _ap50(predict, dataset), max_ap50_drop=0.01,
                    options={**profile.build, "recipe": load_recipe("default")})
    return out, result


def _head_ops(ov, xml: Path, onnx_path: Path) -> tuple[set[str], set[str], set[str]]:
    """(prediction conv op names, all head/decode op names, quantized op names) of an IR."""
    from edgecsp.backends.openvino_backend import head_op_names, quantized_op_names

    model = ov.Core().read_model(str(xml))
    head = set(head_op_names(model, onnx_path))
    convs = {op.get_friendly_name() for op in model.get_ops()
             if op.get_type_name() == "Convolution" and op.get_friendly_name() in head}
    return convs, head, quantized_op_names(model)


# --- accuracy --------------------------------------------------------------------------------


def test_fp32_matches_pytorch(backend, fp32_artifact, dataset, torch_ap50):
    out, result = fp32_artifact
    assert result.engine == "model.xml" and set(result.files) == {"model.xml", "model.bin"}
    assert all((out / f).is_file() for f in result.files)
    # f32 set explicitly: on BF16-capable CPUs OpenVINO would otherwise run this in bf16.
    assert result.info["inference_precision_used"] == "f32"
    with backend.open_runner(out / result.engine, {"precision": "fp32"}) as runner:
        assert runner.describe()["inference_precision"] == "f32"
        assert abs(_ap50(runner.run, dataset) - torch_ap50) <= 0.001


def test_fp16_weights_and_accuracy(backend, profile, onnx_path, fp32_artifact, dataset, torch_ap50, tmp_path):
    result = _build(backend, profile, onnx_path, tmp_path, "fp16")
    assert result.info["ir_weights"] == "fp16"
    fp32_bin = (fp32_artifact[0] / "model.bin").stat().st_size
    assert (tmp_path / "model.bin").stat().st_size < 0.6 * fp32_bin  # weights really stored as fp16
    with backend.open_runner(tmp_path / "model.xml", {"precision": "fp16"}) as runner:
        used = runner.describe()["inference_precision"]
        assert used == result.info["inference_precision_used"] in ("f16", "f32")
        assert abs(_ap50(runner.run, dataset) - torch_ap50) <= 0.001


def test_int8_accuracy_and_plain_path(backend, int8_artifact, dataset, torch_ap50):
    out, result = int8_artifact
    q = result.info["quantization"]
    assert q["path"] == "nncf.quantize"  # drop within tolerance: the accuracy-control loop did not run
    assert q["ap50_drop"] <= 0.01 and q["keep_head_float"] and len(q["float_head_convs"]) == 3
    with backend.open_runner(out / result.engine, {"precision": "int8"}) as runner:
        assert torch_ap50 - _ap50(runner.run, dataset) <= 0.01


def test_int8_ir_is_quantized_but_head_is_float(ov, backend, profile, onnx_path, calibration, int8_artifact,
                                               tmp_path):
    from edgecsp.calibration import CalibrationSet, load_recipe

    out, _ = int8_artifact
    types = {op.get_type_name() for op in ov.Core().read_model(str(out / "model.xml")).get_ops()}
    assert "FakeQuantize" in types
    convs, head, quantized = _head_ops(ov, out / "model.xml", onnx_path)
    assert len(convs) == 3 and not head & quantized  # prediction convs and decode all float
    assert len(quantized) > 20  # the backbone and neck are int8

    # The same build without keep_head_float quantizes the prediction convs: the check above can fail.
    few = CalibrationSet(calibration.images[:4], calibration.data_hash, calibration.sources[:4])
    recipe = dataclasses.replace(load_recipe("default"), keep_head_float=False)
    _build(backend, profile, onnx_path, tmp_path, "int8", calibration=few, options={"recipe": recipe})
    convs, head, quantized = _head_ops(ov, tmp_path / "model.xml", onnx_path)
    assert len(convs) == 3 and convs <= quantized


# --- accuracy-aware loop (a tiny model so NNCF's layer ranking is cheap) ------------------------


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
            self.pred = torch.nn.Conv2d(8, 7, 1)

        def forward(self, x):
            p = self.pred(self.body(x))
            return torch.sigmoid(p.flatten(2).transpose(1, 2))  # (B, K, 5 + 2)

    path = tmp_path_factory.mktemp("ov-tiny") / "tiny.onnx"
    torch.onnx.export(Tiny().eval(), torch.rand(1, 3, 16, 16), str(path), input_names=["images"],
                      output_names=["predictions"], opset_version=17, dynamo=False)
    return path


def test_accuracy_control_runs_only_when_needed(backend, profile, tiny_onnx, tmp_path):
    from edgecsp.calibration import CalibrationRecipe, CalibrationSet

    rng = np.random.default_rng(0)
    inputs = (rng.integers(0, 256, (12, 3, 16, 16)) / 255).astype(np.float32)
    reference = []

    def validate(predict):  # a stand-in metric: 1 - mean error against the first (float) model seen
        out = predict(inputs)
        if not reference:
            reference.append(out)
        return 1.0 - float(np.abs(out - reference[0]).mean())

    calib = CalibrationSet(inputs[:8], "tiny", [])
    options = {"accuracy_aware": True, "recipe": CalibrationRecipe(keep_head_float=False)}
    relaxed = _build(backend, profile, tiny_onnx, tmp_path / "a", "int8", calibration=calib, validate=validate,
                     max_ap50_drop=0.5, options=options).info["quantization"]
    assert relaxed["path"] == "nncf.quantize" and relaxed["ap50_drop"] > 0

    strict = _build(backend, profile, tiny_onnx, tmp_path / "b", "int8", calibration=calib, validate=validate,
                    max_ap50_drop=1e-6, options=options).info["quantization"]
    assert strict["path"] == "nncf.quantize_with_accuracy_control"
    assert strict["reverted_to_float"], strict
    assert strict["ap50_drop"] < strict["ap50_float"] - strict["ap50_int8_plain"]


# --- bf16 / precision choice -------------------------------------------------------------------


def test_bf16_only_where_supported(backend, profile, onnx_path, tmp_path, monkeypatch):
    from edgecsp.backends import openvino_backend as mod

    caps = mod.OpenVINOBackend._capabilities(__import__("openvino").Core(), "CPU")
    if "BF16" in caps:
        result = _build(backend, profile, onnx_path, tmp_path, "bf16")
        assert result.info["inference_precision_used"] == "bf16" and result.info["ir_weights"] == "fp32"
    monkeypatch.setattr(mod.OpenVINOBackend, "_capabilities", staticmethod(lambda core, device: ["FP32", "INT8"]))
    with pytest.raises(EdgeCSPError, match="no bf16 support; use fp32, fp16 or int8"):
        _build(backend, profile, onnx_path, tmp_path / "x", "bf16")


def test_runtime_precision_rules():
    from edgecsp.backends.openvino_backend import _runtime_precision

    assert _runtime_precision("fp32", ["BF16", "FP16"]) == "f32"
    assert _runtime_precision("fp16", ["FP32", "BF16"]) == "f32"  # no native fp16: not bf16
    assert _runtime_precision("fp16", ["FP16"]) == "f16"
    assert _runtime_precision("int8", ["BF16", "INT8"]) == "f32"  # the float head stays f32
    assert _runtime_precision("bf16", ["BF16"]) == "bf16"


# --- runner ------------------------------------------------------------------------------------


def test_runner_batches_queue_and_describe(backend, fp32_artifact):
    out, result = fp32_artifact
    x = np.random.default_rng(1).random((3, 3, 320, 320), dtype=np.float32)
    with backend.open_runner(out / result.engine, {"precision": "fp32"}, mode="throughput", threads=1) as runner:
        assert runner.input_shape == (1, 3, 320, 320)
        batch = runner.run(x)  # a static batch-1 engine still takes any N
        singles = [runner.run(x[i:i + 1]) for i in range(3)]
        assert batch.shape[0] == 3 and batch.shape[2] == 5 + 6
        np.testing.assert_allclose(batch, np.concatenate(singles), rtol=0, atol=1e-4)
        assert not np.shares_memory(singles[0], singles[1])  # copies, not the request's buffer

        queue = runner.infer_queue(2)
        got = {}
        queue.set_callback(lambda request, i: got.__setitem__(i, request.get_output_tensor(0).data.copy()))
        for i in range(3):
            queue.start_async({0: x[i:i + 1]}, i)
        queue.wait_all()
        np.testing.assert_allclose(np.concatenate([got[i] for i in range(3)]), batch, rtol=0, atol=1e-4)

        info = runner.describe()
        assert info["mode"] == "throughput" and info["threads"] == 1 and info["streams"] >= 1
        assert info["openvino"] and info["device_name"] and info["inference_precision"] == "f32"
        with pytest.raises(EdgeCSPError, match="expects batches shaped"):
            runner.run(np.zeros((1, 3, 64, 64), np.float32))


def test_damaged_ir_asks_for_rebuild(backend, fp32_artifact, tmp_path):
    out, _ = fp32_artifact
    (tmp_path / "model.xml").write_bytes((out / "model.xml").read_bytes())
    (tmp_path / "model.bin").write_bytes((out / "model.bin").read_bytes()[:100_000])  # truncated weights
    with pytest.raises(EdgeCSPError, match="rebuild the artifact"):
        backend.open_runner(tmp_path / "model.xml", {"precision": "fp32"})
    (tmp_path / "model.xml").write_bytes((out / "model.xml").read_bytes()[:2000])  # cut XML
    with pytest.raises(EdgeCSPError, match="rebuild the artifact"):
        backend.open_runner(tmp_path / "model.xml", {"precision": "fp32"})
    with pytest.raises(EdgeCSPError, match="rebuild the artifact"):
        backend.open_runner(tmp_path / "missing.xml", {"precision": "fp32"})


def test_bad_requests(backend, profile, onnx_path, tmp_path):
    with pytest.raises(EdgeCSPError, match="calibration"):
        _build(backend, profile, onnx_path, tmp_path, "int8")
    with pytest.raises(EdgeCSPError, match="re-export"):
        (tmp_path / "bad.onnx").write_bytes(b"not an onnx file")
        _build(backend, profile, tmp_path / "bad.onnx", tmp_path / "o", "fp32")
    with pytest.raises(EdgeCSPError, match="does not exist"):
        _build(backend, profile, tmp_path / "none.onnx", tmp_path / "o", "fp32")


def _profile_with(tmp_path: Path, source: str, replace: tuple[str, str]) -> Path:
    from edgecsp.targets import TARGETS_DIR

    text = (TARGETS_DIR / f"{source}.toml").read_text()
    assert replace[0] in text
    path = tmp_path / "typo.toml"
    path.write_text(text.replace(*replace))
    return path


@pytest.mark.parametrize("old, new, message", [
    ('performance_hint = "LATENCY"', 'performance_hint = "LATENCY"\nnthreads = 4',
     "[build]: unknown openvino build option 'nthreads'; known: accuracy_aware, "),
    ("accuracy_aware = true", 'accuracy_aware = "yes"', "[build]: accuracy_aware must be true or false, got 'yes'"),
    ('performance_hint = "LATENCY"', 'performance_hint = "FAST"',
     "[build]: performance_hint must be one of LATENCY, THROUGHPUT, got 'FAST'"),
])
def test_a_misspelt_or_mistyped_build_option_is_refused_with_one_line(tmp_path, capsys, old, new, message):
    """OpenVINO used to ignore a [build] key it did not know (a typo built with the default)."""
    from edgecsp import cli
    from edgecsp.compile import main

    profile = _profile_with(tmp_path, "intel-cpu", (old, new))
    assert cli.run(main, ["--target", str(profile)]) == 2  # refused before the demo model loads
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_a_misspelt_option_in_a_build_request_is_refused(backend, profile, onnx_path, tmp_path):
    with pytest.raises(EdgeCSPError, match="unknown openvino build option 'fast_bias_corection'"):
        backend.build(BuildRequest(onnx_path=onnx_path, precision="fp32", profile=profile, out_dir=tmp_path,
                                   options={**profile.build, "fast_bias_corection": False}))


# --- missing libraries -------------------------------------------------------------------------


def test_missing_openvino_gives_install_hint(monkeypatch):
    backend = get_backend("openvino")  # the module itself imports without openvino
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    with pytest.raises(EdgeCSPError, match=r"pip install 'edgecsp\[host\]'"):
        backend.version()
    with pytest.raises(EdgeCSPError, match=r"pip install 'edgecsp\[host\]'"):
        backend.open_runner(Path("model.xml"), {})


def test_missing_nncf_gives_install_hint(backend, profile, onnx_path, calibration, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(EdgeCSPError, match=r"NNCF.*pip install 'edgecsp\[host\]'"):
        _build(backend, profile, onnx_path, tmp_path, "int8", calibration=calibration)
