"""Jetson profiles and detection: the device facts, the detected model, JetPack from the L4T release."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecsp.errors import EdgeCSPError

JETSONS = ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx", "jetson-agx-xavier",
           "jetson-tx2", "jetson-nano", "jetson-agx-thor"]


def _fake_jetson(root: Path, model: str, compatible: list[str], release: str | None) -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(model.encode() + b"\x00")
    (root / "proc/device-tree/compatible").write_bytes(b"".join(c.encode() + b"\x00" for c in compatible))
    if release:
        (root / "etc").mkdir()
        (root / "etc/nv_tegra_release").write_text(release)
    return root


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
