"""Benchmark reports: a terminal table, JSON (the schema in docs/benchmarking.md), CSV (one row
per result) and PNG plots (latency distribution, throughput, roofline). Everything renders from
the report dict alone, so a saved JSON can be re-plotted."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from edgecsp.fsutil import atomic_write

SCHEMA = "edgecsp-benchmark/1"
REQUIRED_RESULT_KEYS = ("name", "scenario", "fps", "latency_ms", "peak_rss_mb", "bandwidth")


def validate(report: dict[str, Any]) -> list[str]:
    """Problems with a report against the documented schema ([] when it conforms)."""
    problems = []
    if report.get("schema") != SCHEMA:
        problems.append(f"schema is {report.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("machine", "settings", "results"):
        if key not in report:
            problems.append(f"missing {key!r}")
    for i, r in enumerate(report.get("results") or []):
        for key in REQUIRED_RESULT_KEYS:
            if key not in r:
                problems.append(f"results[{i}] has no {key!r}")
        for key in ("p50", "p90", "p99", "max"):
            if key not in (r.get("latency_ms") or {}):
                problems.append(f"results[{i}].latency_ms has no {key!r}")
        bw = r.get("bandwidth") or {}
        for key in ("model_traffic_mb_per_frame", "achieved_gbs", "platform_peak_gbs", "measured_gbs"):
            if key not in bw:
                problems.append(f"results[{i}].bandwidth has no {key!r}")
        if bw.get("measured_gbs") is None and not bw.get("measured_reason"):
            problems.append(f"results[{i}].bandwidth.measured_gbs is null without a reason")
    return problems


def write_json(report: dict[str, Any], path: Path) -> Path:
    return atomic_write(Path(path), json.dumps(report, indent=1, default=str) + "\n")


CSV_COLUMNS = [
    "name", "kind", "scenario", "backend", "target", "precision", "batch", "streams", "fps",
    "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_max_ms", "first_inference_ms", "load_s",
    "queries", "wall_s", "peak_rss_mb", "rss_growth_mb", "backend_memory_mb", "artifact_mb",
    "model_traffic_mb_per_frame", "achieved_gbs", "platform_peak_gbs", "fraction_of_peak_bw", "measured_gbs",
    "measured_reason", "achieved_gmacs", "platform_peak_gmacs", "arithmetic_intensity",
]


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for r in report["results"]:
        lat, bw, cp, mem = r["latency_ms"], r["bandwidth"], r.get("compute") or {}, r.get("memory") or {}
        row = {
            "name": r["name"], "kind": r.get("kind"), "scenario": r["scenario"], "backend": r.get("backend"),
            "target": r.get("target"), "precision": r.get("precision"), "batch": r.get("batch"),
            "streams": r.get("streams"), "fps": r["fps"], "latency_p50_ms": lat["p50"], "latency_p90_ms": lat["p90"],
            "latency_p99_ms": lat["p99"], "latency_max_ms": lat["max"],
            "first_inference_ms": r.get("first_inference_ms"), "load_s": r.get("load_s"), "queries": r.get("queries"),
            "wall_s": r.get("wall_s"), "peak_rss_mb": r["peak_rss_mb"], "rss_growth_mb": mem.get("rss_growth_mb"),
            "backend_memory_mb": mem.get("backend_mb"), "artifact_mb": mem.get("artifact_mb"),
            "model_traffic_mb_per_frame": bw["model_traffic_mb_per_frame"], "achieved_gbs": bw["achieved_gbs"],
            "platform_peak_gbs": bw["platform_peak_gbs"], "fraction_of_peak_bw": bw.get("fraction_of_peak"),
            "measured_gbs": bw["measured_gbs"], "measured_reason": bw.get("measured_reason"),
            "achieved_gmacs": cp.get("achieved_gmacs"), "platform_peak_gmacs": cp.get("platform_peak_gmacs"),
            "arithmetic_intensity": cp.get("arithmetic_intensity"),
        }
        for base, ratios in (r.get("ratios") or {}).items():
            for key, value in ratios.items():
                row[f"{key}_vs_{base}"] = value
        out.append(row)
    return out


def write_csv(report: dict[str, Any], path: Path) -> Path:
    table = rows(report)
    extra = sorted({k for row in table for k in row} - set(CSV_COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS + extra)
        writer.writeheader()
        for row in table:
            writer.writerow(row)
    return path


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def format_table(report: dict[str, Any]) -> str:
    """The terminal summary: one line per result, then ratios, then memory/bandwidth notes."""
    header = (f"{'name':<28}{'scenario':<11}{'FPS':>9}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'1st ms':>9}{'load s':>8}{'RSS MB':>8}{'eng MB':>8}{'MB/fr':>8}{'GB/s':>7}{'%peak':>7}{'GMAC/s':>8}")
    lines = [header, "-" * len(header)]
    for r in report["results"]:
        lat, bw, cp = r["latency_ms"], r["bandwidth"], r.get("compute") or {}
        frac = bw.get("fraction_of_peak")
        lines.append(
            f"{r['name'][:27]:<28}{r['scenario']:<11}{_fmt(r['fps'], '.1f'):>9}{_fmt(lat['p50']):>9}"
            f"{_fmt(lat['p90']):>9}{_fmt(lat['p99']):>9}{_fmt(lat['max']):>9}{_fmt(r.get('first_inference_ms'), '.1f'):>9}"
            f"{_fmt(r.get('load_s')):>8}{_fmt(r['peak_rss_mb'], '.0f'):>8}"
            f"{_fmt((r.get('memory') or {}).get('backend_mb'), '.1f'):>8}"
            f"{_fmt(bw['model_traffic_mb_per_frame']):>8}{_fmt(bw['achieved_gbs']):>7}"
            f"{_fmt(frac * 100 if frac is not None else None, '.1f'):>7}{_fmt(cp.get('achieved_gmacs'), '.1f'):>8}")
    ratio_lines = []
    for r in report["results"]:
        for base, ratios in (r.get("ratios") or {}).items():
            if r.get("kind") == "baseline":
                continue
            ratio_lines.append(
                f"  {r['name']} vs {base} ({r['scenario']}): {_fmt(ratios.get('fps'))}x FPS, "
                f"p50 x{_fmt(ratios.get('latency_p50'))}, p99 x{_fmt(ratios.get('latency_p99'))}, "
                f"peak RSS x{_fmt(ratios.get('peak_rss'))}, traffic/frame x{_fmt(ratios.get('model_traffic'))}")
    if ratio_lines:
        lines += ["", "ratios (this / baseline):"] + ratio_lines
    peak = report.get("platform_peak")
    if peak:
        lines += ["", f"platform peak: {peak['peak_gbs']} GB/s (STREAM copy {peak['stream']['copy_gbs']}, "
                      f"triad {peak['stream']['triad_gbs']}, {peak['stream']['threads']} threads), "
                      "GMAC/s " + ", ".join(f"{k} {v}" for k, v in (peak.get("peak_gmacs_by_precision") or {}).items())
                  + " (matrix multiply)" + (" [cached]" if peak.get("cached") else "")]
        cpus = (report.get("machine") or {}).get("usable_cpus") or 1
        if (peak.get("load_average_1m") or 0) > 0.5 * cpus:
            lines.append(f"  (measured at load average {peak['load_average_1m']} on {cpus} CPUs, so probably low: "
                         "run with --remeasure-platform when the machine is quiet)")
    reasons = {r["bandwidth"].get("measured_reason") for r in report["results"] if r["bandwidth"]["measured_gbs"] is None}
    measured = [r for r in report["results"] if r["bandwidth"]["measured_gbs"] is not None]
    for r in measured:
        lines.append(f"measured memory traffic ({r['bandwidth'].get('measured', {}) and r['bandwidth']['measured'].get('source', '')}): "
                     f"{r['name']} {r['scenario']} {r['bandwidth']['measured_gbs']} GB/s")
    for reason in sorted(x for x in reasons if x):
        lines.append(f"measured memory traffic: unavailable ({reason})")
    acc = report.get("accuracy")
    if acc:
        lines.append(f"accuracy: AP {acc['AP']:.4f} (ref {acc['reference']['AP']:.4f}), AP50 {acc['AP50']:.4f} "
                     f"(ref {acc['reference']['AP50']:.4f}), drop {acc['ap50_drop_points']:+.2f} points, "
                     f"tolerance {acc['tolerance_points']}: {'pass' if acc['passed'] else 'FAIL'}")
    load = (report.get("machine") or {}).get("load_average_1m")
    if load is not None:
        lines.append(f"machine: {report['machine'].get('cpu')}, {report['machine'].get('usable_cpus')} CPUs, "
                     f"load average {load} at the start (other jobs skew every figure)")
    return "\n".join(lines)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display on CI machines or devices)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """Lay out, write the PNG and free the figure (pyplot keeps every open figure alive)."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return Path(path)


