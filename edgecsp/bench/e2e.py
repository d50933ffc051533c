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


class _Tally:
    """Wall seconds, CPU seconds and frames per path, summed over the rounds."""

    def __init__(self, keys: list[str]):
        self.wall = dict.fromkeys(keys, 0.0)
        self.cpu = dict.fromkeys(keys, 0.0)
        self.frames = dict.fromkeys(keys, 0)

    def add(self, key: str, wall: float, cpu: float, frames: int) -> None:
        self.wall[key] += wall
        self.cpu[key] += cpu
        self.frames[key] += frames

    def fps(self, key: str) -> float:
        return round(self.frames[key] / self.wall[key], 3) if self.wall[key] > 0 else 0.0

    def cpu_ms(self, key: str) -> float | None:
        n = self.frames[key]
        return round(self.cpu[key] / n * 1e3, 4) if n else None


@dataclass
class _Paths:
    """What one e2e run times, on the same frames: the engine alone (the predictor's input, and
    the float NCHW engine where that differs), one image at a time, the stream, extra paths."""

    opts: E2EOptions
    source: Any  # _Source
    detector: Any  # edgecsp.predictor.Predictor
    plain: Any  # the float-input Predictor, or None
    tensors: list[np.ndarray]
    plain_tensors: list[np.ndarray]
    tally: _Tally
    engine_lat: list[float] = field(default_factory=list)
    seq_lat: list[float] = field(default_factory=list)
    rounds: int = 0

    def stream(self) -> int:
        return sum(1 for _ in self.detector.stream(self.source.items(), workers=self.opts.workers,
                                                   batch=self.opts.batch))

    def warm_up(self) -> None:
        warm_end = time.perf_counter() + self.opts.warmup_s
        while time.perf_counter() < warm_end:
            self.stream()
            for item in self.source.items():
                self.detector(item)

    def _timed(self, key: str, body: Callable[[], int]) -> tuple[float, int]:
        """Run ``body`` (it returns the frames it did); adds to the tally; returns (wall seconds, frames)."""
        w0, c0 = time.perf_counter(), time.process_time()
        frames = body()
        wall = time.perf_counter() - w0
        self.tally.add(key, wall, time.process_time() - c0, frames)
        return wall, frames

    def _each(self, run: Callable[[Any], Any], items: Any, latencies: list[float] | None) -> int:
        n = 0
        for item in items:
            a = time.perf_counter()
            run(item)
            if latencies is not None:
                latencies.append(time.perf_counter() - a)
            n += 1
        return n

    def one_round(self) -> str:
        """Every path once, in turn (so a change in the machine's load touches them alike)."""
        t_engine, n_engine = self._timed("engine", lambda: self._each(self.detector.runner.run, self.tensors,
                                                                       self.engine_lat))
        t_seq, n_seq = self._timed("sequential", lambda: self._each(self.detector, self.source.items(), self.seq_lat))
        t_stream, n_stream = self._timed("stream", self.stream)
        if self.plain is not None:
            self._timed("engine_f32", lambda: self._each(self.plain.runner.run, self.plain_tensors, None))
        for name, fn in self.opts.extra_paths.items():
            self._timed(name, lambda fn=fn: self._each(lambda item: fn(self.detector, item), self.source.items(),
                                                       None))
        self.rounds += 1
        return (f"  round {self.rounds}: engine {n_engine / t_engine:.1f} FPS, one at a time "
                f"{n_seq / t_seq:.1f} images/s, stream {n_stream / t_stream:.1f} images/s")


def run_e2e(opts: E2EOptions, progress: Progress = print) -> dict[str, Any]:
    import edgecsp
    from edgecsp.artifact import open_artifact
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
        # Where the predictor's engine normalises inside (OpenVINO uint8 input), the plain float
        # NCHW engine too: the figure the latency scenario reports. The ratios use the faster one.
        plain = edgecsp.load(root, **options, u8_input=False) if detector.u8_input else None
        plain_tensors = [(x.transpose(0, 3, 1, 2).astype(np.float32) / 255.0) for x in tensors] if plain else []
        paths = _Paths(opts, source, detector, plain, tensors, plain_tensors,
                       _Tally(["engine", "sequential", "stream", "engine_f32", *opts.extra_paths]))
        paths.warm_up()
        stages = stage_breakdown(detector, source)
        start = time.perf_counter()
        while paths.rounds < opts.min_rounds or time.perf_counter() - start < opts.duration_s:
            progress(paths.one_round())
        desc = detector.runner.describe()
        if plain is not None:
            plain.close()
    load_result = load.result()
    line = warning(load_result)
    if line:
        progress(line)
    return _e2e_report(paths, root, manifest, stages, desc, load_result)


def _e2e_report(paths: _Paths, root: Path, manifest: dict[str, Any], stages: dict[str, Any],
                desc: dict[str, Any], load_result: dict[str, Any]) -> dict[str, Any]:
    from edgecsp import __version__
    from edgecsp.bench import machine

    t, opts, detector = paths.tally, paths.opts, paths.detector
    engine_fps = max(t.fps("engine"), t.fps("engine_f32"))
    u8 = detector.u8_input
    return {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecsp_version": __version__,
        "machine": machine.describe(),
        "load": load_result,
        "artifact": {"path": str(root), "name": Path(root).name, "target": (manifest.get("target") or {}).get("name"),
                     "backend": manifest["backend"]["name"], "precision": manifest.get("precision"),
                     "input_size": detector.input_size, "engine_batch": detector.batch or "dynamic"},
        "source": paths.source.describe,
        "settings": {"duration_s": opts.duration_s, "warmup_s": opts.warmup_s, "rounds": paths.rounds,
                     "workers": opts.workers, "stream_batch": detector.batch or int(opts.batch or 1),
                     "engine_input": "nhwc-u8" if u8 else "nchw-f32", "decoder": _decoder()},
        "engine_only": {"fps": engine_fps, "input": "the faster of the two engine inputs below",
                        "predictor_engine": {"fps": t.fps("engine"), "input": "nhwc-u8" if u8 else "nchw-f32",
                                             "cpu_ms_per_frame": t.cpu_ms("engine"),
                                             "latency_ms": _ms(paths.engine_lat), "frames": t.frames["engine"],
                                             "wall_s": round(t.wall["engine"], 4)},
                        "float_nchw_engine": {"fps": t.fps("engine_f32"), "frames": t.frames["engine_f32"],
                                              "cpu_ms_per_frame": t.cpu_ms("engine_f32")}
                        if t.frames["engine_f32"] else None,
                        "frames": t.frames["engine"]},
        "sequential": {"fps": t.fps("sequential"), "latency_ms": _ms(paths.seq_lat),
                       "frames": t.frames["sequential"], "cpu_ms_per_frame": t.cpu_ms("sequential"),
                       "wall_s": round(t.wall["sequential"], 4)},
        "stream": {"fps": t.fps("stream"), "frames": t.frames["stream"], "wall_s": round(t.wall["stream"], 4),
                   "cpu_ms_per_frame": t.cpu_ms("stream")},
        "stages_ms": stages,
        "extra_paths": {name: {"fps": t.fps(name), "vs_engine": _ratio(t.fps(name), engine_fps),
                               "frames": t.frames[name], "cpu_ms_per_frame": t.cpu_ms(name)}
                        for name in opts.extra_paths},
        "ratios": {"stream_vs_engine": _ratio(t.fps("stream"), engine_fps),
                   "sequential_vs_engine": _ratio(t.fps("sequential"), engine_fps),
                   "stream_vs_sequential": _ratio(t.fps("stream"), t.fps("sequential"))},
        "description": desc,
    }


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
