"""The end-to-end scenario: files in, detections out, as an application sees it.

``python -m edgecsp.benchmark --artifact A --scenario e2e --images DIR | --video FILE``

One run measures, on the same frames and interleaved in rounds (so a change in the machine's
load hits every figure alike, and the ratios hold even on a busy machine):
  engine-only  the runner alone on already-letterboxed tensors, one call per frame (batch 1);
  sequential   ``detector(path)`` one frame at a time (what a plain loop in an application does);
  stream       ``detector.stream(frames)`` (edgecsp.streaming: decode, preprocess, inference and
               postprocess of different frames overlapped);
and, once, each stage of the sequential path timed on its own: decode, preprocess (letterbox and
the engine's input tensor), inference, postprocess (NMS and boxes back to the image).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecsp.errors import EdgeCSPError

SCHEMA = "edgecsp-benchmark-e2e/1"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
STAGES = ("decode", "preprocess", "inference", "postprocess")
Progress = Callable[[str], None]


@dataclass
class E2EOptions:
    artifact: Path
    images: Path | None = None  # a folder of image files
    video: Path | None = None  # or a video file
    duration_s: float = 10.0  # at least this long over all rounds (and at least min_rounds rounds)
    warmup_s: float = 1.0
    min_rounds: int = 2
    max_frames: int | None = None  # the first N frames only
    workers: int = 2  # stream: decode/preprocess threads
    batch: int | None = None  # stream: frames per engine call for a dynamic-batch engine
    libraries: list[Path] = field(default_factory=list)
    runner_options: dict[str, Any] = field(default_factory=dict)
    # more one-frame-at-a-time paths to time in the same rounds: name -> fn(detector, frame)
    extra_paths: dict[str, Callable[[Any, Any], Any]] = field(default_factory=dict)


def image_files(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise EdgeCSPError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images")
    return files


class _Source:
    """The frames to feed, re-readable per round: image paths, or a video file's frames."""

    def __init__(self, opts: E2EOptions):
        if (opts.images is None) == (opts.video is None):
            raise EdgeCSPError("the e2e scenario takes exactly one of --images DIR or --video FILE")
        self.video = opts.video
        self.paths: list[Path] = []
        if opts.images is not None:
            if not Path(opts.images).is_dir():
                raise EdgeCSPError(f"--images {opts.images} is not a folder; pass a folder of images")
            self.paths = image_files(Path(opts.images))[: opts.max_frames]
            self.count = len(self.paths)
            self.describe = {"kind": "images", "path": str(opts.images), "frames": self.count}
        else:
            from edgecsp.video import VideoSource

            with VideoSource(opts.video) as v:  # type: ignore[arg-type]
                info = {"fps": v.fps, "width": v.width, "height": v.height}
            self.count = sum(1 for _ in self.frames(opts.max_frames))
            if self.count == 0:
                raise EdgeCSPError(f"video {opts.video} has no frames")
            self.describe = {"kind": "video", "path": str(opts.video), "frames": self.count, **info}
        self.max_frames = opts.max_frames

    def frames(self, limit: int | None = None) -> Iterator[Any]:
        """Paths (decoded by the predictor) or decoded video frames (decoded here, as they are read)."""
        if self.video is None:
            yield from self.paths
            return
        from edgecsp.video import frames

        for i, frame in enumerate(frames(self.video)):
            if limit is not None and i >= limit:
                return
            yield frame

    def items(self) -> Iterator[Any]:
        return self.frames(self.max_frames)


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64) * 1e3
    if not len(a):
        return {"mean": float("nan"), "p50": float("nan"), "p99": float("nan")}
    p50, p99 = np.percentile(a, [50, 99])
    return {"mean": round(float(a.mean()), 4), "p50": round(float(p50), 4), "p99": round(float(p99), 4)}


def stage_breakdown(predictor: Any, source: _Source) -> dict[str, dict[str, float]]:
    """Each stage of the one-at-a-time path timed on its own, per frame (one pass)."""
    from edgecsp.data.preprocess import decode_image, letterbox, letterbox_decoded
    from edgecsp.postprocess import postprocess
    from edgecsp.predictor import frame_tensor

    times: dict[str, list[float]] = {s: [] for s in STAGES}
    clock = time.perf_counter
    size, mode = predictor.input_size, predictor.resize
    it = iter(source.items())
    while True:
        t0 = clock()
        item = next(it, None)  # a video frame is decoded here
        if item is None:
            break
        if isinstance(item, Path):
            image, reduction, (w, h) = decode_image(item, size, mode)
        else:
            image, reduction, (w, h) = item, 1, (item.shape[1], item.shape[0])
        t1 = clock()
        if reduction == 1 and not isinstance(item, Path):
            lb, info = letterbox(image, size, mode=mode)
        else:
            lb, info = letterbox_decoded(image, reduction, w, h, size, mode=mode)
        x = lb if predictor.u8_input else frame_tensor(lb)
        t2 = clock()
        rows = predictor._infer([x])
        t3 = clock()
        postprocess(rows[0], info)
        t4 = clock()
        for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            times[stage].append(dt)
    out = {s: _ms(v) for s, v in times.items()}
    out["total"] = {"mean": round(sum(out[s]["mean"] for s in STAGES), 4)}
    return out


