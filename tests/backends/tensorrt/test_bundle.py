"""The Jetson bundle, for real on the demo detector: TensorRT-rules Q/DQ, calibration cache,
verification set, sensitivity pass, and the on-device build as far as it runs without TensorRT.
Tests that need TensorRT and a CUDA GPU are marked ``tensorrt`` and skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecsp.errors import EdgeCSPError

# --------------------------------------------------------------------------------------------
# Q/DQ, calibration cache and bundle (the demo detector, for real)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from edgecsp.models.checkpoint import resolve_model
    from edgecsp.onnx_writer import export_onnx

    model, description = resolve_model("demo")
    path = tmp_path_factory.mktemp("jetson-export") / "model.onnx"
    export_onnx(model, path, batch=1, description=description)
    return path


@pytest.fixture(scope="module")
def bundle(exported, tmp_path_factory, shapes_small) -> Path:
    """The bundle TensorRTBackend.build writes here (no TensorRT), finalized as an artifact."""
    from edgecsp.artifact import finalize
    from edgecsp.backends import BuildRequest, get_backend
    from edgecsp.calibration import CalibrationRecipe, calibration_set
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.targets import load_target

    profile = load_target("jetson-orin-nano")
    recipe = CalibrationRecipe(num_images=32)
    staging = tmp_path_factory.mktemp("staging")
    request = BuildRequest(onnx_path=exported, precision="int8", profile=profile, out_dir=staging,
                           calibration=calibration_set(recipe, 320),
                           options={**profile.build, "recipe": recipe, "nms": True},
                           dataset=resolve_dataset(shapes_small["val"]), verify_images=8)
    backend = get_backend("tensorrt")
    result = backend.build(request)
    assert result.engine == "model.int8.qdq.onnx"
    manifest = {"model": {"input_size": [320, 320], "class_names": [str(i) for i in range(6)]},
                "inputs": [{"name": "images", "shape": [1, 3, 320, 320]}], "precision": "int8",
                "backend": {"name": "tensorrt", "version": backend.version(), "info": result.info},
                "engine": result.engine, "target": profile.as_dict()}
    return finalize(staging, tmp_path_factory.mktemp("artifacts") / "demo-jetson-int8", manifest, tarball=False)


def test_bundle_holds_what_the_device_needs(bundle):
    files = {p.name for p in bundle.iterdir()}
    assert {"model.onnx", "model.int8.qdq.onnx", "calibration.cache", "JETSON.md", "manifest.json",
            "model.nms.onnx", "model.int8.qdq.nms.onnx", "verify.npz", "model.int8.qdq.fp16.onnx",
            "model.int8.qdq.fp16.nms.onnx"} <= files
    manifest = json.loads((bundle / "manifest.json").read_text())
    info = manifest["backend"]["info"]
    assert info["engine_built"] is False and "TensorRT" in info["why_no_engine"]
    assert info["qdq"]["float_convs"] and info["qdq"]["quantized_convs"] > 50
    guide = (bundle / "JETSON.md").read_text()
    assert "python -m edgecsp.compile --target jetson --from-bundle ." in guide
    assert "trtexec --onnx=model.int8.qdq.fp16.nms.onnx --saveEngine=model.engine --stronglyTyped" in guide
    assert "--int8 --fp16 --calib=calibration.cache" in guide  # JetPack 5 (TensorRT 8.5) line


def test_qdq_follows_tensorrt_rules_on_the_graph(bundle):
    from edgecsp.backends.tensorrt.qdq import check_tensorrt_qdq
    from edgecsp.onnx_graph import head_nodes

    model = onnx.load(str(bundle / "model.int8.qdq.onnx"))
    fp32 = onnx.load(str(bundle / "model.onnx"))
    assert check_tensorrt_qdq(model, float_nodes=head_nodes(fp32)) == []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    qs = [n for n in nodes if n.op_type == "QuantizeLinear"]
    dqs = [n for n in nodes if n.op_type == "DequantizeLinear"]
    assert qs and dqs
    for n in qs + dqs:  # symmetric INT8: int8 zero-points, all 0
        zp = inits[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any()
    for n in qs:  # activations: one scale per tensor
        assert inits[n.input[1]].size == 1
    head = set(head_nodes(fp32))
    convs = [n for n in nodes if n.op_type == "Conv"]
    for conv in convs:
        w = producer.get(conv.input[1])
        if conv.name in head:  # the head stays float: float input, float weight
            assert producer.get(conv.input[0]) is None or producer[conv.input[0]].op_type != "DequantizeLinear"
            assert conv.input[1] in inits and inits[conv.input[1]].dtype == np.float32
            continue
        assert producer[conv.input[0]].op_type == "DequantizeLinear"  # activation quantized at the input
        assert w is not None and w.op_type == "DequantizeLinear"
        weight = inits[w.input[0]]
        axis = next(a.i for a in w.attribute if a.name == "axis")
        assert weight.dtype == np.int8 and axis == 0 and inits[w.input[1]].shape == (weight.shape[0],)
        if len(conv.input) > 2:  # biases stay float
            assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32
    # Q/DQ only where TensorRT fuses them: conv data inputs and residual adds.
    dq_users = {u.op_type for u in nodes for i in u.input if i in {d.output[0] for d in dqs}}
    assert dq_users <= {"Conv", "Add"}


def test_qdq_checker_catches_rule_breaks(bundle):
    from edgecsp.backends.tensorrt.qdq import check_tensorrt_qdq

    model = onnx.load(str(bundle / "model.int8.qdq.onnx"))
    inits = {t.name: t for t in model.graph.initializer}
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    inits[q.input[2]].CopyFrom(numpy_helper.from_array(np.array(3, dtype=np.int8), q.input[2]))  # asymmetric
    wdq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
    next(a for a in wdq.attribute if a.name == "axis").i = 1  # per-channel on the wrong axis
    problems = check_tensorrt_qdq(model)
    assert any("zero-point not 0" in p for p in problems)
    assert any("axis 0" in p for p in problems)


def test_calibration_cache_matches_the_qdq_scales(bundle):
    from edgecsp.backends.tensorrt.qdq import activation_scales, parse_calibration_cache, retag_calibration_cache

    text = (bundle / "calibration.cache").read_text()
    header, scales = parse_calibration_cache(text)
    assert header == "TRT-8502-EntropyCalibration2"
    qdq = activation_scales(bundle / "model.int8.qdq.onnx")
    assert set(scales) == set(qdq) and "images" in scales  # one entry per quantized tensor
    for name, scale in qdq.items():  # bit-for-bit the same float32 scales
        assert struct.pack(">f", scales[name]) == struct.pack(">f", scale), name
    # Raw format: "<tensor>: <float32 bits as hex>", as TensorRT writes it.
    line = next(ln for ln in text.splitlines() if ln.startswith("images: "))
    assert int(line.split(": ")[1], 16) == struct.unpack(">I", struct.pack(">f", qdq["images"]))[0]
    assert retag_calibration_cache(text, "10.3.0").splitlines()[0] == "TRT-100300-EntropyCalibration2"
    assert retag_calibration_cache(text, "8.2.1").splitlines()[1:] == text.splitlines()[1:]
    with pytest.raises(EdgeCSPError, match="header"):
        parse_calibration_cache("images: 3c010204\n")
    with pytest.raises(EdgeCSPError, match="hexscale"):
        parse_calibration_cache("TRT-8502-EntropyCalibration2\nimages: not-hex\n")


def test_qdq_model_accuracy_in_onnxruntime_is_within_a_point_of_fp32(bundle):
    from edgecsp.backends import get_backend
    from edgecsp.coco_eval import evaluate
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.shapes import default_val_dir

    dataset = resolve_dataset(default_val_dir())
    backend = get_backend("tensorrt")
    manifest = json.loads((bundle / "manifest.json").read_text())
    results = {}
    for name in ("model.onnx", "model.int8.qdq.onnx"):
        with backend.open_runner(bundle / name, manifest, threads=1) as runner:
            results[name] = evaluate(runner.run, dataset, 320, progress=False, max_images=100)
    fp32, int8 = results["model.onnx"], results["model.int8.qdq.onnx"]
    print(f"\nFP32 AP {fp32['AP']:.4f} AP50 {fp32['AP50']:.4f} | QDQ AP {int8['AP']:.4f} AP50 {int8['AP50']:.4f}")
    assert fp32["AP50"] > 0.9  # the demo detector works at all
    assert fp32["AP50"] - int8["AP50"] <= 0.01


def test_efficient_nms_variant_is_tensorrt_plugin_shaped(bundle):
    model = onnx.load(str(bundle / "model.int8.qdq.nms.onnx"))
    nms = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == 1
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nms[0].attribute}
    assert attrs["max_output_boxes"] == 100 and attrs["box_coding"] == 0 and attrs["background_class"] == -1
    assert [o.name for o in model.graph.output] == ["predictions", "num_detections", "detection_boxes",
                                                     "detection_scores", "detection_classes"]
    assert model.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.INT32


def test_fp16_model_is_typed_sorted_and_close(exported, tmp_path):
    import onnxruntime as ort

    from edgecsp.backends.tensorrt.qdq import to_fp16

    m = to_fp16(exported)
    onnx.checker.check_model(m)  # topologically sorted, valid
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 I/O kept
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    onnx.save(m, str(tmp_path / "fp16.onnx"))
    x = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    a = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    b = ort.InferenceSession(str(tmp_path / "fp16.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert np.abs(a[..., 4:] - b[..., 4:]).max() < 1e-2


def test_from_bundle_refuses_a_tampered_bundle_and_leaves_nothing(bundle, tmp_path):
    from edgecsp.compile import main

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with open(copy / "model.int8.qdq.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    out = tmp_path / "engine"
    with pytest.raises(EdgeCSPError, match="sha256"):
        main(["--target", "jetson-orin-nano", "--from-bundle", str(copy), "--out", str(out)])
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_from_bundle_without_tensorrt_is_one_line_and_leaves_nothing(bundle, tmp_path):
    from edgecsp.backends.tensorrt.runner import load_tensorrt

    if load_tensorrt() is not None:
        pytest.skip("TensorRT is installed here")
    out = tmp_path / "engine"
    res = subprocess.run([sys.executable, "-m", "edgecsp.compile", "--target", "jetson-orin-nano", "--from-bundle",
                          str(bundle), "--out", str(out)], capture_output=True, text=True, timeout=120, check=False,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0], res.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bundle_verification_set_holds_inputs_truth_and_both_references(bundle):
    from edgecsp import verifyset

    manifest = json.loads((bundle / "manifest.json").read_text())
    info = manifest["backend"]["info"]["verify"]
    assert "verify.npz" in manifest["files"] and info["images"] == 8
    vs = verifyset.load(bundle / "verify.npz")
    assert vs.arrays["images"].shape == (8, 320, 320, 3) and vs.arrays["images"].dtype == np.uint8
    assert vs.references == ["fp32", "int8_qdq", "int8_qdq_fp16"] and len(vs.arrays["gt_image"]) >= 8
    for ref in vs.references:  # the recorded AP is the stored detections' AP
        assert vs.score(vs.reference(ref))["AP50"] == info["references"][ref]["AP50"] > 0.8
    # The FP32 model run again on the stored inputs gives the stored detections.
    from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner

    with OnnxModelRunner(bundle / "model.onnx") as r:
        again = vs.run(r.run)
    np.testing.assert_allclose(again["score"], vs.reference("fp32")["score"], atol=1e-5)
    assert vs.first(3).images == 3 and set(vs.first(3).arrays["gt_image"]) <= set(vs.arrays["image_ids"][:3])
    # Pickled content is refused: the loader never unpickles.
    bad = bundle.parent / "pickled.npz"
    np.savez(bad, **{**vs.arrays, "images": np.array([object()], dtype=object)})
    with pytest.raises(EdgeCSPError, match="not a readable verification set"):
        verifyset.load(bad)
    bad.unlink()


def test_from_bundle_with_the_onnxruntime_stand_in_verifies_on_the_bundles_own_set(bundle, tmp_path):
    import edgecsp
    from edgecsp.backends.tensorrt.bundle import build_from_bundle

    out, manifest = build_from_bundle(bundle, target="jetson-orin-nano", out=tmp_path / "engine",
                                      stand_in="onnxruntime", progress=lambda line: None)
    device = manifest["accuracy"]["device"]
    host = json.loads((bundle / "manifest.json").read_text())["backend"]["info"]["verify"]["references"]
    assert manifest["engine"] == "model.int8.qdq.onnx"  # the model the host verified
    assert manifest["backend"]["info"]["stand_in"]["runtime"] == "onnxruntime"
    assert manifest["backend"]["version"].startswith("stand-in: onnxruntime")
    assert device["images"] == 8 and device["passed"]
    assert device["engine"]["AP"] == pytest.approx(host["int8_qdq"]["AP"], abs=1e-3)  # the same model, run again
    assert device["reference_fp32_onnx"]["AP50"] == host["fp32"]["AP50"]
    with edgecsp.load(out) as p:
        assert p.runner.describe()["runtime"] == "onnxruntime CPU"
    with pytest.raises(EdgeCSPError, match="unknown stand-in"):
        build_from_bundle(bundle, target="jetson-orin-nano", out=tmp_path / "x", stand_in="cpu")


def test_fp16_typed_qdq_model_keeps_the_rules_and_the_accuracy(bundle):
    from edgecsp.backends.tensorrt.qdq import check_tensorrt_qdq
    from edgecsp.onnx_graph import head_nodes

    model = onnx.load(str(bundle / "model.int8.qdq.fp16.onnx"))
    fp32 = onnx.load(str(bundle / "model.onnx"))
    assert check_tensorrt_qdq(model, float_nodes=head_nodes(fp32)) == []
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = [inits[n.input[1]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert scales and all(s.dtype == np.float16 for s in scales)  # Q/DQ in FP16 (opset 19)
    types = {t.name: t.data_type for t in model.graph.initializer}
    conv_params = [i for n in model.graph.node if n.op_type == "Conv" for i in n.input[1:] if i in types]
    assert conv_params and {types[i] for i in conv_params} == {onnx.TensorProto.FLOAT16}  # head weights, biases
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 at the edges
    refs = json.loads((bundle / "manifest.json").read_text())["backend"]["info"]["verify"]["references"]
    assert abs(refs["int8_qdq_fp16"]["AP50"] - refs["int8_qdq"]["AP50"]) <= 0.02


def test_sensitivity_pass_floats_the_costliest_convs_and_records_them(bundle):
    from edgecsp import verifyset
    from edgecsp.backends.tensorrt.qdq import check_tensorrt_qdq
    from edgecsp.backends.tensorrt.sensitivity import float_convs, keep_costliest_float, output_error, quantized_convs
    from edgecsp.calibration import CalibrationRecipe, calibration_set
    from edgecsp.onnx_graph import head_nodes

    manifest = json.loads((bundle / "manifest.json").read_text())
    sens = manifest["backend"]["info"]["qdq"]["sensitivity"]
    assert sens["ran"] is False and sens["ap50_drop_points"] <= sens["tolerance_points"]  # the demo holds
    fp32 = onnx.load(str(bundle / "model.onnx"))
    qdq = onnx.load(str(bundle / "model.int8.qdq.onnx"))
    names = quantized_convs(qdq)
    assert len(names) > 50
    # One conv floated: float input, the FP32 weight, TensorRT's rules still hold, closer to FP32.
    one = float_convs(qdq, fp32, names[:1])
    assert quantized_convs(one) == names[1:]
    conv = next(n for n in one.graph.node if n.name == names[0])
    fp32_conv = next(n for n in fp32.graph.node if n.name == names[0])
    assert conv.input[1] == fp32_conv.input[1]
    assert check_tensorrt_qdq(one, float_nodes=head_nodes(fp32) + names[:1]) == []
    images = calibration_set(CalibrationRecipe(num_images=8), 320).images[:2]
    # Forced (tolerance below any drop), on 5 candidate layers, at most 2 floated.
    vs = verifyset.load(bundle / "verify.npz").first(4)
    model, report = keep_costliest_float(qdq, fp32, images, lambda p: vs.score(vs.run(p))["AP50"],
                                         tolerance_points=-100.0, max_layers=2, layers=names[:5])
    assert len(report.ranking) == 5 and len(report.floated) + len(report.tried) == 2
    costs = [r["output_error_cost"] for r in report.ranking]
    assert costs == sorted(costs, reverse=True)
    assert len(quantized_convs(model)) == len(names) - len(report.floated)
    assert report.ap50_drop_after <= report.ap50_drop_before
    d = report.as_dict()
    assert d["kept_float"] == report.floated and d["quantized_convs"] == 5
    with tempfile.TemporaryDirectory() as tmp:  # a conv's cost is the output error its Q/DQ adds, re-measured
        from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner

        outs = []
        for i, m in enumerate((fp32, qdq, float_convs(qdq, fp32, [report.ranking[0]["conv"]]))):
            onnx.save(m, f"{tmp}/{i}.onnx")
            with OnnxModelRunner(Path(f"{tmp}/{i}.onnx")) as r:
                outs.append(r.run(images))
        cost = output_error(outs[1], outs[0], 320) - output_error(outs[2], outs[0], 320)
        assert cost == pytest.approx(report.ranking[0]["output_error_cost"], abs=2e-6)


def test_from_bundle_refuses_int8_on_a_device_without_it(bundle):
    from edgecsp.backends.tensorrt.bundle import build_from_bundle

    with pytest.raises(EdgeCSPError, match="does not support precision 'int8'"):
        build_from_bundle(bundle, target="jetson-tx2")


def test_compile_for_jetson_writes_a_verified_bundle_that_loads(tmp_path):
    """The whole pipeline for `--target jetson` here: export, FP16 model, verify in ORT, artifact."""
    import edgecsp
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.shapes import default_val_dir
    from edgecsp.pipeline import CompileOptions, compile_artifact

    out = tmp_path / "jetson-fp16"
    final, manifest = compile_artifact(CompileOptions(target="jetson", precision="fp16", verify_images=16, out=out),
                                       progress=lambda line: None)
    assert final == out and manifest["backend"]["name"] == "tensorrt"
    assert manifest["engine"] == "model.fp16.onnx" and manifest["target"]["name"] == "jetson-orin-nano"
    assert manifest["accuracy"]["passed"] and manifest["accuracy"]["images"] == 16
    assert {"model.onnx", "model.fp16.onnx", "JETSON.md"} <= set(manifest["files"])
    image = resolve_dataset(default_val_dir())[0][0]
    with edgecsp.load(final) as p:
        dets = p(image)
        assert p.runner.describe()["runtime"] == "onnxruntime CPU"
    assert len(dets) == 1 and len(dets[0]) >= 1


@pytest.mark.tensorrt
def test_engine_builds_and_matches_the_qdq_model_on_gpu(request, tmp_path):
    from edgecsp.backends.tensorrt.backend import can_build_here

    ok, why = can_build_here()
    if not ok:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {why}")
    bundle = request.getfixturevalue("bundle")
    from edgecsp.backends.tensorrt.bundle import build_from_bundle
    from edgecsp.predictor import load

    target = json.loads((bundle / "manifest.json").read_text())["target"]["path"]
    final, manifest = build_from_bundle(bundle, target=target, out=tmp_path / "engine", verify_images=50,
                                        progress=lambda line: None)
    assert manifest["engine"] == "model.engine" and manifest["accuracy"]["device"]["passed"]
    with load(final) as p:
        assert p.runner.describe()["api"] in ("execute_async_v3", "execute_async_v2")
