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
    from edgecsp.paths import validation_data

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
    verify = (((manifest.get("backend") or {}).get("info") or {}).get("bundle") or {}).get("files", {}).get("verify")
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

    counts = (manifest.get("model") or {}).get("graph")
    if isinstance(counts, dict) and isinstance(counts.get("macs"), int) and isinstance(counts.get("cio"), int):
        size_ok = list((manifest.get("model") or {}).get("input_size") or [])[:1] == [size]
        if size_ok:
            return None, {"macs": counts["macs"], "cio": counts["cio"]}
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
    if libraries:
        options["libraries"] = list(libraries)
    return options


def run_benchmark(opts: BenchmarkOptions, progress: Progress = print) -> dict[str, Any]:
    import edgecsp
    from edgecsp.artifact import open_artifact
    from edgecsp.bench import baselines as bl
    from edgecsp.bench import machine, traffic
    from edgecsp.bench.harness import Settings, first_inference_ms, measure
    from edgecsp.bench.memory import PeakRSS, artifact_bytes, backend_memory

    if (opts.artifact is None) == (opts.target is None):
        raise EdgeCSPError("pass exactly one of --artifact DIR or --target T")
    if opts.accuracy:
        from edgecsp.gate import check_image_count

        check_image_count(opts.eval_images, "--eval-images")  # before minutes of benchmarking
    compare = bl.parse_compare(opts.compare)
    if opts.artifact is not None:
        root, manifest = open_artifact(opts.artifact)  # checksums first: a tampered engine never runs
        built = False
    else:
        from edgecsp.bench.artifacts import ensure_artifact

        root, manifest, built = ensure_artifact(opts.model or "demo", str(opts.target), opts.precision,
                                                opts.artifacts_dir, opts.batch, progress=progress)
    profile = _profile_for(manifest)
    scenarios, s = settings_for(opts, profile)
    for sc in scenarios:
        Settings(scenario=sc, **s)  # validates before any work
    size = int(manifest["model"]["input_size"][0])
    batch = _artifact_batch(manifest, opts.batch)
    precision = manifest.get("precision", "?")
    backend_name = manifest["backend"]["name"]
    name = Path(root).name

    inputs, raw_images, input_source = _inputs(root, manifest, size, batch, opts)
    info = machine.describe()
    peak = None
    if opts.platform:
        from edgecsp.bench.bandwidth import platform_peak

        progress("platform peak: STREAM copy/triad and matrix multiply (measured once per machine, then cached)")
        peak = platform_peak(refresh=opts.refresh_platform, hardware=profile.hardware)
        gmacs = f"{peak['peak_gmacs']} GMAC/s" if peak.get("peak_gmacs") else "compute not measured (no torch here)"
        progress(f"  {peak['peak_gbs']} GB/s, {gmacs}{' (cached)' if peak.get('cached') else ''}")
    arch, counts = _graph(manifest, size)
    model = model_note = None
    if compare:
        model, model_note = bl.model_for(manifest, opts.model if opts.artifact is not None else None)

    def open_counters() -> Any:
        from edgecsp.bench.counters import MemoryCounters
        from edgecsp.bench.counters import open_counters as _open

        return _open(profile.hardware, profile.benchmark) if opts.counters else MemoryCounters()

    results: list[dict[str, Any]] = []
    engine_weights: dict[int, tuple[int, str] | None] = {}
    subjects = [("artifact", name)] + [("baseline", b) for b in compare]
    prepared = {b: bl.prepare_baseline(b, model, size, batch, raw_images) for b in compare}  # exports, untimed
    for kind, subject in subjects:
        for scenario in scenarios:
            label = subject if kind == "artifact" else bl.NAMES[subject]
            progress(f"{label}: {scenario} scenario ({s['warmup_s']} s warm-up, >= {s['duration_s']} s "
                     f"and >= {s['min_queries']} queries)")
            settings = Settings(scenario=scenario, **s)
            counters = open_counters()
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                if kind == "artifact":
                    runner = edgecsp.load(root, **_runner_options(backend_name, scenario, opts.libraries)).runner
                else:
                    runner = bl.open_baseline(subject, model, size, batch, prepared[subject])
                load_s = time.perf_counter() - t0
                try:
                    first = first_inference_ms(runner, inputs[0])
                    failpoint("benchmark.measure")
                    m = measure(runner, inputs, settings, on_start=counters.start, on_end=counters.stop)
                    measured = counters.result
                    desc = runner.describe()
                    bmem = backend_memory(runner)
                finally:
                    runner.close()
            if kind == "artifact":
                rt = desc.get("inference_precision")
                fb = traffic.RUNTIME_FLOAT_BYTES.get(rt, 4)
                if fb not in engine_weights:  # reads the engine's graph: once per runtime precision
                    engine_weights[fb] = traffic.engine_weight_bytes(root, manifest, fb)
                wb = engine_weights[fb]
                if wb is None and arch is None:
                    arch = traffic.model_from_manifest(manifest)
                weight_bytes, source = wb if wb else (traffic.torch_weight_bytes(arch, 4), "PyTorch module, fp32")
                cost = traffic.cost(counts, weight_bytes, source, precision, traffic.activation_bytes(precision, rt))
                disk = artifact_bytes(root, manifest)
                result_precision = precision
                arithmetic = traffic.compute_precision(precision, rt)
            else:
                if subject == "onnxruntime-fp32":
                    weight_bytes, source = traffic.onnx_weight_bytes(runner.path), "ONNX initializers (fp32)"
                else:
                    weight_bytes, source = traffic.torch_weight_bytes(model, 4), "PyTorch module, fp32 (BN folded)"
                cost = traffic.cost(counts, weight_bytes, source, "fp32", 4)
                disk = None
                result_precision = arithmetic = "fp32"
            bw, compute = traffic.bandwidth_figures(cost, m.fps, batch, peak, measured, arithmetic)
            lat = m.latency_ms()
            entry = {
                "name": label, "kind": kind, "scenario": scenario,
                "backend": desc.get("backend", backend_name if kind == "artifact" else subject),
                "target": (manifest.get("target") or {}).get("name") if kind == "artifact" else None,
                "precision": result_precision, "batch": batch,
                "fps": round(m.fps, 3), "latency_ms": {k: round(v, 4) for k, v in lat.items()},
                "latency_quantiles_ms": [round(float(v), 4) for v in np.percentile(m.latencies_ns / 1e6,
                                                                                      np.arange(101))],
                "first_inference_ms": round(first, 3), "load_s": round(load_s, 4),
                "queries": m.queries, "frames": m.frames, "wall_s": round(m.wall_s, 4),
                "warmup_queries": m.warmup_queries, "streams": m.streams, "mode": m.mode,
                "peak_rss_mb": mem.as_dict()["peak_rss_mb"],
                "memory": {**mem.as_dict(), "backend_mb": bmem["mb"], "backend_reason": bmem["reason"],
                           "artifact_mb": round(disk / 1e6, 4) if disk is not None else None},
                "bandwidth": bw, "compute": compute, "description": desc,
            }
            if kind == "baseline":
                entry["model_weights"] = model_note
            results.append(entry)
            progress(f"  {entry['fps']:.1f} FPS, p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
                     f"{m.queries} queries, peak RSS {entry['peak_rss_mb']} MB")
    add_ratios(results)

    accuracy = None
    if opts.accuracy:
        from edgecsp.bench.accuracy import check_accuracy

        progress("accuracy: AP/AP50 on the validation set against the FP32 PyTorch reference")
        with edgecsp.load(root, **_runner_options(backend_name, "latency", opts.libraries)) as predictor:
            accuracy = check_accuracy(predictor.predict_batch, manifest, opts.data, opts.eval_images,
                                      opts.model if opts.artifact is not None else None)
        progress(f"  AP50 {accuracy['AP50']:.4f} vs {accuracy['reference']['AP50']:.4f} "
                 f"(drop {accuracy['ap50_drop_points']:+.2f} points, tolerance {accuracy['tolerance_points']}): "
                 f"{'pass' if accuracy['passed'] else 'FAIL'}")

    from edgecsp import __version__
    from edgecsp.bench.report import SCHEMA
    from edgecsp.gate import status_of

    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecsp_version": __version__,
        "machine": info,
        "platform_peak": peak,
        "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items()},
                     "scenarios": scenarios, **s, "batch": batch, "compare": compare, "input_source": input_source,
                     "input_size": size},
        "artifact": {"path": str(root), "name": name, "built_now": built, "target": (manifest.get("target") or {}).get("name"),
                     "backend": manifest["backend"], "precision": precision, "model": manifest.get("model", {}).get("name"),
                     "model_hash": manifest.get("model", {}).get("hash"), "bytes": artifact_bytes(root, manifest),
                     "accuracy_status": status_of(manifest)},
        "model": {"macs_per_frame": counts["macs"], "cio_elements_per_frame": counts["cio"],
                  "input_size": size},
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
