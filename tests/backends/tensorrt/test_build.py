"""The TensorRT build plan per version and its one checked list of [build] options (no TensorRT needed)."""

from __future__ import annotations

import pytest

from edgecsp.errors import EdgeCSPError

# --------------------------------------------------------------------------------------------
# The on-device side, as far as it runs without TensorRT


def test_build_plan_per_tensorrt_version():
    from edgecsp.backends.tensorrt.build import EngineOptions, plan_build

    files = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8_qdq": "model.int8.qdq.onnx",
             "calibration_cache": "calibration.cache"}
    int8 = EngineOptions(precision="int8")
    assert plan_build(8, files, int8).__dict__ == {"onnx": "model.onnx", "strongly_typed": False,
                                                    "flags": ["INT8", "FP16"], "calibration_cache": "calibration.cache"}
    p10 = plan_build(10, files, int8)
    assert (p10.onnx, p10.strongly_typed, p10.flags, p10.calibration_cache) == ("model.int8.qdq.onnx", True, [], None)
    weak = plan_build(10, files, EngineOptions(precision="int8", strongly_typed=False))
    assert (weak.onnx, weak.strongly_typed, weak.flags) == ("model.int8.qdq.onnx", False, ["INT8", "FP16"])
    p11 = plan_build(11, files, EngineOptions(precision="int8", strongly_typed=False))  # 11 has no flags
    assert p11.strongly_typed and p11.flags == []
    assert plan_build(10, files, EngineOptions(precision="fp16")).onnx == "model.fp16.onnx"
    assert plan_build(8, files, EngineOptions(precision="fp16")).flags == ["FP16"]
    # With the FP16-typed Q/DQ model in the bundle, strongly typed builds take it (float parts FP16).
    typed = {**files, "int8_qdq_fp16": "model.int8.qdq.fp16.onnx"}
    assert plan_build(10, typed, int8).onnx == "model.int8.qdq.fp16.onnx"
    assert plan_build(10, typed, EngineOptions(precision="int8", strongly_typed=False)).onnx == "model.int8.qdq.onnx"
    assert plan_build(8, typed, int8).onnx == "model.onnx"
    with pytest.raises(EdgeCSPError, match="no fp16 model"):
        plan_build(10, {"fp32": "model.onnx"}, EngineOptions(precision="fp16"))


@pytest.mark.parametrize("old, new, message", [
    ("workspace_mb = 1024", "workspace_mbb = 1024", "[build]: unknown tensorrt build option 'workspace_mbb'; known: "),
    ("dla_core = -1", 'dla_core = "gpu"', "[build]: dla_core must be an integer, got 'gpu'"),
])
def test_a_misspelt_or_mistyped_build_option_is_refused_with_one_line(tmp_path, capsys, old, new, message):
    """TensorRT used to ignore a [build] key it did not know (a typo built with the default)."""
    from edgecsp import cli
    from edgecsp.compile import main
    from edgecsp.targets import TARGETS_DIR

    text = (TARGETS_DIR / "jetson-orin-nx.toml").read_text()
    assert old in text
    (tmp_path / "typo.toml").write_text(text.replace(old, new))
    assert cli.run(main, ["--target", str(tmp_path / "typo.toml")]) == 2  # refused before the demo model loads
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_one_list_of_tensorrt_build_options_for_bundle_trtexec_and_builder():
    from edgecsp.backends.tensorrt.build import EngineOptions, TensorRTBuildOptions
    from edgecsp.backends.tensorrt.bundle import _build_table, trtexec_line
    from edgecsp.targets import list_targets, load_target

    for name in list_targets():  # every shipped profile still loads, and its [build] is all known
        profile = load_target(name)
        if profile.backend == "tensorrt":
            assert _build_table(profile.build) == profile.build
    files = {"fp32": "model.onnx", "fp16": "model.fp16.onnx"}
    line = trtexec_line(files, "fp16", {"workspace_mb": 512, "dla_core": 0}, ["dynamic", 3, 64, 64], 10)
    assert "--memPoolSize=workspace:512" in line and "--useDLACore=0" in line and "--maxShapes=images:8x3x64x64" in line
    for bad in ({"worksapce_mb": 512}, {"max_batch": 0}):  # the bundle's table is checked where it is read
        with pytest.raises(EdgeCSPError, match="tensorrt build option 'worksapce_mb'|max_batch must be"):
            trtexec_line(files, "fp16", bad, [1, 3, 64, 64], 10)
        with pytest.raises(EdgeCSPError):
            EngineOptions.from_build_table("fp16", bad, 1)
    with pytest.raises(EdgeCSPError, match="unknown tensorrt build option 'nms_iou'"):
        _build_table({"recipe": None, "nms_iou": 0.4})
    assert set(TensorRTBuildOptions.names()) >= {"workspace_mb", "nms_max_detections"}
