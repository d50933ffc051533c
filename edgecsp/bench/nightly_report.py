"""The nightly run's outputs: report.md (tables, regressions, failures, skips, trend plots),
junit.xml (one test case per job and scenario, for CI dashboards) and results.json."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

TREND_METRICS = (("fps", "FPS"), ("ap50", "AP50"), ("latency_p99_ms", "p99 latency (ms)"))


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def _finding(o: Any, metric: str) -> Any:
    return next((f for f in o.findings if f.metric == metric), None)


def markdown(result: Any, trend_files: dict[str, Path]) -> str:
    s = result.suite
    counts = {k: sum(1 for o in result.outcomes if o.status == k) for k in ("ok", "failed", "skipped")}
    lines = [
        f"# edgecsp nightly: {s.name} on {result.device}",
        "",
        (f"Run {result.run_id}, {result.started} to {result.finished}. Status: **{result.status.upper()}** "
         f"({counts['ok']} measured, {len(result.regressions)} regressed, {counts['failed']} failed, "
         f"{counts['skipped']} skipped)."),
        "",
        (f"Baseline: {s.thresholds.baseline} of the last {s.thresholds.baseline_runs} successful runs on this "
         f"device. Regression: FPS more than {s.thresholds.throughput_drop_pct}% below it, or AP50 more than "
         f"{s.thresholds.ap50_drop_points} point below it"
         + (f", or p99 latency more than {s.thresholds.latency_p99_increase_pct}% above it"
            if s.thresholds.latency_p99_increase_pct is not None else "")
         + "; or AP50 below the FP32 reference by more than the target's tolerance."),
        "",
        "| job | scenario | status | FPS | baseline | change | AP50 | baseline | change | vs FP32 ref | verdict |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in result.outcomes:
        if o.status != "ok":
            continue
        fps, ap, gate = _finding(o, "fps"), _finding(o, "ap50"), _finding(o, "ap50_vs_fp32_reference")
        lines.append(
            f"| {o.job.name} | {o.scenario} | {o.status} | {_fmt(o.record.fps, '.1f')} "
            f"| {_fmt(fps.baseline if fps else None, '.1f')} "
            f"| {_fmt(fps.change if fps else None, '+.1f')}{'%' if fps and fps.change is not None else ''} "
            f"| {_fmt(o.record.ap50, '.4f')} | {_fmt(ap.baseline if ap else None, '.4f')} "
            f"| {_fmt(ap.change if ap else None, '+.2f')} "
            f"| {_fmt(gate.change if gate else None, '+.2f')} "
            f"| {'**REGRESSION**' if o.regressed else ('no baseline yet' if fps and fps.change is None else 'ok')} |")
    if result.regressions:
        lines += ["", "## Regressions", ""]
        for o in result.regressions:
            for f in o.findings:
                if f.regressed:
                    lines.append(f"- `{o.job.key(o.scenario)}`: {f.describe()}")
    failed = [o for o in result.outcomes if o.status == "failed"]
    if failed:
        lines += ["", "## Failures", ""]
        seen = set()
        for o in failed:
            if o.job.name in seen:
                continue
            seen.add(o.job.name)
            lines.append(f"- `{o.job.name}`: {o.reason}")
            if o.details:
                lines += ["", "  <details><summary>traceback</summary>", "", "  ```", *("  " + ln for ln in
                          o.details.rstrip().splitlines()[-30:]), "  ```", "  </details>", ""]
    skipped = [o for o in result.outcomes if o.status == "skipped"]
    if skipped:
        lines += ["", "## Skipped on this machine", ""]
        seen = set()
        for o in skipped:
            if o.job.name not in seen:
                seen.add(o.job.name)
                lines.append(f"- `{o.job.name}`: {o.reason}")
    if trend_files:
        lines += ["", "## Trends (this device)", ""]
        for name, path in trend_files.items():
            lines.append(f"![{name}]({path.name})")
    lines += ["", "Per-job benchmark JSON/CSV: `jobs/`. JUnit XML: `junit.xml`. History: the run id above.", ""]
    return "\n".join(lines)


def trend_plots(result: Any, history: Any, out_dir: Path, runs: int = 60) -> dict[str, Path]:
    from edgecsp.bench.report import pyplot, save_figure

    plt = pyplot()
    keys = sorted({o.record.job for o in result.outcomes if o.status == "ok"})
    files = {}
    for metric, label in TREND_METRICS:
        series = {k: history.series(result.device, k, metric, runs) for k in keys}
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4))
        for key, pts in series.items():
            ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", ms=3, label=key)
        ax.set_xlabel("nightly run")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
        ax.set_title(f"{label}: last {runs} runs on {result.device}")
        files[metric] = save_figure(fig, out_dir / f"trend_{metric}.png", dpi=100)
    return files


def junit_xml(result: Any) -> str:
    suite_el = ET.Element("testsuite", {
        "name": f"edgecsp-nightly.{result.suite.name}", "timestamp": result.started, "hostname": result.device,
        "tests": str(len(result.outcomes)),
        "failures": str(len(result.regressions)),
        "errors": str(sum(1 for o in result.outcomes if o.status == "failed")),
        "skipped": str(sum(1 for o in result.outcomes if o.status == "skipped")),
        "time": f"{sum(o.seconds for o in result.outcomes):.3f}",
    })
    for o in result.outcomes:
        case = ET.SubElement(suite_el, "testcase", {
            "classname": f"edgecsp.nightly.{o.job.name.replace('/', '.')}", "name": o.scenario,
            "time": f"{o.seconds:.3f}"})
        if o.status == "skipped":
            ET.SubElement(case, "skipped", {"message": o.reason[:500]})
        elif o.status == "failed":
            err = ET.SubElement(case, "error", {"message": o.reason[:500], "type": "JobFailed"})
            err.text = o.details or o.reason
        else:
            bad = [f for f in o.findings if f.regressed]
            if bad:
                fail = ET.SubElement(case, "failure", {"message": "; ".join(f.describe() for f in bad)[:500],
                                                       "type": "PerformanceRegression"})
                fail.text = "\n".join(f.describe() for f in o.findings)
            out = ET.SubElement(case, "system-out")
            out.text = "\n".join([f"fps={o.record.fps} ap50={o.record.ap50} p99_ms={o.record.latency_p99_ms}"]
                                 + [f.describe() for f in o.findings])
    root = ET.Element("testsuites")
    root.append(suite_el)
    if hasattr(ET, "indent"):  # Python 3.9+; the XML is the same without the indentation
        ET.indent(root)  # novermin (guarded: 3.9+)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_reports(result: Any, history: Any) -> dict[str, Path]:
    out = Path(result.report_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    trends = trend_plots(result, history, out)
    files.update({f"trend_{k}": v for k, v in trends.items()})
    (out / "report.md").write_text(markdown(result, trends))
    files["markdown"] = out / "report.md"
    (out / "junit.xml").write_text(junit_xml(result))
    files["junit"] = out / "junit.xml"
    summary = {
        "run_id": result.run_id, "device": result.device, "suite": result.suite.name, "status": result.status,
        "started": result.started, "finished": result.finished,
        "jobs": [{"job": o.record.job, "status": o.status, "fps": o.record.fps, "ap50": o.record.ap50,
                  "latency_p99_ms": o.record.latency_p99_ms, "reason": o.reason, "regressed": o.regressed,
                  "findings": [f.as_dict() for f in o.findings]} for o in result.outcomes],
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    files["json"] = out / "results.json"
    return files