def run_e2e(opts: E2EOptions, progress: Progress = print) -> dict[str, Any]:
    import edgecsp
    from edgecsp import __version__
    from edgecsp.artifact import open_artifact
    from edgecsp.bench import machine
    from edgecsp.bench.load import LoadMonitor, warning

    root, manifest = open_artifact(opts.artifact)
    source = _Source(opts)
    options = dict(opts.runner_options)
    if opts.libraries:
        options["libraries"] = list(opts.libraries)
    if manifest["backend"]["name"] in ("openvino", "onnxruntime"):
        options.setdefault("mode", "latency")
    progress(f"e2e: {source.count} frames of {source.describe['path']} through {Path(root).name}")
    with edgecsp.load(root, **options) as detector, LoadMonitor() as load:
        # the engine-only inputs: the same frames, letterboxed once, outside the timing
        tensors = [detector.prepare(item)[0][None] for item in source.items()]
        run = detector.runner.run
        # Where the predictor's engine normalises inside (OpenVINO uint8 input), the plain float
        # NCHW engine too: the figure the latency scenario reports. The ratios use the faster one.
        plain = edgecsp.load(root, **options, u8_input=False) if detector.u8_input else None
        plain_tensors = [(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) for x in tensors] if plain else []
        clock = time.perf_counter
        warm_end = clock() + opts.warmup_s
        while clock() < warm_end:
            list(detector.stream(source.items(), workers=opts.workers, batch=opts.batch))
            for item in source.items():
                detector(item)
        stages = stage_breakdown(detector, source)
        totals = {"engine": [0.0, 0], "sequential": [0.0, 0], "stream": [0.0, 0]}
        totals.update({name: [0.0, 0] for name in opts.extra_paths})
        totals["engine_f32"] = [0.0, 0]
        engine_lat: list[float] = []
        seq_lat: list[float] = []
        rounds = 0
        start = clock()
        cpu = time.process_time
        cpu_s = {key: 0.0 for key in totals}
        while rounds < opts.min_rounds or clock() - start < opts.duration_s:
            c0 = cpu()
            t0 = clock()
            for x in tensors:
                a = clock()
                run(x)
                engine_lat.append(clock() - a)
            t1, c1 = clock(), cpu()
            for item in source.items():
                a = clock()
                detector(item)
                seq_lat.append(clock() - a)
            t2, c2 = clock(), cpu()
            n_stream = sum(1 for _ in detector.stream(source.items(), workers=opts.workers, batch=opts.batch))
            t3, c3 = clock(), cpu()
            cpu_s["engine"] += c1 - c0
            cpu_s["sequential"] += c2 - c1
            cpu_s["stream"] += c3 - c2
            for key, dt, n in (("engine", t1 - t0, len(tensors)), ("sequential", t2 - t1, source.count),
                               ("stream", t3 - t2, n_stream)):
                totals[key][0] += dt
                totals[key][1] += n
            if plain is not None:
                a, ca = clock(), cpu()
                for x in plain_tensors:
                    plain.runner.run(x)
                cpu_s["engine_f32"] += cpu() - ca
                totals["engine_f32"][0] += clock() - a
                totals["engine_f32"][1] += len(plain_tensors)
            for name, fn in opts.extra_paths.items():
                a, ca = clock(), cpu()
                for item in source.items():
                    fn(detector, item)
                cpu_s[name] += cpu() - ca
                totals[name][0] += clock() - a
                totals[name][1] += source.count
            rounds += 1
            progress(f"  round {rounds}: engine {len(tensors) / (t1 - t0):.1f} FPS, one at a time "
                     f"{source.count / (t2 - t1):.1f} images/s, stream {n_stream / (t3 - t2):.1f} images/s")
        desc = detector.runner.describe()
        if plain is not None:
            plain.close()
        batch_used = detector.batch or int(opts.batch or 1)
        u8 = detector.u8_input
    load_result = load.result()
    line = warning(load_result)
    if line:
        progress(line)

    def fps(key: str) -> float:
        wall, n = totals[key]
        return round(n / wall, 3) if wall > 0 else 0.0

    engine_fps = max(fps("engine"), fps("engine_f32"))

    def cpu_ms(key: str) -> float | None:
        n = totals[key][1]
        return round(cpu_s[key] / n * 1e3, 4) if n else None

    result = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecsp_version": __version__,
        "machine": machine.describe(),
        "load": load_result,
        "artifact": {"path": str(root), "name": Path(root).name, "target": (manifest.get("target") or {}).get("name"),
                     "backend": manifest["backend"]["name"], "precision": manifest.get("precision"),
                     "input_size": detector.input_size, "engine_batch": detector.batch or "dynamic"},
        "source": source.describe,
        "settings": {"duration_s": opts.duration_s, "warmup_s": opts.warmup_s, "rounds": rounds,
                     "workers": opts.workers, "stream_batch": batch_used, "engine_input": "nhwc-u8" if u8 else "nchw-f32",
                     "decoder": _decoder()},
        "engine_only": {"fps": engine_fps, "input": "the faster of the two engine inputs below",
                        "predictor_engine": {"fps": fps("engine"), "input": "nhwc-u8" if u8 else "nchw-f32",
                                             "cpu_ms_per_frame": cpu_ms("engine"),
                                             "latency_ms": _ms(engine_lat), "frames": totals["engine"][1],
                                             "wall_s": round(totals["engine"][0], 4)},
                        "float_nchw_engine": {"fps": fps("engine_f32"), "frames": totals["engine_f32"][1],
                                              "cpu_ms_per_frame": cpu_ms("engine_f32")}
                        if totals["engine_f32"][1] else None,
                        "frames": totals["engine"][1]},
        "sequential": {"fps": fps("sequential"), "latency_ms": _ms(seq_lat), "frames": totals["sequential"][1],
                       "cpu_ms_per_frame": cpu_ms("sequential"),
                       "wall_s": round(totals["sequential"][0], 4)},
        "stream": {"fps": fps("stream"), "frames": totals["stream"][1], "wall_s": round(totals["stream"][0], 4),
                   "cpu_ms_per_frame": cpu_ms("stream")},
        "stages_ms": stages,
        "extra_paths": {name: {"fps": fps(name), "vs_engine": _ratio(fps(name), engine_fps),
                               "frames": totals[name][1], "cpu_ms_per_frame": cpu_ms(name)}
                        for name in opts.extra_paths},
        "ratios": {"stream_vs_engine": _ratio(fps("stream"), engine_fps),
                   "sequential_vs_engine": _ratio(fps("sequential"), engine_fps),
                   "stream_vs_sequential": _ratio(fps("stream"), fps("sequential"))},
        "description": desc,
    }
    return result


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def _decoder() -> str:
    from edgecsp.data.fastimage import opencv

    cv2 = opencv()
    return f"opencv {cv2.__version__}" if cv2 is not None else "pillow"


