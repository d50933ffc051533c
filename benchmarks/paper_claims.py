"""The CSPNet paper's question on this machine: does CSP's cut in computation show up as speed?

    python benchmarks/paper_claims.py [--targets onnxruntime:fp32,onnxruntime:int8,intel-cpu:fp32,intel-cpu:int8]
                                      [--pairs all|classifiers|detectors|NAME,...] [--input-size 128]
                                      [--iterations 10] [--warmup 3] [--quick] [--out runs/paper_claims]
    python benchmarks/paper_claims.py --target jetson        # on a Jetson with TensorRT: fp16 and int8

Each CSP / non-CSP twin of the model zoo (the classifier pairs the paper compares, and the
detectors with their backbone swapped for the non-CSP one) is exported with random weights (speed
does not depend on them; accuracy is not measured here), built for each target and precision
through the target's own backend (INT8: its calibration, on random images), and the two twins are
timed interleaved, batch 1, latency mode. Each row sets the BFLOPs ratio (CSP / baseline, Darknet's
count from edgecsp.complexity at the input size used) next to the p50 latency ratio.

Writes ``paper-claims.json``, ``paper-claims.md`` (the table) and ``paper-claims.png`` (latency
ratio against BFLOPs ratio) to --out. The default run uses a small input (128) and a few calls per
model so that it finishes in about 10 minutes on a 2-core machine; ``--quick`` is a smoke run (one
classifier and one detector pair, 64 px, ONNX Runtime FP32 only). A target whose backend is not
installed, or that cannot build an engine here (TensorRT without a GPU), is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Pair:
    """A twin: the baseline and its CSP version. Detectors are (backbone, neck config) pairs."""

    kind: str  # "classifier" or "detector"
    baseline: str  # zoo backbone name (a detector pair: the baseline backbone)
    csp: str  # zoo backbone name, or a zoo detector name

    @property
    def label(self) -> str:
        if self.kind == "detector":
            return f"{self.csp} (backbone {self.baseline} vs {_detector_backbone(self.csp)})"
        return f"{self.baseline} vs {self.csp}"


# Cheapest first within each kind: a run cut short still has the small models.
CLASSIFIER_PAIRS = [Pair("classifier", a, b) for a, b in (
    ("mobilenetv2", "cspmobilenetv2"), ("peleenet", "csppeleenet"), ("resnet50", "cspresnet50"),
    ("resnext50", "cspresnext50"), ("darknet53", "cspdarknet53"), ("densenet201-elastic", "cspdensenet201-elastic"))]
# The paper's detectors with the CSP backbone swapped for its plain twin (same neck and head).
DETECTOR_PAIRS = [Pair("detector", a, b) for a, b in (
    ("peleenet", "csppeleenet-efm"), ("resnet50", "cspresnet50-panet-spp"), ("resnext50", "cspresnext50-panet-spp"),
    ("darknet53", "cspdarknet53-panet-spp"))]
QUICK_PAIRS = [Pair("classifier", "peleenet", "csppeleenet"), Pair("detector", "peleenet", "csppeleenet-efm")]
DEFAULT_TARGETS = "onnxruntime:fp32,onnxruntime:int8,intel-cpu:fp32,intel-cpu:int8"
CALIBRATION_IMAGES = 4  # random images: enough for ranges that make the int8 kernels run


def _detector_backbone(name: str) -> str:
    from edgecsp.models.detector import detector_config

    return detector_config(name).backbone


def build_model(pair: Pair, which: str) -> Any:
    """The twin's torch module (random weights, eval mode): an ImageNet classifier or a detector."""
    import torch

    torch.manual_seed(0)
    if pair.kind == "classifier":
        from edgecsp.models.zoo import build_backbone

        return build_backbone(pair.baseline if which == "baseline" else pair.csp, num_classes=1000).eval()
    from dataclasses import replace

    from edgecsp.models.detector import build_detector, detector_config

    config = detector_config(pair.csp)
    if which == "baseline":
        config = replace(config, backbone=pair.baseline, description=f"{pair.csp} on {pair.baseline}")
    return build_detector(config).eval()


def bflops(model: Any, size: int) -> float:
    """Darknet BFLOPs (2 x conv MACs / 1e9) of the module as exported, from edgecsp.complexity."""
    from edgecsp.complexity import profile

    return float(profile(model, (size, size))["bflops"])


