"""How busy the machine was while something was measured: other processes on the same cores
skew every figure (and ratios between figures measured at different moments most).

``LoadMonitor`` samples /proc/stat around (and during) a measurement and subtracts this process's
own CPU time, so what it reports is the share of the machine's CPUs that *other* processes used.
The 1-minute load average is recorded too (it counts this process as well). Off Linux, only the
load average (where the OS has one) is recorded.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

# Other processes using more than this share of the CPUs (or a load average above the CPU count)
# makes a run "busy": its figures are flagged and a warning printed.
BUSY_FRACTION = 0.25
SAMPLE_S = 0.25


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, or None without /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user/nice
    return total - idle, total


def _own_jiffies() -> float:
    t = os.times()
    return (t.user + t.system + t.children_user + t.children_system) * os.sysconf("SC_CLK_TCK")


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Window:
    """Busy share of others over one interval of /proc/stat."""

    def __init__(self) -> None:
        self.cpu, self.own = _cpu_jiffies(), _own_jiffies()

    def others(self) -> float | None:
        now, own = _cpu_jiffies(), _own_jiffies()
        if self.cpu is None or now is None or now[1] <= self.cpu[1]:
            return None
        busy = (now[0] - self.cpu[0]) - (own - self.own)
        return round(min(1.0, max(0.0, busy / (now[1] - self.cpu[1]))), 3)


def sample_before(seconds: float = SAMPLE_S) -> dict[str, Any]:
    """The load just before a run: others' busy share over ``seconds`` of idling here."""
    window = _Window()
    time.sleep(seconds)
    return {"others_busy_fraction": window.others(), "load_average_1m": _loadavg()}


class LoadMonitor:
    """``with LoadMonitor() as load: ...`` then ``load.result()``: before / during / verdict."""

    def __init__(self, sample_s: float = SAMPLE_S, before: bool = True):
        self.sample_s, self.do_before = sample_s, before
        self.before: dict[str, Any] = {}
        self.samples: list[float] = []
        self.load_max: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._whole: _Window | None = None

    def __enter__(self) -> LoadMonitor:
        if self.do_before:
            self.before = sample_before(self.sample_s)
        self._whole = _Window()
        self._thread = threading.Thread(target=self._sample, name="edgecsp-load", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            window = _Window()
            if self._stop.wait(self.sample_s):
                return
            value = window.others()
            if value is not None:
                self.samples.append(value)
            la = _loadavg()
            if la is not None:
                self.load_max = la if self.load_max is None else max(self.load_max, la)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.during = self._whole.others() if self._whole is not None else None

    def result(self) -> dict[str, Any]:
        cpus = _cpus()
        during = getattr(self, "during", None)
        peak = max(self.samples) if self.samples else None
        la = [v for v in (self.before.get("load_average_1m"), self.load_max, _loadavg()) if v is not None]
        reasons = []
        for when, value in (("before", self.before.get("others_busy_fraction")), ("during", during)):
            if value is not None and value > BUSY_FRACTION:
                reasons.append(f"other processes used {value:.0%} of the CPUs {when} the run")
        measured = self.before.get("others_busy_fraction") is not None or during is not None
        # The load average counts this run's own threads and lags a minute behind: only where the
        # other processes' CPU time cannot be read does it decide.
        if not measured and la and max(la) > cpus:
            reasons.append(f"load average {max(la)} on {cpus} CPUs")
        return {
            "cpus": cpus,
            "before": self.before or None,
            "during": {"others_busy_fraction": during, "others_busy_peak": peak,
                       "load_average_1m_max": max(la) if la else None},
            "busy": bool(reasons),
            "busy_reasons": reasons,
            "threshold_others_busy_fraction": BUSY_FRACTION,
        }


def warning(load: dict[str, Any]) -> str | None:
    """One line for stderr when the machine was busy, else None."""
    if not load.get("busy"):
        return None
    return ("warning: the machine was busy (" + "; ".join(load["busy_reasons"]) +
            "): figures are lower and noisier than on a quiet machine; compare ratios measured in the same run")