def format_table(report: dict[str, Any]) -> str:
    """The e2e report as a terminal table."""
    a, s, r = report["artifact"], report["stages_ms"], report["ratios"]
    lines = [(f"e2e: {a['name']} ({a['backend']}, {a['precision']}, input {a['input_size']}), "
              f"{report['source']['frames']} frames of {report['source']['path']}, {report['settings']['rounds']} rounds"),
             "", f"{'path':<40}{'images/s':>10}{'x engine':>10}{'CPU ms/frame':>14}"]
    eo = report["engine_only"]
    pe = eo["predictor_engine"]
    rows = [(f"engine only, {pe['input']} input", pe["fps"], _ratio(pe["fps"], eo["fps"]), pe.get("cpu_ms_per_frame"))]
    fe = eo.get("float_nchw_engine")
    if fe:
        rows.append(("engine only, nchw-f32 input", fe["fps"], _ratio(fe["fps"], eo["fps"]), fe.get("cpu_ms_per_frame")))
    rows += [("one at a time: detector(x)", report["sequential"]["fps"], r["sequential_vs_engine"],
              report["sequential"].get("cpu_ms_per_frame")),
             ("detector.stream(frames)", report["stream"]["fps"], r["stream_vs_engine"],
              report["stream"].get("cpu_ms_per_frame"))]
    rows += [(name, e["fps"], e["vs_engine"], e.get("cpu_ms_per_frame"))
             for name, e in (report.get("extra_paths") or {}).items()]
    for name, fps, ratio, cpu_ms in rows:
        lines.append(f"{name:<40}{fps:>10.1f}{(ratio or 0):>10.2f}{'' if cpu_ms is None else f'{cpu_ms:.2f}':>14}")
    lines += ["", "per frame, one at a time (ms):  " + "  ".join(f"{k} {s[k]['mean']:.2f}" for k in STAGES) +
              f"  = {s['total']['mean']:.2f}"]
    load = report.get("load") or {}
    before = (load.get("before") or {}).get("others_busy_fraction")
    during = (load.get("during") or {}).get("others_busy_fraction")
    lines.append(f"machine load: others used {_pct(before)} of {load.get('cpus')} CPUs before, {_pct(during)} during"
                 f"{' (BUSY)' if load.get('busy') else ''}")
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "?" if v is None else f"{v:.0%}"
