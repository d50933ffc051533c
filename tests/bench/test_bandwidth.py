"""The platform peak (STREAM) and its cache."""

from __future__ import annotations

import pytest

from edgecsp.bench import bandwidth

# -- bandwidth, traffic, counters -----------------------------------------------------------------------


def test_stream_and_platform_peak_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path))
    first = bandwidth.platform_peak(threads=2, array_mb=2, repeats=2, matrix=128, compute_seconds=0.01)
    assert first["cached"] is False and first["stream"]["copy_gbs"] > 0 and first["stream"]["triad_gbs"] > 0
    assert first["peak_gbs"] == max(first["stream"]["copy_gbs"], first["stream"]["triad_gbs"])
    assert first["peak_gmacs_by_precision"]["fp32"] > 0

    def no_measuring(*a, **k):
        raise AssertionError("measured again instead of reading the cache")

    monkeypatch.setattr(bandwidth, "stream", no_measuring)
    again = bandwidth.platform_peak(threads=2, array_mb=2)
    assert again["cached"] is True and again["peak_gbs"] == first["peak_gbs"]
    gpu = bandwidth.platform_peak(threads=2, hardware={"peak_gmacs": 1000.0, "peak_dram_gbps": 68.0})
    assert gpu["peak_gmacs"] == 1000.0 and gpu["measured_peak_gmacs"] == first["peak_gmacs"]
    assert gpu["datasheet_peak_gbs"] == 68.0
    with pytest.raises(AssertionError, match="measured again"):
        bandwidth.platform_peak(threads=2, array_mb=2, refresh=True)
