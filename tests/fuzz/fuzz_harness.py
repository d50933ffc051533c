"""What every fuzz target must satisfy: a bad input ends in edgecsp's own one-line error.

``expect_clean(fn, *args)`` runs one input and fails the test on any other exception, on a
multi-line or empty message, on a run longer than ``HANG_S`` (a hang) or on a peak-RSS jump
larger than ``MEMORY_MB`` (unbounded memory). ``TRIED`` counts the inputs per target so the
campaign script can report how many were tried.
"""

from __future__ import annotations

import collections
import resource
import signal
import time
from collections.abc import Callable
from typing import Any

from edgecsp.errors import EdgeCSPError

HANG_S = 30  # one parse taking this long is a hang, not a slow machine
MEMORY_MB = 1500  # peak-RSS growth one input may cause
TRIED: collections.Counter[str] = collections.Counter()
REJECTED: collections.Counter[str] = collections.Counter()


class Hang(BaseException):  # not Exception: broad "except Exception" in a parser must not swallow it
    pass


def _alarm(signum, frame):
    raise Hang(f"no result after {HANG_S} s")


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """This process's peak RSS since the last reset (Linux VmHWM), else its lifetime peak."""
    peak = _status_mb("VmHWM:")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def _current_rss_mb() -> float:
    now = _status_mb("VmRSS:")
    return now if now is not None else _peak_rss_mb()


def _reset_peak() -> None:
    """Start the peak over at the current RSS, so each input's own peak is seen (not hidden under
    an earlier fixture's high-water mark)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def expect_clean(target: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; return its result, or None when it refused the input with EdgeCSPError."""
    TRIED[target] += 1
    _reset_peak()
    before = _current_rss_mb()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    t0 = time.monotonic()
    try:
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
        grown = _peak_rss_mb() - before
        assert grown < MEMORY_MB, f"{target}: one input grew peak memory by {grown:.0f} MB"


def examples(ci: int) -> int:
    """Inputs per test: ``ci`` in the normal suite; the profile's count in a campaign (or when
    EDGECSP_FUZZ_EXAMPLES is set), so one command scales every target."""
    import os

    from hypothesis import settings

    if os.environ.get("HYPOTHESIS_PROFILE") == "campaign" or "EDGECSP_FUZZ_EXAMPLES" in os.environ:
        return settings.default.max_examples
    return ci
