"""Measured memory traffic from hardware counters, where the platform offers them.

  Jetson  tegrastats' EMC load (% of the memory controller's clock) and clock, sampled during
          the run: GB/s = load x clock x 2 (DDR) x bus width / 8, the bus width from the target
          profile's ``[hardware] emc_bus_width_bits`` (edgecsp.jetson.tegrastats).
  Linux   ``perf stat -a`` on the Intel integrated memory controller's CAS counters
          (uncore_imc*/cas_count_read,cas_count_write/ or the client parts' data_read/data_write),
          bytes over the run's wall time.
Otherwise the figure is None with the reason (no perf, no memory-controller PMU exposed — the
usual case in a VM —, not permitted by kernel.perf_event_paranoid, an AMD or Arm host).

Both are system-wide: traffic from other processes on the machine is counted too.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PMU_DIR = Path("/sys/bus/event_source/devices")
# (read event, write event) pairs per Intel IMC PMU flavour, first found wins.
IMC_EVENTS = (("cas_count_read", "cas_count_write"), ("data_read", "data_write"),
              ("data_reads", "data_writes"))
_UNIT_BYTES = {"mib": 2 ** 20, "mb": 1e6, "kib": 1024, "kb": 1e3, "gib": 2 ** 30, "gb": 1e9, "bytes": 1, "b": 1}


class MemoryCounters:
    """``start()`` before the measured phase, ``stop()`` after it; then ``result`` is the report entry."""

    source = "none"

    def __init__(self) -> None:
        self.result: dict[str, Any] = {"measured_gbs": None, "reason": "hardware counters were turned off",
                                       "source": "none"}

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.result = self._stop()

    def _stop(self) -> dict[str, Any]:
        return dict(self.result)


class Unavailable(MemoryCounters):
    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def _stop(self) -> dict[str, Any]:
        return {"measured_gbs": None, "reason": self.reason, "source": "unavailable"}


class TegrastatsCounters(MemoryCounters):
    source = "tegrastats EMC"

    def __init__(self, interval_ms: int, bus_width_bits: int | None):
        from edgecsp.jetson.tegrastats import TegrastatsMonitor

        super().__init__()
        self.bus_width_bits = bus_width_bits
        self.monitor = TegrastatsMonitor(interval_ms=interval_ms, bus_width_bits=bus_width_bits)

    def start(self) -> None:
        self.monitor.start()

    def _stop(self) -> dict[str, Any]:
        self.monitor.stop()
        s = self.monitor.summary()
        out: dict[str, Any] = {"source": self.source, "samples": s["samples"], "emc_util_pct": s["emc_util_mean"],
                               "emc_freq_mhz": _mean([x.emc_freq_mhz for x in self.monitor.samples]),
                               "measured_gbs": None, "reason": None}
        if not s["samples"]:
            out["reason"] = "tegrastats gave no samples during the run (run longer, or as root)"
        elif s["emc_util_mean"] is None:
            out["reason"] = "tegrastats reported no EMC load on this module"
        elif not self.bus_width_bits:
            out["reason"] = "the target profile has no [hardware] emc_bus_width_bits to turn EMC load into GB/s"
        else:
            out["measured_gbs"] = s.get("emc_gbps_mean")
            out["emc_bus_width_bits"] = self.bus_width_bits
        return out


def _mean(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(sum(vals) / len(vals), 1) if vals else None


class PerfIMCCounters(MemoryCounters):
    source = "perf uncore IMC"

    def __init__(self, events: list[str], perf: str = "perf"):
        super().__init__()
        self.events = events
        self.perf = perf
        self._proc: subprocess.Popen[str] | None = None
        self._t0 = 0.0

    def start(self) -> None:
        self._proc = subprocess.Popen([self.perf, "stat", "-a", "-x", ",", "-e", ",".join(self.events)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.05)  # let perf open its counters before the measured phase starts
        self._t0 = time.perf_counter()

    def _stop(self) -> dict[str, Any]:
        if self._proc is None:
            return {"measured_gbs": None, "reason": "perf was not started", "source": self.source}
        seconds = time.perf_counter() - self._t0
        self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        self._proc = None
        total, problem = parse_perf_stat(err)
        if problem:
            return {"measured_gbs": None, "reason": f"perf: {problem}", "source": self.source}
        return {"measured_gbs": round(total / seconds / 1e9, 3), "reason": None, "source": self.source,
                "bytes": int(total), "seconds": round(seconds, 3), "events": self.events, "system_wide": True}


def parse_perf_stat(text: str) -> tuple[float, str | None]:
    """Sum of the byte counts in ``perf stat -x,`` output, and a problem line if any event failed.

    Fields: value, unit, event, ... Unit-less IMC counts are 64-byte cache lines.
    """
    total = 0.0
    seen = 0
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or not parts[2].strip():
            continue
        value, unit, event = parts[0].strip(), parts[1].strip().lower(), parts[2].strip()
        if value.startswith("<"):  # <not supported> / <not counted>
            return 0.0, f"event {event} {value}"
        try:
            v = float(value)
        except ValueError:
            continue
        total += v * _UNIT_BYTES.get(unit, 64 if not unit else 1)
        seen += 1
    if not seen:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")
        return 0.0, f"no counts ({first[:160]})"
    return total, None


def imc_events(pmu_dir: Path = PMU_DIR) -> tuple[list[str], str | None]:
    """perf event names for the memory controllers here, or [] and why not."""
    if not pmu_dir.is_dir():
        return [], f"{pmu_dir} does not exist (no perf_event support in this kernel)"
    pmus = sorted(p.name for p in pmu_dir.iterdir())
    imcs = [p for p in pmus if p.startswith("uncore_imc")]
    for read, write in IMC_EVENTS:
        events = [f"{p}/{e}/" for p in imcs for e in (read, write)
                  if (pmu_dir / p / "events" / e).exists()]
        if events:
            return events, None
    if any(p.startswith(("amd_umc", "amd_df")) for p in pmus):
        return [], "AMD data-fabric/UMC counters are present but edgecsp reads only Intel IMC events"
    if imcs:
        return [], f"{', '.join(imcs)} expose no CAS/data read-write events"
    return [], (f"this kernel exposes no memory-controller PMU (perf sees only {', '.join(pmus) or 'nothing'}); "
                "usual inside a VM")


def open_counters(hardware: dict | None = None, benchmark: dict | None = None, pmu_dir: Path = PMU_DIR,
                  perf: str | None = None) -> MemoryCounters:
    """The best counter source here (see the module docstring)."""
    hardware, benchmark = hardware or {}, benchmark or {}
    from edgecsp.bench.machine import jetson_model

    if jetson_model() is not None or hardware.get("family") == "jetson":
        if shutil.which("tegrastats") is None:
            return Unavailable("tegrastats is not on PATH (it ships with L4T/JetPack)")
        return TegrastatsCounters(int(benchmark.get("tegrastats_interval_ms", 100)), hardware.get("emc_bus_width_bits"))
    if not sys.platform.startswith("linux"):
        return Unavailable(f"memory-controller counters are read on Linux (perf) and Jetson only, this is {sys.platform}")
    perf = perf or shutil.which("perf")
    if perf is None:
        return Unavailable("perf is not installed (apt-get install linux-tools-$(uname -r))")
    events, why = imc_events(pmu_dir)
    if not events:
        return Unavailable(why or "no memory-controller events")
    try:
        paranoid = int(Path("/proc/sys/kernel/perf_event_paranoid").read_text())
    except (OSError, ValueError):
        paranoid = 2
    if paranoid > 0 and os.geteuid() != 0:
        return Unavailable(f"kernel.perf_event_paranoid is {paranoid}: system-wide uncore events need 0 or less, "
                           "or CAP_PERFMON (sudo sysctl kernel.perf_event_paranoid=0)")
    return PerfIMCCounters(events, perf)
