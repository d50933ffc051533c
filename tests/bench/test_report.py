"""The benchmark report's schema check."""

from __future__ import annotations

import json

from edgecsp.bench import report


def test_report_schema_check_catches_missing_fields():
    good = {"schema": report.SCHEMA, "machine": {}, "settings": {}, "results": [
        {"name": "x", "scenario": "latency", "fps": 1.0, "latency_ms": {"p50": 1, "p90": 1, "p99": 1, "max": 1},
         "peak_rss_mb": 1.0, "bandwidth": {"model_traffic_mb_per_frame": 1, "achieved_gbs": 1, "platform_peak_gbs": 1,
                                           "measured_gbs": None, "measured_reason": "vm"}}]}
    assert report.validate(good) == []
    bad = json.loads(json.dumps(good))
    del bad["results"][0]["latency_ms"]["p99"]
    bad["results"][0]["bandwidth"]["measured_reason"] = None
    problems = report.validate(bad)
    assert any("p99" in p for p in problems) and any("without a reason" in p for p in problems)