def _label(r: dict[str, Any]) -> str:
    return f"{r['name']} ({r['scenario']})"


def plot_latency(report: dict[str, Any], path: Path) -> Path:
    """Latency distribution: the CDF of every result's query latencies (log x)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in report["results"]:
        q = r.get("latency_quantiles_ms")
        if q:
            ax.plot(q, range(len(q)), label=_label(r))
    ax.set_xscale("log")
    ax.set_xlabel("latency per query (ms, log)")
    ax.set_ylabel("percentile")
    ax.set_yticks([0, 50, 90, 99])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("latency distribution")
    return save_figure(fig, path)


def plot_throughput(report: dict[str, Any], path: Path) -> Path:
    """FPS per result (target / precision / baseline), grouped by scenario."""
    plt = pyplot()
    results = report["results"]
    fig, ax = plt.subplots(figsize=(7, 0.5 + 0.45 * max(1, len(results))))
    labels = [f"{r['name']} [{r.get('target') or r.get('backend')}, {r.get('precision')}] {r['scenario']}" for r in results]
    colors = ["tab:blue" if r.get("kind") == "artifact" else "tab:gray" for r in results]
    ax.barh(range(len(results)), [r["fps"] for r in results], color=colors)
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    for i, r in enumerate(results):
        ax.text(r["fps"], i, f" {r['fps']:.1f}", va="center", fontsize=7)
    ax.set_xlabel("frames per second")
    ax.set_title("throughput per target and precision")
    return save_figure(fig, path)


def plot_roofline(report: dict[str, Any], path: Path) -> Path:
    """Each result as a roofline point: MACs per byte of modelled traffic vs achieved GMAC/s."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    peak = report.get("platform_peak") or {}
    pts = [(r["compute"]["arithmetic_intensity"], r["compute"]["achieved_gmacs"], _label(r))
           for r in report["results"] if (r.get("compute") or {}).get("arithmetic_intensity")]
    if peak.get("peak_gbs"):
        import numpy as np

        xs = [p[0] for p in pts] or [1.0]
        x = np.logspace(np.log10(min(xs) / 10), np.log10(max(xs) * 10), 200)
        by_precision = peak.get("peak_gmacs_by_precision") or {"fp32": peak.get("peak_gmacs")}
        used = {(r.get("compute") or {}).get("peak_precision", "fp32") for r in report["results"]}
        for style, prec in zip(("k-", "k--", "k:"), [p for p in ("fp32", "bf16", "int8") if p in used] or ["fp32"]):
            if by_precision.get(prec):
                ax.plot(x, np.minimum(by_precision[prec], x * peak["peak_gbs"]), style, lw=1.2,
                        label=f"roof {prec}: {peak['peak_gbs']} GB/s, {by_precision[prec]} GMAC/s")
    for ai, g, label in pts:
        ax.plot([ai], [g], "o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (MAC per byte of model traffic)")
    ax.set_ylabel("achieved GMAC/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("roofline")
    return save_figure(fig, path)


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def write_all(report: dict[str, Any], out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """benchmark.json, benchmark.csv and the three PNGs into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(report, out_dir / "benchmark.json"), "csv": write_csv(report, out_dir / "benchmark.csv")}
    if plots and not _has_matplotlib():  # a device install: the numbers are all in the JSON and CSV
        print("plots skipped: matplotlib is not installed (pip install 'edgecsp[host]')", file=sys.stderr)
        plots = False
    if plots:
        written["latency_png"] = plot_latency(report, out_dir / "latency.png")
        written["throughput_png"] = plot_throughput(report, out_dir / "throughput.png")
        written["roofline_png"] = plot_roofline(report, out_dir / "roofline.png")
    return written
