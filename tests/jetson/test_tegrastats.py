"""tegrastats: every format generation's lines parsed, other text refused, the monitor in the background."""

from __future__ import annotations

import stat

import pytest

from edgecsp.errors import EdgeCSPError

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
