"""Fleet tests need Ray, PostgreSQL, Chromium and (for the cluster) unshare and ip. Where one is
missing a test skips with the reason, except in CI (EDGECSP_CI=1, set by .ci/run), where .ci/run
installs them all: there a missing piece fails the test."""

from __future__ import annotations

import os

import pytest


def need(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("EDGECSP_CI") == "1":
        pytest.fail(f"EDGECSP_CI=1 and {reason}: .ci/run installs it; a fleet test may not skip in CI")
    pytest.skip(reason)
