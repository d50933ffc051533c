"""Jetson target: profiles and detection, TensorRT-rules Q/DQ, calibration cache, bundle, tegrastats.

Everything runs for real here (no TensorRT, no GPU): the Q/DQ model runs in ONNX Runtime on the
demo detector's validation images. Tests that need TensorRT and a CUDA GPU are marked
``tensorrt`` and skip with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
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

JETSONS = ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "jetson-agx-xavier",
           "jetson-tx2", "jetson-nano", "jetson-agx-thor"]

# Real tegrastats lines (public field reports), one per format generation.
TX2_JP4 = ("RAM 3276/7859MB (lfb 5x4MB) SWAP 1626/12122MB (cached 181MB) CPU [44%@1421,49%@2031,67%@2034,17%@1420,"
           "25%@1419,8%@1420] EMC_FREQ 1%@1866 GR3D_FREQ 0%@114 APE 150 MTS fg 1% bg 1% PLL@42.5C MCPU@42.5C "
           "PMIC@50C Tboard@38C GPU@39.5C BCPU@42.5C thermal@41.3C Tdiode@39.25C VDD_SYS_GPU 182/182 "
           "VDD_SYS_SOC 730/730 VDD_4V0_WIFI 0/0 VDD_IN 5297/5297 VDD_SYS_CPU 1917/1917 VDD_SYS_DDR 1241/1241")
NANO_JP4 = ("RAM 1766/3964MB (lfb 197x4MB) SWAP 0/2048MB (cached 0MB) CPU [24%@1224,15%@1224,13%@1224,10%@1224] "
            "EMC_FREQ 0% GR3D_FREQ 0% PLL@21C CPU@25C PMIC@100C GPU@23.5C AO@33.5C thermal@24.5C "
            "POM_5V_IN 2545/2547 POM_5V_GPU 0/0 POM_5V_CPU 549/529")
XAVIER_NX_JP5 = ("07-09-2024 13:31:31 RAM 3168/6851MB (lfb 2x4MB) SWAP 161/3426MB (cached 0MB) CPU [23%@1397,17%@1192,"
                 "16%@1190,13%@1190,23%@1190,10%@1190] EMC_FREQ 2%@204 GR3D_FREQ 0%@[114] VIC_FREQ 115 APE 150 AUX@45C "
                 "CPU@46.5C thermal@45.6C AO@45C GPU@45.5C PMIC@50C VDD_IN 2763mW/2846mW VDD_CPU_GPU_CV 650mW/670mW "
                 "VDD_SOC 650mW/711mW")
ORIN_NANO_JP6 = ("11-15-2024 08:38:09 RAM 6185/7620MB (lfb 8x2MB) SWAP 851/3810MB (cached 1MB) CPU [15%@729,11%@729,"
                 "14%@729,13%@729,11%@729,8%@729] EMC_FREQ 43%@2133 GR3D_FREQ 63%@[621] NVDEC off NVJPG off NVJPG1 off "
                 "VIC off OFA off APE 200 cpu@53.968C soc2@52.437C soc0@50.75C gpu@53.343C tj@53.968C soc1@51.656C "
                 "VDD_IN 12479mW/12479mW VDD_CPU_GPU_CV 4667mW/4667mW VDD_SOC 2817mW/2817mW")
AGX_ORIN_JP6 = ("04-11-2025 10:36:27 RAM 4321/62801MB (lfb 1759x4MB) SWAP 19/31400MB (cached 0MB) CPU [0%@729,0%@729,"
                "0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 "
                "GR3D_FREQ 0%@[0,0] VIC_FREQ 729 APE 174 CV0@-256C CPU@44.562C Tboard@32C SOC2@40.093C Tdiode@33C "
                "SOC0@41.093C CV1@-256C GPU@-256C tj@44.343C SOC1@41.25C CV2@-256C VDD_GPU_SOC 2340mW/2340mW "
                "VDD_CPU_CV 390mW/390mW VIN_SYS_5V0 4025mW/4025mW NC 0mW/0mW VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
ORIN_NANO_JP6_NOEMC = ("12-23-2024 22:54:11 RAM 3162/7620MB (lfb 4x2MB) SWAP 0/3810MB (cached 0MB) CPU [1%@729,0%@729,"
                       "0%@729,0%@729,off,off] GR3D_FREQ 1% cpu@62.843C soc2@61.968C soc0@60.625C gpu@61.687C "
                       "tj@62.843C soc1@61.687C VDD_IN 3913mW/3922mW VDD_CPU_GPU_CV 598mW/598 VDD_SOC 1238mW/1237mW")


# --------------------------------------------------------------------------------------------
# Profiles and detection


@pytest.mark.parametrize("name", JETSONS)
def test_jetson_profiles_hold_the_device_facts(name):
    from edgecsp.jetson.profiles import emc_gbps
    from edgecsp.targets import load_target

    p = load_target(name)
    hw = p.hardware
    assert p.backend == "tensorrt" and hw["family"] == "jetson"
    for key in ("compute_capability", "jetpack", "dla_cores", "memory_gb", "peak_dram_gbps", "emc_bus_width_bits",
                "emc_max_mhz", "models", "fast_int8"):
        assert key in hw, key
    # The peak bandwidth is what the bus width and the top EMC clock give (DDR: 2 transfers a clock).
    assert emc_gbps(100, hw["emc_max_mhz"], hw["emc_bus_width_bits"]) == pytest.approx(hw["peak_dram_gbps"], rel=0.01)
    assert p.default_precision == ("int8" if hw["fast_int8"] else "fp16")
    assert ("int8" in p.precisions) == hw["fast_int8"]
    for jetpack, trt in hw["jetpack"].items():
        assert {"4.6": "8.2", "5.1": "8.5", "6.1": "10.3", "6.2": "10.3", "7.0": "10.13"}[jetpack] == trt


def test_int8_on_a_gpu_without_int8_is_refused():
    from edgecsp.jetson.profiles import check_device_precision
    from edgecsp.targets import load_target

    for name in ("jetson-tx2", "jetson-nano"):
        p = load_target(name)
        with pytest.raises(EdgeCSPError, match="does not support precision 'int8'"):
            p.check_precision("int8")
        with pytest.raises(EdgeCSPError, match="no INT8 kernels.*fp16"):
            check_device_precision(p, "int8")
    nano = load_target("jetson-orin-nano")
    with pytest.raises(EdgeCSPError, match="0 DLA core"):
        check_device_precision(nano, "int8", dla_core=0)
    with pytest.raises(EdgeCSPError, match="DLA runs FP16 or INT8 only"):
        check_device_precision(load_target("jetson-agx-orin"), "fp32", dla_core=0)
    check_device_precision(load_target("jetson-agx-orin"), "int8", dla_core=1)


def _fake_jetson(root: Path, model: str, compatible: list[str], release: str | None) -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    (root / "proc/device-tree/compatible").write_bytes(b"".join(c.encode() + b"\x00" for c in compatible))
    if release:
        (root / "etc").mkdir()
        (root / "etc/nv_tegra_release").write_text(release)
    return root


@pytest.mark.parametrize("model,compatible,expected", [
    ("NVIDIA Jetson AGX Orin Developer Kit", ["nvidia,p3737-0000+p3701-0005", "nvidia,tegra234"], "jetson-agx-orin"),
    ("NVIDIA Jetson Orin Nano Developer Kit", ["nvidia,p3768-0000+p3767-0005", "nvidia,tegra234"], "jetson-orin-nano"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit", ["nvidia,p3767-0000", "nvidia,tegra234"],
     "jetson-orin-nx"),
    ("Jetson-AGX", ["nvidia,p2972-0000", "nvidia,galen", "nvidia,tegra194"], "jetson-agx-xavier"),
    ("NVIDIA Jetson Xavier NX Developer Kit", ["nvidia,p3509-0000+p3668-0001", "nvidia,tegra194"], "jetson-xavier-nx"),
    ("quill", ["nvidia,p2771-0000", "nvidia,tegra186"], "jetson-tx2"),
    ("NVIDIA Jetson Nano Developer Kit", ["nvidia,p3449-0000-b00+p3448-0002-b00", "nvidia,tegra210"], "jetson-nano"),
    ("", ["nvidia,p3768-0000+p3767-0005", "nvidia,tegra234"], "jetson-orin-nano"),  # board id fallback
])
def test_detects_the_jetson_it_runs_on(tmp_path, monkeypatch, model, compatible, expected):
    from edgecsp.jetson.profiles import detect_target
    from edgecsp.targets import load_target

    root = _fake_jetson(tmp_path, model, compatible,
                        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: x\n")
    assert detect_target(root) == expected
    monkeypatch.setenv("EDGECSP_JETSON_ROOT", str(root))
    assert load_target("jetson").name == expected  # the alias picks the device it runs on


def test_jetson_alias_defaults_to_orin_nano_off_device(tmp_path, monkeypatch):
    from edgecsp.jetson.profiles import read_jetson
    from edgecsp.targets import load_target

    monkeypatch.setenv("EDGECSP_JETSON_ROOT", str(tmp_path))  # no device tree, no nv_tegra_release
    assert read_jetson(tmp_path) is None
    assert load_target("jetson").name == "jetson-orin-nano"


def test_unknown_jetson_model_is_one_clear_line(tmp_path, monkeypatch):
    from edgecsp.targets import load_target

    root = _fake_jetson(tmp_path, "NVIDIA Jetson Imaginary Board", ["nvidia,p9999", "nvidia,tegra999"],
                        "# R99 (release), REVISION: 1.0\n")
    monkeypatch.setenv("EDGECSP_JETSON_ROOT", str(root))
    with pytest.raises(EdgeCSPError) as err:
        load_target("jetson")
    msg = str(err.value)
    assert "unknown Jetson model 'NVIDIA Jetson Imaginary Board'" in msg and "--target" in msg and "\n" not in msg


def test_l4t_release_maps_to_jetpack(tmp_path):
    from edgecsp.jetson.profiles import jetpack_of_l4t, read_jetson

    assert [jetpack_of_l4t(v) for v in ("32.7.4", "35.4.1", "36.3.0", "36.4.0", "36.4.3", "38.2.0", "")] == \
        ["4.6", "5.1", "6.0", "6.1", "6.2", "7.0", ""]
    root = _fake_jetson(tmp_path, "NVIDIA Jetson AGX Orin Developer Kit", ["nvidia,tegra234"],
                        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: x\n")
    info = read_jetson(root)
    assert info is not None and info.l4t == "35.4.1" and info.jetpack == "5.1"


# --------------------------------------------------------------------------------------------
# tegrastats


def test_tegrastats_jetpack4_tx2_and_nano():
    from edgecsp.jetson.tegrastats import parse_tegrastats

    s = parse_tegrastats(TX2_JP4)
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb) == (3276, 7859, 1626)
    assert s.cpu_loads == [44, 49, 67, 17, 25, 8] and s.cpu_freqs_mhz[1] == 2031
    assert (s.emc_util, s.emc_freq_mhz, s.gpu_util, s.gpu_freq_mhz) == (1, 1866, 0, 114)
    assert s.temperatures["BCPU"] == 42.5 and s.temperatures["Tdiode"] == 39.25
    assert s.rails["VDD_SYS_GPU"].current_mw == 182 and s.rails["VDD_SYS_DDR"].average_mw == 1241
    assert s.power_mw == 5297 and "RAM" not in s.rails and "SWAP" not in s.rails
    # TX2: 128-bit LPDDR4 -> 1% of 1866 MHz x 2 x 16 bytes.
    assert s.emc_gbps(128) == pytest.approx(0.01 * 1866e6 * 2 * 16 / 1e9)

    n = parse_tegrastats(NANO_JP4)
    assert n.emc_util == 0 and n.emc_freq_mhz is None and n.emc_gbps(64) is None  # no clock printed
    assert n.rails["POM_5V_IN"].current_mw == 2545 and n.rails["POM_5V_IN"].average_mw == 2547
    assert n.power_mw == 2545 and n.temperatures["GPU"] == 23.5 and len(n.cpu_loads) == 4


def test_tegrastats_jetpack5_xavier_nx():
    from edgecsp.jetson.tegrastats import parse_tegrastats

    s = parse_tegrastats(XAVIER_NX_JP5)
    assert s.timestamp == "07-09-2024 13:31:31"
    assert (s.emc_util, s.emc_freq_mhz, s.gpu_util, s.gpu_freq_mhz) == (2, 204, 0, 114)
    assert s.rails["VDD_IN"].current_mw == 2763 and s.rails["VDD_IN"].average_mw == 2846
    assert s.rails["VDD_CPU_GPU_CV"].average_mw == 670 and s.temperatures["AUX"] == 45


def test_tegrastats_jetpack6_orin():
    from edgecsp.jetson.tegrastats import parse_tegrastats

    s = parse_tegrastats(ORIN_NANO_JP6)
    assert (s.emc_util, s.emc_freq_mhz, s.gpu_util, s.gpu_freq_mhz) == (43, 2133, 63, 621)
    assert s.power_mw == 12479 and s.temperatures["tj"] == 53.968
    # Orin Nano: 128-bit LPDDR5 -> 43% of 2133 MHz x 2 x 16 bytes = 29.35 GB/s.
    assert s.emc_gbps(128) == pytest.approx(29.35, abs=0.01)

    agx = parse_tegrastats(AGX_ORIN_JP6)
    assert agx.gpu_freqs_mhz == [0, 0] and len(agx.cpu_loads) == 12
    assert "GPU" not in agx.temperatures and "CV0" not in agx.temperatures  # -256C: sensor absent
    assert agx.power_mw == 4025 and agx.rails["VDD_GPU_SOC"].current_mw == 2340

    quirky = parse_tegrastats(ORIN_NANO_JP6_NOEMC)  # no EMC field, offline cores, a rail without its unit
    assert quirky.emc_util is None and quirky.cpu_loads[-2:] == [None, None] and quirky.cpu_load == 0.25
    assert quirky.rails["VDD_CPU_GPU_CV"].average_mw == 598 and quirky.gpu_util == 1 and quirky.gpu_freq_mhz is None


def test_tegrastats_rejects_other_text():
    from edgecsp.jetson.tegrastats import parse_tegrastats

    with pytest.raises(EdgeCSPError, match="not a tegrastats line"):
        parse_tegrastats("Please run as root to see all stats")


def test_tegrastats_monitor_runs_it_in_the_background(tmp_path):
    from edgecsp.jetson.tegrastats import TegrastatsMonitor

    args = tmp_path / "args"
    fake = tmp_path / "tegrastats"
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {args}\necho 'a warning line'\n"
                    f"while true; do echo '{ORIN_NANO_JP6}'; sleep 0.02; done\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with TegrastatsMonitor(interval_ms=20, executable=str(fake), bus_width_bits=128) as mon:
        assert mon.available
        assert mon.wait_for_samples(3, timeout_s=10)
        proc = mon._proc
    assert proc is not None and proc.poll() is not None  # stopped on exit
    assert args.read_text().split() == ["--interval", "20"]
    summary = mon.summary()
    assert summary["samples"] >= 3 and mon.skipped_lines == 1
    assert summary["gpu_util_mean"] == 63 and summary["emc_gbps_mean"] == pytest.approx(29.35, abs=0.01)
    assert summary["power_mw_mean"] == 12479 and summary["temperature_max_c"]["tj"] == 53.968

    with TegrastatsMonitor(executable="surely-not-tegrastats-here") as none:
        pass
    assert not none.available and none.samples == [] and none.summary()["samples"] == 0


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
    assert cli.run(main, ["--target", str(tmp_path / "typo.toml"), "--model", str(tmp_path / "none.safetensors")]) == 2
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


def test_engine_from_another_tensorrt_or_gpu_is_refused_with_the_rebuild_line():
    from edgecsp.backends.tensorrt.runner import check_engine_compatible

    built = {"tensorrt_version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    here = {"gpu": "Xavier", "compute_capability": "7.2"}
    with pytest.raises(EdgeCSPError, match="built by TensorRT 10.3.0, this machine has TensorRT 8.5.2.*--from-bundle"):
        check_engine_compatible(built, "8.5.2", here)
    with pytest.raises(EdgeCSPError, match=r"built for Orin \(sm_87\), this GPU is Xavier \(sm_72\).*--from-bundle"):
        check_engine_compatible(built, "10.3.0", here)
    check_engine_compatible(built, "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"})


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
def test_cuda_wrapper_moves_data_through_pinned_memory_on_gpu():
    """The typed CUDA wrapper on a real GPU: pinned host -> device -> pinned host on a stream."""
    from edgecsp.backends.tensorrt.runner import CudaRuntime, gpu_facts, load_cuda_module, pinned_array

    if load_cuda_module() is None:
        pytest.skip("needs cuda-python (pip install cuda-bindings)")
    facts = gpu_facts(0)
    if facts is None:
        pytest.skip("needs a CUDA GPU")
    cuda = CudaRuntime.load()
    cuda.set_device(0)
    shape, dtype = (4, 3, 320, 320), np.dtype(np.float32)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    src_ptr, dst_ptr, dev = cuda.malloc_host(nbytes), cuda.malloc_host(nbytes), cuda.malloc(nbytes)
    stream = cuda.stream_create()
    try:
        src, dst = pinned_array(src_ptr, shape, dtype), pinned_array(dst_ptr, shape, dtype)
        src[...] = np.random.default_rng(1).random(shape, dtype=np.float32)
        dst[...] = 0
        cuda.memcpy_htod_async(dev, src_ptr, nbytes, stream)
        cuda.memcpy_dtoh_async(dst_ptr, dev, nbytes, stream)
        cuda.stream_synchronize(stream)
        assert np.array_equal(src, dst)
        assert isinstance(cuda.stream_handle(stream), int)
        assert facts["compute_capability"].count(".") == 1 and facts["cuda_runtime"] > 0
    finally:
        cuda.stream_destroy(stream)
        cuda.free(dev)
        cuda.free_host(src_ptr)
        cuda.free_host(dst_ptr)


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
