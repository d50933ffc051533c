"""One benchmark of an artifact and its baselines: the library behind ``python -m edgecsp.benchmark``.

For every thing measured (the artifact, then each baseline) and every scenario, in one process:
open it (load/compile time), time the first inference alone, then the harness's warm-up and
measured phase with the memory counters running; the process's peak RSS is taken over that
whole window (reset per window). Figures that depend on the model's graph (traffic, MACs) come
from the artifact's architecture; the platform peaks are measured once per machine and cached.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable  # typing's: collections.abc.Callable[...] is not subscriptable at run time on 3.8

import numpy as np

from edgecsp.errors import EdgeCSPError
from edgecsp.faults import failpoint

Progress = Callable[[str], None]
DEFAULTS = {"scenario": "latency", "duration_s": 10.0, "warmup_s": 2.0, "min_queries": 200}


@dataclass
class BenchmarkOptions:
    artifact: Path | None = None
    target: str | None = None
    model: str | None = None  # --target: what to compile (demo); --artifact: its FP32 model (manifest's source)
    precision: str | None = None
    scenarios: list[str] | None = None  # None: the profile's [benchmark] scenario
    duration_s: float | None = None
    warmup_s: float | None = None
    min_queries: int | None = None
    batch: int | None = None
    streams: int | None = None
    compare: list[str] | str = field(default_factory=list)  # "torch,onnxruntime-fp32" or a list
    accuracy: bool = False
    eval_images: int | None = None
    data: Path | None = None  # images to feed (and to evaluate on): default the shapes val split
    num_inputs: int = 8  # distinct input batches cycled through
    platform: bool = True  # measure (or read the cached) platform peaks
    refresh_platform: bool = False
    counters: bool = True
    artifacts_dir: Path = Path("artifacts")
    libraries: list[Path] = field(default_factory=list)  # backend extension/plugin libraries the user named


def _profile_for(manifest: dict) -> Any:
    """The current profile file for the artifact's target, else the copy in its manifest."""
    from edgecsp.targets import TargetProfile, load_target

    target = dict(manifest.get("target") or {})
    try:
        return load_target(target.get("name", ""))
    except EdgeCSPError:
        known = set(TargetProfile.__dataclass_fields__)
        return TargetProfile(**{k: v for k, v in target.items() if k in known and k != "precisions"},
                             precisions=tuple(target.get("precisions", ("fp32",))))


def settings_for(opts: BenchmarkOptions, profile: Any) -> tuple[list[str], dict[str, Any]]:
    bench = {**DEFAULTS, **(profile.benchmark or {})}
    scenarios = opts.scenarios or [bench["scenario"]]
    s = {"duration_s": float(opts.duration_s if opts.duration_s is not None else bench["duration_s"]),
         "warmup_s": float(opts.warmup_s if opts.warmup_s is not None else bench["warmup_s"]),
         "min_queries": int(opts.min_queries if opts.min_queries is not None else bench["min_queries"]),
         "streams": opts.streams}
    return scenarios, s


def input_batches(size: int, batch: int, n: int, data: Path | None) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """``n`` preprocessed batches of real validation images (letterboxed once, outside the timing)."""
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.preprocess import letterbox, to_tensor_batch
    from edgecsp.data.shapes import validation_data

    data = validation_data(data)
    dataset = resolve_dataset(data)
    if len(dataset) == 0:
        raise EdgeCSPError(f"{data} holds no images to benchmark with; pass --data with a validation set")
    raw = [dataset[i % len(dataset)][0] for i in range(n * batch)]
    boxed = [letterbox(im, size)[0] for im in raw]
    batches = [to_tensor_batch(boxed[i * batch:(i + 1) * batch]) for i in range(n)]
    return batches, raw[: min(4, len(raw))], f"{len(set(range(min(n * batch, len(dataset)))))} images of {data}"


