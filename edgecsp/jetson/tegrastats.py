"""tegrastats: parse its lines, and sample it in the background while a benchmark runs.

One parser for the formats of every JetPack release seen in the field:
  JetPack 4 (TX2, Nano, Xavier):  ``CPU [24%@1224,...] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 ...
                                   VDD_IN 1649/1649`` or ``POM_5V_IN 2545/2547`` (mW, no unit)
  JetPack 5 (Xavier, Orin):       optional ``MM-DD-YYYY HH:MM:SS`` prefix, ``GR3D_FREQ 0%@[114]``,
                                   ``VDD_IN 2763mW/2846mW``
  JetPack 6 (Orin):               ``GR3D_FREQ 0%@[0,0]`` (one clock per GPC), ``EMC_FREQ 3%@2133``,
                                   rails such as ``VDD_GPU_SOC``/``VIN_SYS_5V0``, sensors at -256C
                                   when absent; some builds drop the ``@freq`` parts or a unit.
Fields a line lacks are None (tegrastats omits what the module lacks or a non-root user can't read).

EMC load is a percentage of the memory controller's current clock, not bandwidth: GB/s =
load x clock x 2 (DDR) x bus width / 8 (``TegraSample.emc_gbps``), bus width from the profile.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field

from edgecsp.errors import EdgeCSPError

_TIME = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s+")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB(?: \(lfb (\d+)x(\d+)MB\))?")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB(?: \(cached (\d+)MB\))?")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?", re.IGNORECASE)  # "cpu [17%,13%]@408" on old L4T
_EMC = re.compile(r"\bEMC(?:_FREQ)? (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@(\[[\d,]*\]|\d+))?")
_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w/])")
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "MTS"}
# Whole-module input power, by name across releases (first present wins).
INPUT_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VIN")
ABSENT_SENSOR_C = -256.0  # what tegrastats prints for a sensor that is not there


@dataclass
class Rail:
    current_mw: int
    average_mw: int


@dataclass
class TegraSample:
    timestamp: str | None = None
    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    swap_used_mb: int | None = None
    swap_total_mb: int | None = None
    cpu_loads: list[float | None] = field(default_factory=list)  # per core, None = core off
    cpu_freqs_mhz: list[int | None] = field(default_factory=list)
    emc_util: float | None = None  # % of the current EMC clock
    emc_freq_mhz: int | None = None
    gpu_util: float | None = None  # GR3D %, of the current GPU clock
    gpu_freq_mhz: int | None = None  # the highest GPC clock
    gpu_freqs_mhz: list[int] = field(default_factory=list)
    temperatures: dict[str, float] = field(default_factory=dict)  # sensor -> °C (absent sensors left out)
    rails: dict[str, Rail] = field(default_factory=dict)  # VDD_*/POM_*/VIN_* -> current/average mW
    raw: str = ""

    @property
    def cpu_load(self) -> float | None:
        """Mean load of the online cores."""
        on = [x for x in self.cpu_loads if x is not None]
        return sum(on) / len(on) if on else None

    @property
    def power_mw(self) -> int | None:
        """Whole-module input power (VDD_IN or its name on this module), current mW."""
        for name in INPUT_RAILS:
            if name in self.rails:
                return self.rails[name].current_mw
        return None

    def emc_gbps(self, bus_width_bits: int) -> float | None:
        if self.emc_util is None or self.emc_freq_mhz is None:
            return None
        from edgecsp.jetson.profiles import emc_gbps

        return emc_gbps(self.emc_util, self.emc_freq_mhz, bus_width_bits)


def parse_tegrastats(line: str) -> TegraSample:
    """One tegrastats line -> TegraSample; EdgeCSPError for a line that is not tegrastats output."""
    s = TegraSample(raw=line.rstrip("\n"))
    text = line.strip()
    m = _TIME.match(text)
    if m:
        s.timestamp = m.group(1)
    m = _RAM.search(text)
    if m:
        s.ram_used_mb, s.ram_total_mb = int(m.group(1)), int(m.group(2))
    m = _SWAP.search(text)
    if m:
        s.swap_used_mb, s.swap_total_mb = int(m.group(1)), int(m.group(2))
    m = _CPU.search(text)
    if m:
        shared = int(m.group(2)) if m.group(2) else None
        for core in m.group(1).split(","):
            core = core.strip()
            if not core or core == "off":
                s.cpu_loads.append(None)
                s.cpu_freqs_mhz.append(None)
                continue
            load, _, freq = core.partition("@")
            s.cpu_loads.append(float(load.rstrip("%")))
            s.cpu_freqs_mhz.append(int(freq) if freq else shared)
    m = _EMC.search(text)
    if m:
        s.emc_util = float(m.group(1))
        s.emc_freq_mhz = int(m.group(2)) if m.group(2) else None
    m = _GR3D.search(text)
    if m:
        s.gpu_util = float(m.group(1))
        if m.group(2):
            s.gpu_freqs_mhz = [int(x) for x in re.findall(r"\d+", m.group(2))]
            s.gpu_freq_mhz = max(s.gpu_freqs_mhz) if s.gpu_freqs_mhz else None
    for name, value in _TEMP.findall(text):
        if float(value) > ABSENT_SENSOR_C:
            s.temperatures[name] = float(value)
    for name, cur, avg in _RAIL.findall(text):
        if name not in _NOT_RAILS:
            s.rails[name] = Rail(int(cur), int(avg))
    if s.ram_used_mb is None and s.gpu_util is None and not s.rails:
        raise EdgeCSPError(f"not a tegrastats line: {text[:80]!r}; expected 'RAM used/totalMB ... GR3D_FREQ ...'")
    return s


class TegrastatsMonitor:
    """Runs ``tegrastats --interval N`` in the background and collects samples.

    Where tegrastats does not exist (not a Jetson) it collects nothing: ``available`` is False
    and ``samples`` stays empty, so a benchmark can always wrap itself in one.

        with TegrastatsMonitor(interval_ms=100, bus_width_bits=128) as mon:
            run_benchmark()
        mon.summary()
    """

    def __init__(self, interval_ms: int = 100, executable: str = "tegrastats", bus_width_bits: int | None = None):
        if interval_ms < 1:
            raise EdgeCSPError(f"tegrastats interval must be at least 1 ms, got {interval_ms}")
        self.interval_ms = interval_ms
        self.executable = shutil.which(executable)
        self.bus_width_bits = bus_width_bits
        self.samples: list[TegraSample] = []
        self.skipped_lines = 0
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return self.executable is not None

    def start(self) -> TegrastatsMonitor:
        if self.executable is None or self._proc is not None:
            return self
        self._proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                      stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if not line.strip():
                continue
            try:
                sample = parse_tegrastats(line)
            except EdgeCSPError:
                self.skipped_lines += 1  # e.g. a warning tegrastats prints when not run as root
                continue
            with self._lock:
                self.samples.append(sample)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TegrastatsMonitor:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_for_samples(self, n: int, timeout_s: float = 5.0) -> bool:
        """Block until ``n`` samples arrived (True) or the timeout passed (False)."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with self._lock:
                if len(self.samples) >= n:
                    return True
            time.sleep(0.01)
        return False

    def summary(self) -> dict:
        """Means (and peaks) over the samples: GPU load, EMC load and GB/s, power, RAM, temperatures."""
        with self._lock:
            samples = list(self.samples)

        def mean(values: list[float | int | None]) -> float | None:
            vals = [float(v) for v in values if v is not None]
            return round(sum(vals) / len(vals), 3) if vals else None

        out: dict = {"samples": len(samples), "interval_ms": self.interval_ms, "available": self.available,
                     "gpu_util_mean": mean([s.gpu_util for s in samples]),
                     "gpu_freq_mhz_mean": mean([s.gpu_freq_mhz for s in samples]),
                     "emc_util_mean": mean([s.emc_util for s in samples]),
                     "cpu_load_mean": mean([s.cpu_load for s in samples]),
                     "power_mw_mean": mean([s.power_mw for s in samples]),
                     "ram_used_mb_max": max((s.ram_used_mb for s in samples if s.ram_used_mb is not None), default=None)}
        if self.bus_width_bits:
            out["emc_gbps_mean"] = mean([s.emc_gbps(self.bus_width_bits) for s in samples])
        temps: dict[str, float] = {}
        for s in samples:
            for k, v in s.temperatures.items():
                temps[k] = max(v, temps.get(k, v))
        out["temperature_max_c"] = temps
        rails: dict[str, list[int]] = {}
        for s in samples:
            for k, r in s.rails.items():
                rails.setdefault(k, []).append(r.current_mw)
        out["rails_mw_mean"] = {k: mean(list(v)) for k, v in rails.items()}
        return out
