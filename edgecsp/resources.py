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
    """Bytes of memory available now (MemAvailable; the physical total where that is unknown)."""
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
    return f"{n / 2**30:.1f} GiB"
