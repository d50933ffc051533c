"""Memory-controller counters: perf output parsing and controller discovery."""

from __future__ import annotations

import pytest

from edgecsp.bench import counters


def test_perf_output_parsing():
    text = ("# started on ...\n\n"
            "1536.25,MiB,uncore_imc_0/cas_count_read/,2000000000,100.00,,\n"
            "512.00,MiB,uncore_imc_0/cas_count_write/,2000000000,100.00,,\n"
            "1000,,uncore_imc_free_running_0/data_read/,2000000000,100.00,,\n")
    total, problem = counters.parse_perf_stat(text)
    assert problem is None and total == pytest.approx(2048.25 * 2 ** 20 + 64_000)
    _, problem = counters.parse_perf_stat("<not supported>,,uncore_imc_0/cas_count_read/,0,100.00,,\n")
    assert "not supported" in problem
    _, problem = counters.parse_perf_stat("Error: access denied\n")
    assert "no counts" in problem


def test_memory_controller_discovery(tmp_path):
    intel = tmp_path / "intel"
    for pmu in ("uncore_imc_0", "uncore_imc_1"):
        (intel / pmu / "events").mkdir(parents=True)
        (intel / pmu / "events" / "cas_count_read").write_text("event=0x04,umask=0x03")
        (intel / pmu / "events" / "cas_count_write").write_text("event=0x04,umask=0x0c")
    (intel / "cpu").mkdir()
    events, why = counters.imc_events(intel)
    assert why is None and events == ["uncore_imc_0/cas_count_read/", "uncore_imc_0/cas_count_write/",
                                      "uncore_imc_1/cas_count_read/", "uncore_imc_1/cas_count_write/"]
    vm = tmp_path / "vm"
    for pmu in ("software", "tracepoint"):
        (vm / pmu).mkdir(parents=True)
    events, why = counters.imc_events(vm)
    assert events == [] and "no memory-controller PMU" in why and "software" in why
    amd = tmp_path / "amd"
    (amd / "amd_df").mkdir(parents=True)
    assert "AMD" in counters.imc_events(amd)[1]
    c = counters.open_counters(pmu_dir=vm, perf="/usr/bin/true")
    c.start()
    c.stop()
    assert c.result["measured_gbs"] is None and "no memory-controller PMU" in c.result["reason"]