def export(model: Any, pair: Pair, size: int, path: Path) -> Path:
    """FP32 ONNX with edgecsp's input and output names; detectors through edgecsp's own export."""
    if pair.kind == "detector":
        from edgecsp.onnx_writer import export_onnx

        rng = np.random.default_rng(0)
        parity = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8)]
        export_onnx(model, path, input_size=size, parity_images=parity, simplify=False)
        return path
    import io

    import onnx
    import torch

    from edgecsp.onnx_writer import INPUT_NAME, OUTPUT_NAME

    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), buf, dynamo=False,  # type: ignore[arg-type]
                          opset_version=17,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True)
    onnx.save(onnx.load_from_string(buf.getvalue()), str(path))
    return path


def open_engine(target: str, precision: str, onnx_path: Path, out_dir: Path, detector: bool, size: int,
                threads: int | None = None) -> Any:
    """Build ``onnx_path`` for (target, precision) with the target's backend; a runner on the result."""
    from edgecsp.backends import get_backend
    from edgecsp.backends.base import BuildRequest
    from edgecsp.calibration import CalibrationRecipe, CalibrationSet
    from edgecsp.errors import EdgeCSPError
    from edgecsp.targets import load_target

    profile = load_target(target)
    backend = get_backend(profile.backend)
    calib = None
    recipe = CalibrationRecipe(name="random", num_images=CALIBRATION_IMAGES, keep_head_float=detector)
    if precision == "int8":
        images = np.random.default_rng(0).random((CALIBRATION_IMAGES, 3, size, size), dtype=np.float32)
        calib = CalibrationSet(images=images, data_hash="random", sources=[])
    out_dir.mkdir(parents=True, exist_ok=True)
    request = BuildRequest(onnx_path=onnx_path, precision=precision, profile=profile, out_dir=out_dir,
                           calibration=calib, validate=None, options={**profile.build, "recipe": recipe})
    result = backend.build(request)
    if result.info.get("engine_built") is False:  # a TensorRT bundle: no engine on this machine
        raise EdgeCSPError(f"{target} builds no engine here ({result.info.get('why_no_engine')})")
    manifest = {"precision": precision, "engine": result.engine, "files": result.files,
                "backend": {"name": backend.name, "version": backend.version(), "info": result.info},
                "target": {"name": profile.name, "device": profile.device, "build": profile.build}}
    # CPU backends: the same intra-op threads for every model (1 by default: a thread pool that
    # spins loses its time slices to other processes on a busy machine; one thread degrades evenly).
    options = {"threads": threads} if threads and backend.name in ("onnxruntime", "openvino") else {}
    return backend.open_runner(out_dir / result.engine, manifest, **options)


def time_twins(runners: dict[str, Any], size: int, warmup: int, iterations: int) -> dict[str, float]:
    """p50 latency (ms) of each runner, timed in turn so that machine load hits both alike."""
    x = np.random.default_rng(1).random((1, 3, size, size), dtype=np.float32)
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name].run(x)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iterations):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            t = time.perf_counter()
            runners[name].run(x)
            times[name].append(time.perf_counter() - t)
    return {name: round(float(np.median(v)) * 1e3, 3) for name, v in times.items()}


def measure_pair(pair: Pair, targets: list[tuple[str, str]], size: int, warmup: int, iterations: int,
                 work: Path, progress: Callable[[str], None] = print, threads: int | None = 1) -> list[dict]:
    """One row per (target, precision): BFLOPs of both twins, their p50 latency, both ratios."""
    from edgecsp.errors import EdgeCSPError

    work.mkdir(parents=True, exist_ok=True)
    models = {which: build_model(pair, which) for which in ("baseline", "csp")}
    flops = {which: bflops(m, size) for which, m in models.items()}
    stem = pair.csp if pair.kind == "detector" else f"{pair.baseline}-{pair.csp}"
    paths = {which: export(m, pair, size, work / f"{stem}-{which}.onnx") for which, m in models.items()}
    del models
    rows = []
    for target, precision in targets:
        row: dict[str, Any] = {"pair": pair.label, "kind": pair.kind, "baseline": pair.baseline, "csp": pair.csp,
                               "input": size, "target": target, "precision": precision, "threads": threads,
                               "bflops_baseline": round(flops["baseline"], 4), "bflops_csp": round(flops["csp"], 4),
                               "bflops_ratio": round(flops["csp"] / flops["baseline"], 4)}
        runners: dict[str, Any] = {}
        try:
            for which in ("baseline", "csp"):
                runners[which] = open_engine(target, precision, paths[which], work / f"{stem}-{which}-{target}-{precision}",
                                             pair.kind == "detector", size, threads)
            p50 = time_twins(runners, size, warmup, iterations)
        except EdgeCSPError as err:
            row["skipped"] = str(err)
            progress(f"  {pair.label} {target} {precision}: skipped ({err})")
            rows.append(row)
            continue
        finally:
            for runner in runners.values():
                runner.close()
        row.update(p50_ms_baseline=p50["baseline"], p50_ms_csp=p50["csp"],
                   latency_ratio=round(p50["csp"] / p50["baseline"], 4))
        progress(f"  {pair.label} {target} {precision}: BFLOPs x{row['bflops_ratio']:.3f}, "
                 f"latency {p50['baseline']:.2f} -> {p50['csp']:.2f} ms (x{row['latency_ratio']:.3f})")
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    header = ("| pair | target | precision | input | BFLOPs baseline → CSP | BFLOPs ratio | p50 ms baseline → CSP "
              "| latency ratio |")
    lines = [header, "|---|---|---|---:|---|---:|---|---:|"]
    for r in rows:
        flops = f"{r['bflops_baseline']:.3f} → {r['bflops_csp']:.3f}"
        if "skipped" in r:
            timing, ratio = f"skipped: {r['skipped']}", "–"
        else:
            timing, ratio = f"{r['p50_ms_baseline']:.2f} → {r['p50_ms_csp']:.2f}", f"{r['latency_ratio']:.3f}"
        lines.append(f"| {r['pair']} | {r['target']} | {r['precision']} | {r['input']} | {flops} | "
                     f"{r['bflops_ratio']:.3f} | {timing} | {ratio} |")
    return "\n".join(lines)


