"""How much memory this machine can give a model: limits that scale with the machine.

A model is refused only when the machine's available memory cannot hold it, and the message
says so in bytes, instead of a fixed cap that refuses real models on big machines.
"""

from __future__ import annotations

import os

# Bytes a float32 parameter costs while edgecsp works with it: the weights, a copy during
# export or loading, and optimizer/gradient state would be more; 3 copies is the inference path.
BYTES_PER_PARAM = 12
# A feature map value: float32 activations, kept for the layers that are read again later.
BYTES_PER_VALUE = 4


def available_memory() -> int:
    """Bytes of memory a model may use: MemAvailable now (the physical total where that is unknown),
    capped by ``EDGECSP_MAX_MEMORY_MB`` when set (a container's share, a shared build box, tests)."""
    cap = os.environ.get("EDGECSP_MAX_MEMORY_MB", "")
    limit = int(cap) * 2**20 if cap.isdigit() and int(cap) > 0 else 2**62
    return min(limit, _system_available())


def _system_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: do not refuse on a guess
        return 2**62


def gib(n: float) -> str:
    """Bytes for a message: MiB below 1 GiB, else GiB with one decimal."""
    return f"{n / 2**20:.0f} MiB" if n < 2**30 else f"{n / 2**30:.1f} GiB"
