"""Side by side on the demo detector: each compiled artifact against PyTorch eager FP32 and plain
ONNX Runtime FP32, all measured in the same run (python -m edgecsp.benchmark --compare ...).

    python benchmarks/speed_demo.py [--targets intel-cpu:int8,onnxruntime:int8] [--scenario both]
                                    [--duration 10] [--out benchmarks/results]

Builds (or reuses) each artifact under artifacts/, writes one benchmark JSON per artifact to
--out, and prints the ratios as a Markdown table (e.g. intel-cpu INT8 vs PyTorch eager). A target
whose backend is not installed here is skipped with the reason.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="intel-cpu:int8,onnxruntime:int8", help="target:precision, comma-separated")
    parser.add_argument("--scenario", choices=["latency", "throughput", "both"], default="both")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--min-queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from edgecsp.bench import report as rep
    from edgecsp.bench.on_demand import ensure_artifact
    from edgecsp.bench.run import BenchmarkOptions, run_benchmark
    from edgecsp.errors import EdgeCSPError

    scenarios = ["latency", "throughput"] if args.scenario == "both" else [args.scenario]
    reports = []
    for spec in args.targets.split(","):
        target, _, precision = spec.strip().partition(":")
        try:
            root, _, _ = ensure_artifact("demo", target, precision or None, ROOT / "artifacts",
                                         progress=lambda line: print(line, file=sys.stderr))
        except EdgeCSPError as err:
            print(f"skip {spec}: {err}", file=sys.stderr)
            continue
        opts = BenchmarkOptions(artifact=root, scenarios=scenarios, duration_s=args.duration, warmup_s=args.warmup,
                                min_queries=args.min_queries, compare=["torch", "onnxruntime-fp32"])
        report = run_benchmark(opts, progress=lambda line: print(line, file=sys.stderr, flush=True))
        path = rep.write_json(report, args.out / f"{root.name}.json")
        rep.write_all(report, ROOT / "runs" / "speed_demo" / root.name)
        print(rep.format_table(report), "\n", file=sys.stderr)
        print(f"wrote {path}", file=sys.stderr)
        reports.append(report)

    if not reports:
        print("nothing measured", file=sys.stderr)
        return 1
    m = reports[0]["machine"]
    print(f"\nDemo detector ({reports[0]['model']['input_size']}x{reports[0]['model']['input_size']}, batch 1) on "
          f"{m['cpu']}, {m['usable_cpus']} CPUs, load average {m.get('load_average_1m')} at the start.\n")
    print("| engine | scenario | FPS | p50 ms | p99 ms | vs PyTorch eager FP32 | vs ORT FP32 | "
          "traffic MB/frame | GB/s (% of peak) | peak RSS MB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for report in reports:
        for r in report["results"]:
            if r["kind"] == "baseline" and report is not reports[0]:
                continue  # baselines once (each report has its own, measured beside its artifact)
            ratios = r.get("ratios") or {}
            vs = [ratios.get(b, {}).get("fps") for b in ("pytorch-eager-fp32", "onnxruntime-fp32")]
            bw = r["bandwidth"]
            name = r["name"] if r["kind"] == "artifact" else f"{r['name']} (baseline)"
            print(f"| {name} | {r['scenario']} | {r['fps']:.1f} | {r['latency_ms']['p50']:.2f} | "
                  f"{r['latency_ms']['p99']:.2f} | {'-' if vs[0] is None else f'{vs[0]:.2f}x'} | "
                  f"{'-' if vs[1] is None else f'{vs[1]:.2f}x'} | {bw['model_traffic_mb_per_frame']:.1f} | "
                  f"{bw['achieved_gbs']:.2f} ({(bw['fraction_of_peak'] or 0) * 100:.0f}%) | {r['peak_rss_mb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
