"""The harness must not be the bottleneck: its FPS on an OpenVINO IR against OpenVINO's own
benchmark_app on the same IR with the same settings (device, performance hint, inference
precision, streams, threads, infer requests), alternating which runs first to spread a shared
machine's drift over both. Prints each pair and the median pair ratio; exit status 1 when the
harness's throughput is more than --tolerance (5%) below benchmark_app's.

The latency scenario is shown too, for information: there the harness times the artifact's own
``Runner.run`` (what an application calling edgecsp.load gets: the input and output copies are
in it), while benchmark_app fills its input once and never reads the output.

    python benchmarks/compare_benchmark_app.py [--artifact DIR] [--scenario throughput|latency|both]
                                               [--duration 10] [--repeats 6] [--json FILE]

Without --artifact it builds (or reuses) the demo detector for intel-cpu INT8.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def harness(root: Path, scenario: str, duration: float, warmup: float) -> dict:
    import edgecsp
    from edgecsp.bench.harness import Settings, measure
    from edgecsp.bench.run import input_batches

    with edgecsp.load(root, mode=scenario, u8_input=False) as predictor:  # timed on float NCHW tensors
        inputs, _, _ = input_batches(predictor.input_size, 1, 8, None)
        m = measure(predictor.runner, inputs, Settings(scenario, duration_s=duration, warmup_s=warmup, min_queries=1))
        desc = predictor.runner.describe()
    return {"fps": m.fps, "p50_ms": m.latency_ms()["p50"], "queries": m.queries, "mode": m.mode,
            "requests": m.streams, "streams": desc["streams"], "threads": desc["threads"],
            "inference_precision": desc["inference_precision"], "device": desc["device"]}


def benchmark_app(xml: Path, scenario: str, duration: float, ours: dict) -> dict:
    exe = shutil.which("benchmark_app", path=str(Path(sys.executable).parent)) or shutil.which("benchmark_app")
    if exe is None:
        raise SystemExit("benchmark_app not found (it ships with the openvino pip package)")
    # benchmark_app refuses -nstreams/-nthreads beside a hint; the same hint on the same plugin
    # picks the same streams and threads, which are read back from its output and compared below.
    cmd = [exe, "-m", str(xml), "-d", ours["device"], "-hint", scenario, "-t", str(int(duration)),
           "-infer_precision", ours["inference_precision"]]
    # Our latency scenario is one synchronous request; throughput keeps ours' request count in flight.
    cmd += ["-api", "sync"] if scenario == "latency" else ["-api", "async", "-nireq", str(ours["requests"])]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    fps = re.search(r"Throughput:\s+([\d.]+)\s+FPS", text)
    median = re.search(r"Median:\s+([\d.]+)\s+ms", text)
    if out.returncode != 0 or fps is None:
        raise SystemExit(f"benchmark_app failed ({out.returncode}):\n{text[-2000:]}")
    streams = re.search(r"NUM_STREAMS:\s+(\d+)", text)
    threads = re.search(r"INFERENCE_NUM_THREADS:\s+(\d+)", text)
    return {"fps": float(fps.group(1)), "p50_ms": float(median.group(1)) if median else None, "command": " ".join(cmd),
            "streams": int(streams.group(1)) if streams else None, "threads": int(threads.group(1)) if threads else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", type=Path, help="an OpenVINO artifact (default: demo intel-cpu int8)")
    parser.add_argument("--scenario", choices=["throughput", "latency", "both"], default="throughput")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (benchmark_app takes whole seconds)")
    parser.add_argument("--warmup", type=float, default=1.0, help="harness warm-up (benchmark_app: first inference)")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from edgecsp.artifact import open_artifact
    from edgecsp.bench import machine

    if args.artifact is None:
        from edgecsp.bench.on_demand import ensure_artifact

        root, manifest, _ = ensure_artifact("demo", "intel-cpu", "int8", ROOT / "artifacts")
    else:
        root, manifest = open_artifact(args.artifact)
    if manifest["backend"]["name"] != "openvino":
        raise SystemExit(f"{root} is a {manifest['backend']['name']} artifact; benchmark_app runs OpenVINO IR")
    xml = Path(root) / manifest["engine"]
    scenarios = ["throughput", "latency"] if args.scenario == "both" else [args.scenario]
    info = machine.describe()
    print(f"{root.name} on {info['cpu']} ({info['usable_cpus']} CPUs, load average {info.get('load_average_1m')}), "
          f"{args.duration} s per run, {args.repeats} alternating repeats", flush=True)
    summary = {"artifact": str(root), "machine": info, "duration_s": args.duration, "scenarios": {}}
    ok = True
    for scenario in scenarios:
        pairs = []
        for rep in range(args.repeats):
            if rep % 2 == 0:
                ours = harness(root, scenario, args.duration, args.warmup)
                theirs = benchmark_app(xml, scenario, args.duration, ours)
            else:  # the other order, so a drifting machine load does not favour one side
                probe = harness(root, scenario, 0.2, 0.0)
                theirs = benchmark_app(xml, scenario, args.duration, probe)
                ours = harness(root, scenario, args.duration, args.warmup)
            pairs.append({"harness": ours, "benchmark_app": theirs, "ratio": ours["fps"] / theirs["fps"]})
            print(f"  {scenario:<10} run {rep + 1}: harness {ours['fps']:8.2f} FPS (p50 {ours['p50_ms']:.2f} ms)   "
                  f"benchmark_app {theirs['fps']:8.2f} FPS (p50 {theirs['p50_ms']} ms)   ratio {pairs[-1]['ratio']:.3f}",
                  flush=True)
        ratio = statistics.median(p["ratio"] for p in pairs)
        fps_ratio = statistics.median(p["harness"]["fps"] for p in pairs) / statistics.median(
            p["benchmark_app"]["fps"] for p in pairs)
        within = ratio >= 1 - args.tolerance
        if scenario == "throughput":
            ok &= within
        print(f"  {scenario}: median pair ratio {ratio:.3f}, ratio of median FPS {fps_ratio:.3f} -> "
              f"{'within' if within else 'NOT within'} {args.tolerance:.0%} of benchmark_app"
              + ("" if scenario == "throughput" else " (information only, see the docstring)"))
        a, b = pairs[0]["harness"], pairs[0]["benchmark_app"]
        print(f"    harness: {a['streams']} streams, {a['threads']} threads, {a['requests']} request(s), "
              f"{a['inference_precision']}; benchmark_app: {b['streams']} streams, {b['threads']} threads")
        print(f"    benchmark_app command: {b['command']}")
        summary["scenarios"][scenario] = {"pairs": pairs, "median_ratio": ratio, "ratio_of_medians": fps_ratio,
                                          "within_tolerance": within}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