def _inputs(root: Path, manifest: dict, size: int, batch: int,
            opts: BenchmarkOptions) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """The benchmark's input batches: ``--data``, else the verification set a Jetson artifact
    carries (a device has no data to generate), else the default validation set."""
    from edgecsp.manifest import Manifest

    verify = (Manifest.of(manifest).bundle or {}).get("files", {}).get("verify")
    if opts.data is not None or not verify:
        return input_batches(size, batch, opts.num_inputs, opts.data)
    from edgecsp import verifyset
    from edgecsp.data.preprocess import to_tensor_batch

    images = verifyset.load(Path(root) / verify).arrays["images"]
    if images.shape[1:3] != (size, size):
        raise EdgeCSPError(f"{verify} holds {images.shape[1]}x{images.shape[2]} inputs, the engine takes {size}x{size}; "
                           "pass --data")
    n = opts.num_inputs
    boxed = [images[i % len(images)] for i in range(n * batch)]
    batches = [to_tensor_batch(boxed[i * batch:(i + 1) * batch]) for i in range(n)]
    # raw_images feed the baselines' exports only; letterboxed inputs are images too
    return batches, boxed[: min(4, len(boxed))], f"{min(n * batch, len(images))} images of the artifact's {verify}"


def _graph(manifest: dict, size: int) -> tuple[Any, dict[str, int]]:
    """(the PyTorch module or None, MACs and CIO per frame): the manifest's counts where the host
    recorded them (a device has no torch), else counted on the model."""
    from edgecsp.bench import traffic
    from edgecsp.manifest import Manifest

    typed = Manifest.of(manifest)
    counts = typed.graph_counts
    if counts is not None and list(typed.model.get("input_size") or [])[:1] == [size]:
        return None, counts
    arch = traffic.model_from_manifest(manifest)
    return arch, traffic.graph_counts(arch, size)


def _artifact_batch(manifest: dict, wanted: int | None) -> int:
    dim = manifest["inputs"][0]["shape"][0]
    if isinstance(dim, int) and dim > 0:
        if wanted and wanted != dim:
            raise EdgeCSPError(f"the artifact's engine has a fixed batch of {dim}; drop --batch or rebuild with "
                               f"python -m edgecsp.compile --batch {wanted}")
        return dim
    return int(wanted or 1)


# Backends whose runners take a latency/throughput mode (OpenVINO's performance hint with its
# streams; ONNX Runtime's threads per call and concurrent calls).
MODE_BACKENDS = ("openvino", "onnxruntime")