def int8_speedups(rows: list[dict]) -> str:
    """A by-product of the same run: each model's INT8 speed-up over FP32 on each backend."""
    p50: dict[tuple[str, str, str], float] = {}
    for r in rows:
        if "latency_ratio" in r:
            for which in ("baseline", "csp"):
                model = r[which] if r["kind"] == "classifier" or which == "csp" else f"{r['csp']} on {r['baseline']}"
                p50[(model, r["target"], r["precision"])] = r[f"p50_ms_{which}"]
    lines = ["| model | target | FP32 p50 ms | INT8 p50 ms | INT8 speed-up |", "|---|---|---:|---:|---:|"]
    for (model, target, precision), fp32 in p50.items():
        int8 = p50.get((model, target, "int8"))
        if precision == "fp32" and int8:
            lines.append(f"| {model} | {target} | {fp32:.2f} | {int8:.2f} | {fp32 / int8:.2f}x |")
    return "\n".join(lines) if len(lines) > 2 else ""


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in rows if "latency_ratio" in r]
    fig, ax = plt.subplots(figsize=(7, 5.5))
    series = sorted({(r["target"], r["precision"]) for r in measured})
    markers = "osD^vP*X"
    for i, (target, precision) in enumerate(series):
        pts = [r for r in measured if (r["target"], r["precision"]) == (target, precision)]
        ax.scatter([r["bflops_ratio"] for r in pts], [r["latency_ratio"] for r in pts], marker=markers[i % 8],
                   label=f"{target} {precision}", alpha=0.8)
    xs = [r["bflops_ratio"] for r in measured] or [1.0]
    ys = [r["latency_ratio"] for r in measured] or [1.0]
    x_lo, x_hi = min(0.6, min(xs) - 0.05), max(1.1, max(xs) + 0.05)
    # Log scale: a CSP model several times slower than its twin must not flatten the others.
    ax.set_yscale("log")
    y_lo, y_hi = min(0.5, min(ys) / 1.2), max(2.0, max(ys) * 1.2)
    ax.plot([x_lo, x_hi], [x_lo, x_hi], color="grey", lw=1, ls="--", label="latency ratio = BFLOPs ratio")
    ax.axhline(1.0, color="black", lw=0.6)
    for r in measured:
        if (r["target"], r["precision"]) == series[0]:
            ax.annotate(r["csp"], (r["bflops_ratio"], r["latency_ratio"]), fontsize=7, alpha=0.7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(x_lo, x_hi)
    ax.set_ylim(y_lo, y_hi)
    ax.set_xlabel("BFLOPs ratio, CSP / baseline")
    ax.set_ylabel("p50 latency ratio, CSP / baseline (batch 1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(result: dict, out: Path, quiet: bool = False) -> None:
    """paper-claims.{json,md,png} in ``out`` from a run's result (``note``, ``input``, ``rows``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "paper-claims.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result["rows"])
    speedups = int8_speedups(result["rows"])
    if speedups:
        table += f"\n\nINT8 over FP32, same run (not interleaved with each other):\n\n{speedups}"
    (out / "paper-claims.md").write_text(f"{result['note']}\n\n{table}\n")
    plot(result["rows"], out / "paper-claims.png", f"CSP vs non-CSP twins, input {result.get('input')}, batch 1")
    if not quiet:
        print(f"\n{result['note']}\n\n{table}\n\nwrote {out}/paper-claims.{{json,md,png}}")


def parse_targets(spec: str) -> list[tuple[str, str]]:
    from edgecsp.targets import load_target

    out = []
    for item in spec.split(","):
        target, _, precision = item.strip().partition(":")
        if not target:
            continue
        if precision:
            out.append((target, precision.lower()))
        else:  # every precision the target builds but fp32 when it has lower ones (a Jetson: fp16, int8)
            profile = load_target(target)
            out += [(target, p) for p in profile.precisions if p != "fp32" or len(profile.precisions) == 1]
    return out


def select_pairs(spec: str) -> list[Pair]:
    if spec == "all":
        return CLASSIFIER_PAIRS + DETECTOR_PAIRS
    if spec == "classifiers":
        return CLASSIFIER_PAIRS
    if spec == "detectors":
        return DETECTOR_PAIRS
    wanted = {s.strip() for s in spec.split(",")}
    chosen = [p for p in CLASSIFIER_PAIRS + DETECTOR_PAIRS if p.csp in wanted]
    if not chosen:
        from edgecsp.errors import EdgeCSPError

        raise EdgeCSPError(f"--pairs {spec!r}: name CSP models of the pairs ({', '.join(p.csp for p in CLASSIFIER_PAIRS + DETECTOR_PAIRS)}), "
                           "or all, classifiers, detectors")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", "--target", dest="targets", default=None,
                        help=f"target[:precision], comma-separated (default {DEFAULT_TARGETS}; a target alone: "
                             "its reduced precisions)")
    parser.add_argument("--pairs", default="all", help="all | classifiers | detectors | CSP names, comma-separated")
    parser.add_argument("--input-size", type=int, default=None, help="input side (default 128; --quick 64)")
    parser.add_argument("--iterations", type=int, default=None, help="timed calls per model (default 10)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of the CPU targets (default 1; "
                        "0: the backend's default)")
    parser.add_argument("--quick", action="store_true", help="smoke run: two pairs, 64 px, ORT FP32, 3 calls")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "paper_claims")
    parser.add_argument("--render", type=Path, default=None, help="only redraw the table and plot from a "
                        "paper-claims.json of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads(args.render.read_text())
        result.setdefault("input", (result["rows"] or [{}])[0].get("input"))
        render(result, args.out)
        return 0

    from edgecsp.errors import EdgeCSPError

    try:
        pairs = QUICK_PAIRS if args.quick and args.pairs == "all" else select_pairs(args.pairs)
        targets = parse_targets(args.targets or ("onnxruntime:fp32" if args.quick else DEFAULT_TARGETS))
    except EdgeCSPError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    size = args.input_size or (64 if args.quick else 128)
    iterations = args.iterations or (3 if args.quick else 10)
    usable = []
    for target, precision in targets:  # a backend that is not installed: skip the target, say why
        try:
            from edgecsp.backends import get_backend
            from edgecsp.targets import load_target

            profile = load_target(target)
            get_backend(profile.backend).version()
            profile.check_precision(precision)
            if profile.backend == "tensorrt":  # without TensorRT and a GPU it writes a bundle, no engine
                from edgecsp.backends.tensorrt.backend import can_build_here

                ok, why = can_build_here()
                if not ok:
                    raise EdgeCSPError(f"no TensorRT engine can be built here ({why}); run this on the Jetson")
            usable.append((target, precision))
        except EdgeCSPError as err:
            print(f"skip {target} {precision}: {err}", file=sys.stderr)
    if not usable:
        print("nothing to measure", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    t0 = time.time()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    threads = f"{args.threads} intra-op thread(s)" if args.threads else "the backends' default threads"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="paper-claims-") as tmp:
        for i, pair in enumerate(pairs):
            print(f"{pair.label}:", file=sys.stderr, flush=True)
            rows += measure_pair(pair, usable, size, args.warmup, iterations, Path(tmp) / str(i),
                                 progress=lambda line: print(line, file=sys.stderr, flush=True),
                                 threads=args.threads or None)
            shutil.rmtree(Path(tmp) / str(i), ignore_errors=True)  # engines of big models add up
            load_now = os.getloadavg()
            done = "" if i + 1 == len(pairs) else f" (partial: {i + 1} of {len(pairs)} pairs so far)"
            note = (f"Batch 1, input {size}x{size}, random weights, p50 of {iterations} interleaved calls per model "
                    f"after {args.warmup} warm-up calls, {threads} on CPU targets; {machine}; load average (1 min) "
                    f"{load_before[0]:.2f} at the start, {load_now[0]:.2f} now; {time.time() - t0:.0f} s{done}.")
            render({"note": note, "input": size, "rows": rows}, args.out, quiet=i + 1 < len(pairs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
