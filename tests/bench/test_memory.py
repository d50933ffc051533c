"""Peak RSS per window, artifact size and backend memory figures."""

from __future__ import annotations

import numpy as np
from fake_runner import FakeRunner

from edgecsp.bench import memory

# -- memory ---------------------------------------------------------------------------------------------


def test_peak_rss_sees_an_allocation_and_is_reset_per_window():
    with memory.PeakRSS() as big:
        a = np.ones(150 * 1024 * 1024 // 8)  # 150 MB, touched
        del a
    assert big.peak - big.before >= 120 * memory.MB, big.as_dict()
    with memory.PeakRSS() as small:
        np.ones(1000).sum()
    if "reset" in small.method:  # the kernel's peak mark was reset: the big window does not leak in
        assert small.peak < big.peak - 100 * memory.MB, (small.as_dict(), big.as_dict())


def test_artifact_size_and_backend_memory(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 1000)
    assert memory.artifact_bytes(tmp_path) == 1000
    assert memory.artifact_bytes(tmp_path, {"files": {"a.bin": {"bytes": 1000}, "b": {"bytes": 24}}}) == 1024

    class Reports:
        def memory_bytes(self):
            return 3 * memory.MB

    assert memory.backend_memory(Reports()) == {"mb": 3.0, "reason": None}
    none = memory.backend_memory(FakeRunner())
    assert none["mb"] is None and "fake reports no memory" in none["reason"]