def _runner_options(backend: str, scenario: str, libraries: list[Path] | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {"mode": scenario} if backend in MODE_BACKENDS else {}
    if backend == "openvino":
        options["u8_input"] = False  # the harness times the engine on float NCHW tensors
    if libraries:
        options["libraries"] = list(libraries)
    return options


@dataclass
class _Run:
    """What every measurement of one benchmark shares: the artifact, its inputs and the figures
    that depend on the graph and the machine."""

    opts: BenchmarkOptions
    root: Path
    manifest: Any  # edgecsp.manifest.Manifest
    built: bool  # compiled now (benchmark --target)
    profile: Any
    scenarios: list[str]
    settings: dict[str, Any]
    size: int
    batch: int
    inputs: list[np.ndarray]
    raw_images: list[np.ndarray]
    input_source: str
    peak: dict[str, Any] | None
    arch: Any
    counts: dict[str, int]
    compare: list[str]
    machine: dict[str, Any]  # described before anything runs
    model: Any = None  # the FP32 PyTorch model (baselines)
    model_note: Any = None
    engine_weights: dict[int, tuple[int, str] | None] = field(default_factory=dict)
    engine_threads: int | None = None  # the artifact's threads: the PyTorch baseline gets as many

    @property
    def name(self) -> str:
        return Path(self.root).name


def run_benchmark(opts: BenchmarkOptions, progress: Progress = print) -> dict[str, Any]:
    run = _prepare(opts, progress)
    prepared = {b: _prepare_baseline(run, b) for b in run.compare}  # exports, untimed, before any measurement
    from edgecsp.bench.load import LoadMonitor, warning

    results = []
    with LoadMonitor() as load_monitor:  # before and during: a busy machine is said, not hidden
        for kind, subject in [("artifact", run.name)] + [("baseline", b) for b in run.compare]:
            for scenario in run.scenarios:
                results.append(_measure_subject(run, kind, subject, scenario, prepared.get(subject), progress))
    load = load_monitor.result()
    busy = warning(load)
    if busy:
        progress(busy)
    add_ratios(results)
    accuracy = _accuracy(run, progress) if opts.accuracy else None
    return _report(run, results, accuracy, load)


def _prepare(opts: BenchmarkOptions, progress: Progress) -> _Run:
    """Open (or compile) the artifact, and everything measured once: inputs, platform peak, graph."""
    from edgecsp.bench import baselines as bl
    from edgecsp.bench.harness import Settings

    if (opts.artifact is None) == (opts.target is None):
        raise EdgeCSPError("pass exactly one of --artifact DIR or --target T")
    if opts.accuracy:
        from edgecsp.gate import check_image_count

        check_image_count(opts.eval_images, "--eval-images")  # before minutes of benchmarking
    compare = bl.parse_compare(opts.compare)
    root, manifest, built = _subject(opts, progress)
    profile = _profile_for(manifest.raw)
    scenarios, s = settings_for(opts, profile)
    for sc in scenarios:
        Settings(scenario=sc, **s)  # validates before any work
    size = manifest.input_size
    batch = _artifact_batch(manifest.raw, opts.batch)
    inputs, raw_images, input_source = _inputs(root, manifest.raw, size, batch, opts)
    from edgecsp.bench import machine

    info = machine.describe()
    peak = _platform_peak(opts, profile, progress)
    arch, counts = _graph(manifest.raw, size)
    run = _Run(opts, root, manifest, built, profile, scenarios, s, size, batch, inputs, raw_images, input_source, peak,
               arch, counts, compare, info)
    if compare:
        run.model, run.model_note = bl.model_for(manifest.raw, opts.model if opts.artifact is not None else None)
    return run


def _subject(opts: BenchmarkOptions, progress: Progress) -> tuple[Path, Any, bool]:
    """(root, Manifest, compiled now?): the artifact named, else the target's, compiled on demand."""
    from edgecsp.artifact import open_manifest

    if opts.artifact is not None:
        root, manifest = open_manifest(opts.artifact)  # checksums first: a tampered engine never runs
        return root, manifest, False
    from edgecsp.bench.on_demand import ensure_artifact
    from edgecsp.manifest import Manifest

    root, raw, built = ensure_artifact(opts.model or "demo", str(opts.target), opts.precision, opts.artifacts_dir,
                                       opts.batch, progress=progress)
    return root, Manifest.of(raw), built


def _platform_peak(opts: BenchmarkOptions, profile: Any, progress: Progress) -> dict[str, Any] | None:
    if not opts.platform:
        return None
    from edgecsp.bench.bandwidth import platform_peak

    progress("platform peak: STREAM copy/triad and matrix multiply (measured once per machine, then cached)")
    peak = platform_peak(refresh=opts.refresh_platform, hardware=profile.hardware)
    gmacs = f"{peak['peak_gmacs']} GMAC/s" if peak.get("peak_gmacs") else "compute not measured (no torch here)"
    progress(f"  {peak['peak_gbs']} GB/s, {gmacs}{' (cached)' if peak.get('cached') else ''}")
    return peak


def _prepare_baseline(run: _Run, subject: str) -> Any:
    from edgecsp.bench import baselines as bl

    return bl.prepare_baseline(subject, run.model, run.size, run.batch, run.raw_images)  # exports, untimed


def _open_counters(run: _Run) -> Any:
    from edgecsp.bench.counters import MemoryCounters, open_counters

    return open_counters(run.profile.hardware, run.profile.benchmark) if run.opts.counters else MemoryCounters()


def _measure_subject(run: _Run, kind: str, subject: str, scenario: str, prepared: Any,
                     progress: Progress) -> dict[str, Any]:
    """One thing (the artifact or a baseline) in one scenario: load, first inference, measured phase."""
    import edgecsp
    from edgecsp.bench import baselines as bl
    from edgecsp.bench.harness import Settings, first_inference_ms, measure
    from edgecsp.bench.memory import PeakRSS, backend_memory

    s = run.settings
    label = subject if kind == "artifact" else bl.NAMES[subject]
    progress(f"{label}: {scenario} scenario ({s['warmup_s']} s warm-up, >= {s['duration_s']} s "
             f"and >= {s['min_queries']} queries)")
    counters = _open_counters(run)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        if kind == "artifact":
            options = _runner_options(run.manifest.backend_name, scenario, run.opts.libraries)
            runner = edgecsp.load(run.root, **options).runner
        else:
            runner = bl.open_baseline(subject, run.model, run.size, run.batch, prepared, threads=run.engine_threads)
        load_s = time.perf_counter() - t0
        try:
            first = first_inference_ms(runner, run.inputs[0])
            failpoint("benchmark.measure")
            m = measure(runner, run.inputs, Settings(scenario=scenario, **s), on_start=counters.start,
                        on_end=counters.stop)
            desc = runner.describe()
            if kind == "artifact":
                run.engine_threads = run.engine_threads or _threads_of(desc)
            sample = _Sample(kind, label, subject, scenario, m, mem, desc, backend_memory(runner), first, load_s,
                             counters.result, *_cost(run, kind, subject, runner, desc))
        finally:
            runner.close()
    entry = _entry(run, sample)
    progress(f"  {entry['fps']:.1f} FPS, p50 {entry['latency_ms']['p50']:.2f} ms, "
             f"p99 {entry['latency_ms']['p99']:.2f} ms, {m.queries} queries, peak RSS {entry['peak_rss_mb']} MB")
    st = entry["stalls"]
    if st["count"]:
        progress(f"  {st['count']} stalls (> {st['factor']:g}x the median), {st['fraction_of_time']:.0%} of the "
                 f"time, worst {st['worst_over_median']}x the median")
    return entry


def _threads_of(desc: dict[str, Any]) -> int | None:
    """The threads an engine computes with, as its runner describes them (None: unknown)."""
    for key in ("threads", "intra_op_threads"):
        value = desc.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _cost(run: _Run, kind: str, subject: str, runner: Any, desc: dict[str, Any]) -> tuple[Any, int | None, str, str]:
    """(traffic cost per frame, artifact bytes on disk, precision, arithmetic precision)."""
    from edgecsp.bench import traffic
    from edgecsp.bench.memory import artifact_bytes

    if kind == "baseline":
        if subject == "onnxruntime-fp32":
            weight_bytes, source = traffic.onnx_weight_bytes(runner.path), "ONNX initializers (fp32)"
        else:
            weight_bytes, source = traffic.torch_weight_bytes(run.model, 4), "PyTorch module, fp32 (BN folded)"
        return traffic.cost(run.counts, weight_bytes, source, "fp32", 4), None, "fp32", "fp32"
    precision, rt = run.manifest.precision, desc.get("inference_precision")
    fb = traffic.RUNTIME_FLOAT_BYTES.get(rt, 4)
    if fb not in run.engine_weights:  # reads the engine's graph: once per runtime precision
        run.engine_weights[fb] = traffic.engine_weight_bytes(run.root, run.manifest.raw, fb)
    wb = run.engine_weights[fb]
    if wb is None and run.arch is None:
        run.arch = traffic.model_from_manifest(run.manifest.raw)
    weight_bytes, source = wb if wb else (traffic.torch_weight_bytes(run.arch, 4), "PyTorch module, fp32")
    cost = traffic.cost(run.counts, weight_bytes, source, precision, traffic.activation_bytes(precision, rt))
    return cost, artifact_bytes(run.root, run.manifest.raw), precision, traffic.compute_precision(precision, rt)


@dataclass
class _Sample:
    """What one measurement of one subject in one scenario gave."""

    kind: str  # artifact or baseline
    label: str
    subject: str
    scenario: str
    m: Any  # edgecsp.bench.harness.Measurement
    mem: Any  # PeakRSS
    desc: dict[str, Any]  # runner.describe()
    bmem: dict[str, Any]  # backend memory
    first: float  # first inference, ms
    load_s: float
    counters: Any  # the memory counters' result
    cost: Any  # traffic cost per frame
    disk: int | None  # artifact bytes
    precision: str
    arithmetic: str


def _entry(run: _Run, x: _Sample) -> dict[str, Any]:
    """One row of the report's results."""
    from edgecsp.bench import traffic
    from edgecsp.bench.harness import stall_stats

    m, mem, desc, bmem, kind = x.m, x.mem, x.desc, x.bmem, x.kind
    bw, compute = traffic.bandwidth_figures(x.cost, m.fps, run.batch, run.peak, x.counters, x.arithmetic)
    lat = m.latency_ms()
    entry = {
        "name": x.label, "kind": kind, "scenario": x.scenario,
        "backend": desc.get("backend", run.manifest.backend_name if kind == "artifact" else x.subject),
        "target": run.manifest.target_name if kind == "artifact" else None,
        "precision": x.precision, "batch": run.batch,
        "fps": round(m.fps, 3), "latency_ms": {k: round(v, 4) for k, v in lat.items()},
        "latency_quantiles_ms": [round(float(v), 4) for v in np.percentile(m.latencies_ns / 1e6, np.arange(101))],
        "first_inference_ms": round(x.first, 3), "load_s": round(x.load_s, 4),
        "queries": m.queries, "frames": m.frames, "wall_s": round(m.wall_s, 4),
        "stalls": stall_stats(m.latencies_ns),
        "warmup_queries": m.warmup_queries, "streams": m.streams, "mode": m.mode,
        "peak_rss_mb": mem.as_dict()["peak_rss_mb"],
        "memory": {**mem.as_dict(), "backend_mb": bmem["mb"], "backend_reason": bmem["reason"],
                   "artifact_mb": round(x.disk / 1e6, 4) if x.disk is not None else None},
        "bandwidth": bw, "compute": compute, "description": desc,
    }
    if kind == "baseline":
        entry["model_weights"] = run.model_note
    return entry


def _accuracy(run: _Run, progress: Progress) -> dict[str, Any]:
    """The compile's gate (edgecsp.gate.GateResult) on the artifact as loaded here."""
    import edgecsp
    from edgecsp.bench.accuracy import check_accuracy

    progress("accuracy: AP/AP50 on the validation set against the FP32 PyTorch reference")
    opts = run.opts
    with edgecsp.load(run.root, **_runner_options(run.manifest.backend_name, "latency", opts.libraries)) as predictor:
        gate = check_accuracy(predictor.predict_batch, run.manifest.raw, opts.data, opts.eval_images,
                              opts.model if opts.artifact is not None else None)
    progress(f"  AP50 {(gate.candidate or {})['AP50']:.4f} vs {(gate.reference or {})['AP50']:.4f} "
             f"(drop {gate.ap50_drop_points:+.2f} points, tolerance {gate.tolerance_points}): "
             f"{'pass' if gate.passed else 'FAIL'}")
    return gate.to_report()


def _report(run: _Run, results: list[dict[str, Any]], accuracy: dict[str, Any] | None,
            load: dict[str, Any]) -> dict[str, Any]:
    from edgecsp import __version__
    from edgecsp.bench.memory import artifact_bytes
    from edgecsp.bench.report import SCHEMA

    m, opts = run.manifest, run.opts
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecsp_version": __version__,
        "machine": run.machine,
        "load": load,
        "platform_peak": run.peak,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
                     "scenarios": run.scenarios, **run.settings, "batch": run.batch, "compare": run.compare,
                     "input_source": run.input_source, "input_size": run.size},
        "artifact": {"path": str(run.root), "name": run.name, "built_now": run.built, "target": m.target_name,
                     "backend": m.raw["backend"], "precision": m.raw.get("precision", "?"), "model": m.model_name,
                     "model_hash": m.model_hash, "bytes": artifact_bytes(run.root, m.raw),
                     "accuracy_status": m.accuracy_status},
        "model": {"macs_per_frame": run.counts["macs"], "cio_elements_per_frame": run.counts["cio"],
                  "input_size": run.size},
        "accuracy": accuracy,
        "results": results,
    }


RATIO_FIELDS = {
    "fps": lambda r: r["fps"],
    "latency_p50": lambda r: r["latency_ms"]["p50"],
    "latency_p99": lambda r: r["latency_ms"]["p99"],
    "peak_rss": lambda r: r["peak_rss_mb"],
    "model_traffic": lambda r: r["bandwidth"]["model_traffic_mb_per_frame"],
    "achieved_gbs": lambda r: r["bandwidth"]["achieved_gbs"],
}


def add_ratios(results: list[dict[str, Any]]) -> None:
    """``ratios[baseline] = {figure: this / baseline}`` for every baseline of the same scenario."""
    for r in results:
        r["ratios"] = {}
        for b in results:
            if b["kind"] != "baseline" or b is r or b["scenario"] != r["scenario"]:
                continue
            ratios = {}
            for key, get in RATIO_FIELDS.items():
                try:
                    den = float(get(b))
                    ratios[key] = round(float(get(r)) / den, 4) if den else None
                except (TypeError, ValueError, KeyError):
                    ratios[key] = None
            r["ratios"][b["name"]] = ratios
