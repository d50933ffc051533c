"""Hypothesis profiles for the fuzz tests.

- ``ci`` (default): a few hundred inputs per target, so the normal suite stays quick.
- ``campaign``: long runs outside CI, e.g.
  ``HYPOTHESIS_PROFILE=campaign python -m pytest tests/fuzz -q``;
  ``EDGECSP_FUZZ_EXAMPLES`` overrides the count of either profile.
At the end of a run the number of inputs tried (and refused with a clean error) per target is
printed, which is what the README's reliability section reports.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_checks = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile("ci", max_examples=int(os.environ.get("EDGECSP_FUZZ_EXAMPLES", 150)), deadline=None,
                          suppress_health_check=_checks, derandomize=True, print_blob=True)
settings.register_profile("campaign", max_examples=int(os.environ.get("EDGECSP_FUZZ_EXAMPLES", 20000)),
                          deadline=None, suppress_health_check=_checks, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _fuzzed_models_get_a_1gb_budget(monkeypatch):
    """Model size limits follow the machine's free memory; the harness allows each input +1.5 GB, so
    the fuzzed models get a 1 GB budget (the same check, the limit users set in a container)."""
    monkeypatch.setenv("EDGECSP_MAX_MEMORY_MB", "1024")


def pytest_terminal_summary(terminalreporter):
    from fuzz_harness import REJECTED, TRIED

    if not TRIED:
        return
    terminalreporter.section("fuzz inputs tried (refused with a clean error)")
    for target in sorted(TRIED):
        terminalreporter.write_line(f"{target:32s} {TRIED[target]:7d}  ({REJECTED[target]} refused)")
    terminalreporter.write_line(f"{'total':32s} {sum(TRIED.values()):7d}")
