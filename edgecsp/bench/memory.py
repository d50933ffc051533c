"""Memory figures: the process's peak resident memory over a window, artifact size on disk,
and what the backend itself reports.

On Linux the kernel's peak-RSS mark (VmHWM) is reset at the start of each window (writing 5 to
/proc/self/clear_refs), so each thing measured in one process gets its own peak at no cost to the
run. Where that is refused, a 20 Hz psutil sampler stands in (it can miss a short spike).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecsp.backends.base import Runner, process_rss

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker reads it
    from typing_extensions import Self

MB = 1024 * 1024


def current_rss() -> int:
    """Resident bytes of this process: psutil where installed (host extra), else /proc (Linux, Jetson)."""
    return process_rss()


def _read_hwm() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """``with PeakRSS() as p: ...`` then ``p.peak``, ``p.before`` (bytes) and ``p.method``."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.before = self.peak = 0
        self.method = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        self.before = current_rss()
        if _reset_hwm() and _read_hwm() is not None:
            self.method = "kernel VmHWM, reset per measurement"
        else:
            self.method = f"psutil RSS sampled every {self.interval_s * 1000:.0f} ms"
            self.peak = self.before
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, current_rss())

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss())
        else:
            self.peak = max(_read_hwm() or 0, current_rss())

    def as_dict(self) -> dict[str, Any]:
        return {"peak_rss_mb": round(self.peak / MB, 1), "rss_before_mb": round(self.before / MB, 1),
                "rss_growth_mb": round(max(0, self.peak - self.before) / MB, 1), "method": self.method}


def artifact_bytes(root: str | os.PathLike, manifest: dict | None = None) -> int:
    """Bytes on disk of the artifact's files (those its manifest lists, else every file)."""
    root = Path(root)
    if manifest and manifest.get("files"):
        return int(sum(int(entry["bytes"]) for entry in manifest["files"].values()))
    return int(sum(p.stat().st_size for p in root.rglob("*") if p.is_file()))


def backend_memory(runner: Runner) -> dict[str, Any]:
    """Memory the backend reports for its engine (``Runner.memory_bytes()``: TensorRT's device
    memory, the OpenVINO GPU plugin's statistics, what a CPU engine took to load and run its first
    query), or None with the reason."""
    try:
        value = runner.memory_bytes()
    except Exception as err:  # noqa: BLE001 - a report figure must not end the run
        return {"mb": None, "reason": f"the backend failed to report it ({type(err).__name__}: {err})"}
    if value is None:
        name = (runner.describe() or {}).get("backend", type(runner).__name__)
        return {"mb": None, "reason": f"{name} reports no memory figure for its engine"}
    return {"mb": round(float(value) / MB, 2), "reason": None}
