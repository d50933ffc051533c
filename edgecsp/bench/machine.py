"""What machine a benchmark ran on: the description in every report and the key results are
compared by (the same device's history) and the platform peak is cached under."""

from __future__ import annotations

import hashlib
import os
import platform
import socket
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key = line.split(":")[0].strip().lower()
            if key in ("model name", "hardware", "processor") and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    return value
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def jetson_model() -> str | None:
    """The Jetson module name, or None off Jetson (device tree model + nv_tegra_release)."""
    release = Path("/etc/nv_tegra_release")
    model = Path("/proc/device-tree/model")
    if not release.exists() and not model.exists():
        return None
    try:
        text = model.read_text().strip("\x00\n ") if model.exists() else ""
    except OSError:
        text = ""
    if release.exists() or "jetson" in text.lower() or "tegra" in text.lower():
        return text or "NVIDIA Jetson"
    return None


def _meminfo_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def describe() -> dict[str, Any]:
    import numpy

    try:
        import psutil

        mem = int(psutil.virtual_memory().total)
    except ImportError:  # a device install: the kernel's figure
        mem = _meminfo_total()
    info = {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count() or 1,
        "usable_cpus": usable_cpus(),
        "memory_gb": round(mem / 1e9, 2),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "jetson": jetson_model(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        la = os.getloadavg()
        info["load_average_1m"] = round(la[0], 2)  # other jobs on the machine skew every figure
    except OSError:
        pass
    info["key"] = machine_key(info)
    return info


def machine_key(info: dict[str, Any] | None = None) -> str:
    """Stable per device: host name + CPU + core count + memory (not load, not versions)."""
    info = info or describe()
    raw = "|".join(str(info.get(k)) for k in ("hostname", "cpu", "logical_cpus", "memory_gb", "arch"))
    return f"{info.get('hostname')}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
