"""Is a result a regression? Compare it with a baseline from the history of the same job on the
same device (by default the median of the last N successful runs), with the suite's thresholds.

Default thresholds: throughput (FPS) more than 10% below the baseline, or AP50 more than 0.5
point below it. An artifact whose AP50 is below the FP32 reference by more than its target
profile's tolerance fails too (the accuracy gate, independent of history).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edgecsp.errors import EdgeCSPError


@dataclass(frozen=True)
class Thresholds:
    throughput_drop_pct: float = 10.0  # FPS below the baseline by more than this: regression
    ap50_drop_points: float = 0.5  # AP50 (points, 0-100) below the baseline by more than this
    latency_p99_increase_pct: float | None = None  # off unless the suite sets it
    peak_rss_increase_pct: float | None = None
    baseline: str = "median"  # median | mean | last | best
    baseline_runs: int = 7  # the last N successful runs of the job on this device
    min_baseline_runs: int = 1  # fewer than this: reported, not judged

    def __post_init__(self) -> None:
        for name in ("throughput_drop_pct", "ap50_drop_points", "latency_p99_increase_pct", "peak_rss_increase_pct"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, (int, float)) or v < 0):
                raise EdgeCSPError(f"threshold {name} must be a number >= 0, got {v!r}")
        if self.baseline not in ("median", "mean", "last", "best"):
            raise EdgeCSPError(f"baseline must be median, mean, last or best, got {self.baseline!r}")
        if self.baseline_runs < 1 or self.min_baseline_runs < 1:
            raise EdgeCSPError("baseline_runs and min_baseline_runs must be at least 1")


@dataclass
class Finding:
    job: str
    metric: str
    current: float | None
    baseline: float | None
    baseline_runs: int
    change: float | None  # % for throughput/latency/memory, points for AP50
    unit: str  # "%" or "points"
    limit: float | None
    regressed: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if self.baseline is None or self.change is None or self.current is None:
            return f"{self.metric}: {self.note}"
        verdict = "REGRESSION" if self.regressed else "ok"
        change = self.change + 0.0  # no "-0.00"
        if self.metric == "ap50_vs_fp32_reference":
            return (f"AP50 {self.current:.4f} vs FP32 reference {self.baseline:.4f}: {change:+.2f} points "
                    f"(tolerance {self.limit}) {verdict}")
        return (f"{self.metric} {self.current:.4g} vs baseline {self.baseline:.4g} ({self.baseline_runs} runs): "
                f"{change:+.2f} {self.unit} (limit {self.limit} {self.unit}) {verdict}")


# metric -> (history column, unit, worse when, threshold field)
CHECKS = {
    "fps": ("fps", "%", "lower", "throughput_drop_pct"),
    "ap50": ("ap50", "points", "lower", "ap50_drop_points"),
    "latency_p99_ms": ("latency_p99_ms", "%", "higher", "latency_p99_increase_pct"),
    "peak_rss_mb": ("peak_rss_mb", "%", "higher", "peak_rss_increase_pct"),
}


def judge(job: str, metric: str, current: float | None, baseline: float | None, runs: int,
          th: Thresholds) -> Finding | None:
    """One metric of one result against its baseline; None when the check is off."""
    _column, unit, worse, field_name = CHECKS[metric]
    limit = getattr(th, field_name)
    if limit is None:
        return None
    if current is None:
        return Finding(job, metric, None, baseline, runs, None, unit, limit, False, "not measured in this run")
    if baseline is None or runs < th.min_baseline_runs:
        return Finding(job, metric, current, baseline, runs, None, unit, limit, False,
                       f"no baseline yet ({runs} earlier run{'s' if runs != 1 else ''} on this device)")
    if unit == "points":  # AP50 is stored as a fraction: compare in points
        change = (current - baseline) * 100
    else:
        change = (current - baseline) / baseline * 100 if baseline else 0.0
    change = round(change, 6)  # 0.795 vs 0.80 is 0.5 point, not 0.5000000000000004
    bad = -change if worse == "lower" else change
    return Finding(job, metric, current, baseline, runs, round(change, 3), unit, limit, bad > limit)


def compare(history: Any, device: str, job: str, current: dict[str, float | None], th: Thresholds,
            before_run: int | None = None) -> list[Finding]:
    """Every enabled check of ``current`` (metric -> value) against ``history``'s baseline."""
    out = []
    for metric in CHECKS:
        if metric not in current:
            continue
        base, runs = history.baseline(device, job, CHECKS[metric][0], th.baseline_runs, before_run, th.baseline)
        f = judge(job, metric, current[metric], base, runs, th)
        if f is not None:
            out.append(f)
    return out
