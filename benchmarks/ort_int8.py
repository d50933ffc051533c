"""ONNX Runtime INT8 against ONNX Runtime FP32 on the demo detector, measured in one run.

    python benchmarks/ort_int8.py [--batch 1,8] [--iterations 60] [--repeats 3] [--warmup 10]
                                  [--threads N] [--before] [--json FILE]

Builds (or reuses, under artifacts/) the demo's `onnxruntime` FP32 and INT8 artifacts at each
batch size; each compile verifies AP50 on the default validation set, and the table shows it.
``--before`` also builds the INT8 artifact with main's earlier settings (the image stem quantized
too: ``float_stem = false``) through a copy of the target profile, and measures it beside them;
``--openvino`` adds the `intel-cpu` INT8 artifact (OpenVINO + NNCF) with the same threads, for what
this CPU does in INT8 outside ONNX Runtime. ``--profile`` prints, per ONNX Runtime engine, the
kernels ORT ran and their share of the time (SessionOptions.enable_profiling).

The engines are timed interleaved (one call of each in turn, the order rotating), with the same
intra-op threads, after the same warm-up, so a busy machine slows them alike; each repeat gives
a ratio and the table reports the median of the repeats and their range, and the fastest call
of each engine (the closest a busy machine gets to an idle one). The machine's load
average is printed before and after: on a shared 2-core machine absolute figures move with it,
the ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def before_profile(tmp: Path) -> Path:
    """The onnxruntime target as main had it: int8 with the stem quantized."""
    text = (ROOT / "targets" / "onnxruntime.toml").read_text()
    text = text.replace("float_stem = true", "float_stem = false")
    if "float_stem = false" not in text:
        text = text.replace("[build]\n", "[build]\nfloat_stem = false\n")
    path = tmp / "onnxruntime-before.toml"
    path.write_text(text)
    return path


def build(target: str | Path, precision: str, batch: int) -> tuple[Path, dict]:
    from edgecsp.bench.on_demand import ensure_artifact

    root, manifest, _ = ensure_artifact("demo", str(target), precision, ROOT / "artifacts", batch=batch,
                                        progress=lambda line: print(line, file=sys.stderr, flush=True))
    return root, manifest


def kernel_profile(engine: Path, batch: int, threads: int, calls: int = 20) -> list[tuple[str, int, float]]:
    """(op type, nodes, ms per call) of the kernels ORT ran, slowest first."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.enable_profiling = True
    so.profile_file_prefix = str(Path(tempfile.gettempdir()) / "ort-int8-profile")
    session = ort.InferenceSession(str(engine), so, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).random((batch, *inp.shape[1:]), dtype=np.float32)
    for _ in range(calls):
        session.run(None, {inp.name: x})
    trace = Path(session.end_profiling())
    try:
        events = json.loads(trace.read_text())
    finally:
        trace.unlink(missing_ok=True)
    per_op: dict[str, list] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            entry = per_op.setdefault(e["args"]["op_name"], [set(), 0.0])
            entry[0].add(e["name"])
            entry[1] += e["dur"] / 1e3 / calls
    return sorted(((op, len(nodes), ms) for op, (nodes, ms) in per_op.items()), key=lambda r: -r[2])


def measure(runners: dict, batch: int, warmup: int, iterations: int, repeats: int) -> dict:
    """Per engine: the latency of every call, per repeat, timed in turn with the others."""
    shape = next(iter(runners.values())).input_shape
    x = np.random.default_rng(0).random((batch, *shape[1:]), dtype=np.float32)
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name].run(x)
    times: dict[str, list[list[float]]] = {name: [] for name in names}
    for _ in range(repeats):
        round_times: dict[str, list[float]] = {name: [] for name in names}
        for i in range(iterations):
            for k in range(len(names)):
                name = names[(i + k) % len(names)]  # rotate who goes first
                t = time.perf_counter()
                runners[name].run(x)
                round_times[name].append(time.perf_counter() - t)
        for name in names:
            times[name].append(round_times[name])
    return times


