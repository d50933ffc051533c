"""What every fuzz target must satisfy: a bad input ends in edgecsp's own one-line error.

``expect_clean(fn, *args)`` runs one input and fails the test on any other exception, on a
multi-line or empty message, on a run longer than ``HANG_S`` (a hang) or on a peak-RSS jump
larger than ``MEMORY_MB`` (unbounded memory). ``TRIED`` counts the inputs per target so the
campaign script can report how many were tried.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Callable
from typing import Any

from edgecsp.bench.memory import MB, PeakRSS
from edgecsp.errors import EdgeCSPError

HANG_S = 30  # one parse taking this long is a hang, not a slow machine
MEMORY_MB = 1500  # peak-RSS growth one input may cause
TRIED: collections.Counter[str] = collections.Counter()
REJECTED: collections.Counter[str] = collections.Counter()


class Hang(BaseException):  # not Exception: broad "except Exception" in a parser must not swallow it
    pass


def _alarm(signum, frame):
    raise Hang(f"no result after {HANG_S} s")


def memory_growth_mb(memory: PeakRSS) -> float:
    """Peak RSS over one measured window above the RSS it started from (VmHWM reset per window)."""
    return (memory.peak - memory.before) / MB


def expect_clean(target: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; return its result, or None when it refused the input with EdgeCSPError."""
    TRIED[target] += 1
    memory = PeakRSS()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    t0 = time.monotonic()
    try:
        with memory:
            return fn(*args, **kwargs)
    except EdgeCSPError as err:
        message = str(err)
        assert message.strip(), f"{target}: EdgeCSPError with an empty message"
        assert "\n" not in message, f"{target}: error message is not one line: {message!r}"
        REJECTED[target] += 1
        return None
    except Hang:
        raise AssertionError(f"{target}: hang, no result after {time.monotonic() - t0:.0f} s") from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        grown = memory_growth_mb(memory)
        assert grown < MEMORY_MB, f"{target}: one input grew peak memory by {grown:.0f} MB"


def examples(ci: int) -> int:
    """Inputs per test: ``ci`` in the normal suite; the profile's count in a campaign (or when
    EDGECSP_FUZZ_EXAMPLES is set), so one command scales every target."""
    import os

    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE") == "campaign" or "EDGECSP_FUZZ_EXAMPLES" in os.environ:
        return settings.default.max_examples
    return ci