def summarize(times: dict, batch: int, reference: str) -> dict:
    out = {}
    ref_p50 = [float(np.median(r)) for r in times[reference]]
    ref_min = min(min(r) for r in times[reference])
    for name, rounds in times.items():
        p50s = [float(np.median(r)) for r in rounds]
        every = np.concatenate([np.asarray(r) for r in rounds])
        ratios = [a / b for a, b in zip(ref_p50, p50s)]
        out[name] = {"p50_ms": round(float(np.median(every)) * 1e3, 3),
                     # The fastest call: the closest this run gets to the engine on an idle machine.
                     "min_ms": round(float(np.min(every)) * 1e3, 3),
                     "speedup_vs_fp32_min": round(ref_min / float(np.min(every)), 3),
                     "p90_ms": round(float(np.percentile(every, 90)) * 1e3, 3),
                     "throughput_ips": round(batch / float(np.mean(every)), 1),
                     "speedup_vs_fp32_p50": round(float(np.median(ratios)), 3),
                     "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)]}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (one artifact each)")
    parser.add_argument("--iterations", type=int, default=60, help="timed calls per engine per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per engine first")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads for every engine "
                        "(default: ORT's, the physical cores)")
    parser.add_argument("--before", action="store_true", help="also build and measure main's earlier int8 "
                        "settings (stem quantized)")
    parser.add_argument("--openvino", action="store_true", help="also measure the intel-cpu INT8 artifact")
    parser.add_argument("--profile", action="store_true", help="print the kernels each ORT engine ran")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here too")
    args = parser.parse_args()

    from edgecsp.backends import get_backend
    from edgecsp.backends.onnxruntime_backend import physical_cores
    from edgecsp.targets import load_target

    backend = get_backend("onnxruntime")
    threads = args.threads or physical_cores()
    batches = [int(b) for b in args.batch.split(",") if b.strip()]
    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                                "onnxruntime": backend.version()},
                    "threads": threads, "iterations": args.iterations, "repeats": args.repeats,
                    "warmup": args.warmup, "batches": {}}
    with tempfile.TemporaryDirectory(prefix="ort-int8-") as tmp:
        targets: dict[str, tuple[str | Path, str]] = {"ORT FP32": ("onnxruntime", "fp32"),
                                                      "ORT INT8": ("onnxruntime", "int8")}
        if args.before:
            targets["ORT INT8 (main before)"] = (before_profile(Path(tmp)), "int8")
        if args.openvino:
            targets["OpenVINO INT8 (intel-cpu)"] = ("intel-cpu", "int8")
        for batch in batches:
            artifacts = {name: build(target, precision, batch) for name, (target, precision) in targets.items()}
            runners = {name: get_backend(load_target(str(targets[name][0])).backend).open_runner(
                           root / manifest["engine"], manifest, threads=threads)
                       for name, (root, manifest) in artifacts.items()}
            load_before = os.getloadavg()
            try:
                times = measure(runners, batch, args.warmup, args.iterations, args.repeats)
            finally:
                for runner in runners.values():
                    runner.close()
            load_after = os.getloadavg()
            rows = summarize(times, batch, "ORT FP32")
            for name, (_, manifest) in artifacts.items():
                acc = manifest.get("accuracy") or {}
                rows[name]["ap50"] = (acc.get("artifact") or {}).get("AP50")
                rows[name]["ap50_drop_points"] = acc.get("ap50_drop_points")
                info = (manifest.get("backend") or {}).get("info") or {}
                rows[name]["float_stem"] = info.get("float_stem")
            report["batches"][str(batch)] = {"load_before": [round(v, 2) for v in load_before],
                                             "load_after": [round(v, 2) for v in load_after], "engines": rows}
            if args.profile:
                for name, (root, manifest) in artifacts.items():
                    if (manifest.get("backend") or {}).get("name") != "onnxruntime":
                        continue
                    ops = kernel_profile(root / manifest["engine"], batch, threads)
                    total = sum(ms for _, _, ms in ops) or 1.0
                    rows[name]["kernels"] = [{"op": op, "nodes": n, "ms": round(ms, 3)} for op, n, ms in ops]
                    print(f"\nbatch {batch}, {name}: {total:.2f} ms of kernels per call", file=sys.stderr)
                    for op, n, ms in ops[:10]:
                        print(f"  {op:24s} {n:4d} nodes {ms:8.2f} ms {100 * ms / total:5.1f}%", file=sys.stderr)
    print(f"\nDemo detector, ONNX Runtime {report['machine']['onnxruntime']} CPU EP, {threads} intra-op threads, "
          f"{args.iterations} calls x {args.repeats} repeats per engine (interleaved), {args.warmup} warm-up calls, "
          f"{report['machine']['cpus']} CPUs.\n")
    print("| batch | engine | p50 ms | p90 ms | images/s | vs ORT FP32 (p50, range over repeats) | fastest call ms "
          "(vs FP32) | AP50 (drop) | load 1m before -> after |")
    print("|---:|---|---:|---:|---:|---|---|---|---|")
    for batch, entry in report["batches"].items():
        load = f"{entry['load_before'][0]:.2f} -> {entry['load_after'][0]:.2f}"
        for name, r in entry["engines"].items():
            ap = "-" if r["ap50"] is None else f"{r['ap50']:.4f} ({r['ap50_drop_points']:+.2f})"
            lo, hi = r["speedup_range"]
            print(f"| {batch} | {name} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['throughput_ips']:.1f} | "
                  f"**{r['speedup_vs_fp32_p50']:.2f}x** ({lo:.2f}-{hi:.2f}) | {r['min_ms']:.2f} "
                  f"({r['speedup_vs_fp32_min']:.2f}x) | {ap} | {load} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
