"""python -m edgecsp.detect [--model CKPT | --artifact A] IMAGE... --out DIR
       python -m edgecsp.detect [--model CKPT | --artifact A] --source FILE.mp4|DIR|/dev/video0 [--out OUT]

Images: each written with its boxes, class names and scores drawn to --out DIR, plus
detections.json. A video, camera or folder (--source): frames go through detector.stream
(decoding, preprocessing and inference overlapped) with the frame rate shown live on stderr;
--out annotated.mp4 (or .avi) writes the video with the boxes drawn, --out DIR for a folder of
images writes drawn images and detections.json. --artifact runs a compiled artifact (any backend);
--model the PyTorch model (default: the demo detector). Progress goes to stderr; stdout gets what
was written (with --json: the detections, as in detections.json)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecsp import cli
from edgecsp import options as opt
from edgecsp.errors import EdgeCSPError

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
# How often the live frame rate line is rewritten (seconds).
RATE_EVERY_S = 0.5


def draw(image, det, class_names):
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    pen = ImageDraw.Draw(im)
    for box, score, label in zip(det.boxes, det.scores, det.labels):
        color = PALETTE[int(label) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = f"{class_names[int(label)]} {score:.2f}"
        tw = pen.textlength(text)
        pen.rectangle([x1, max(0, y1 - 12), x1 + tw + 4, max(12, y1)], fill=color)
        pen.text((x1 + 2, max(0, y1 - 12)), text, fill=(0, 0, 0))
    return im


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.detect", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", type=opt.existing_file(), metavar="IMAGE")
    parser.add_argument("--source", type=opt.existing_path(),
                        help="a video file, a folder of images, or a camera (/dev/video0)")
    cli.add_model_options(parser)
    parser.add_argument("--artifact", type=opt.existing_path(), help="a compiled artifact (directory or .tar.gz) "
                                                                      "instead of --model")
    parser.add_argument("--out", type=opt.OutPath(), help="folder for the drawn images, or with a video --source "
                                                          "an annotated .mp4/.avi")
    cli.add_threshold_options(parser)
    cli.add_json_option(parser, "the detections")
    parser.add_argument("--max-frames", type=opt.positive_int(opt.MAX_IMAGES), help="--source: stop after N frames")
    return parser


class _FunctionRunner:
    """A PyTorch model's predict function as an edgecsp Runner (dynamic batch)."""

    def __init__(self, predict: Any):
        self.run = predict

    def close(self) -> None:
        pass


def open_detector(args: argparse.Namespace) -> Any:
    """A Predictor over the artifact, or over the PyTorch model (same pre/postprocessing)."""
    from edgecsp.predictor import Predictor

    if args.artifact is not None:
        import edgecsp

        return edgecsp.load(args.artifact)
    from edgecsp.coco_eval import torch_predict_fn
    from edgecsp.models.checkpoint import resize_of, resolve_model

    model, description = resolve_model(cli.model_source(args))
    size = int(model.config.input_size)
    manifest = {"model": {"input_size": [size, size], "class_names": list(description["class_names"])},
                "preprocessing": {"resize": resize_of(model)}, "inputs": [{"shape": ["N", 3, size, size]}]}
    return Predictor(Path("."), manifest, _FunctionRunner(torch_predict_fn(model)))  # type: ignore[arg-type]


def _record(path: Any, det: Any, names: list[str]) -> dict:
    return {"image": str(path), "detections": [
        {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": names[int(c)]}
        for b, s, c in zip(det.boxes, det.scores, det.labels)]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if bool(args.images) == bool(args.source):
        raise EdgeCSPError("pass images (IMAGE...) or --source FILE.mp4|DIR|/dev/video0, not both or neither")
    if args.artifact is not None and (args.model != "demo" or args.weights or args.names):
        raise EdgeCSPError("--artifact runs a compiled model; drop --model/--weights/--names")
    if args.source:
        return _source(args)
    if args.out is None:
        raise EdgeCSPError("--out DIR is needed for the drawn images")
    from edgecsp.data.preprocess import load_image_rgb

    images = [(path, load_image_rgb(path)) for path in args.images]  # fail on a bad image before writing
    with open_detector(args) as detector:
        dets = list(detector.stream([image for _, image in images], args.score, args.iou))
        args.out.mkdir(parents=True, exist_ok=True)
        report = []
        for (path, image), det in zip(images, dets):
            draw(image, det, detector.class_names).save(args.out / f"{path.stem}.png")
            report.append(_record(path, det, detector.class_names))
            cli.say(f"{path}: {len(det)} detections")
    (args.out / "detections.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report) if args.json else f"wrote {len(report)} images and detections.json to {args.out}")
    return 0


class _Rate:
    """The live frame rate on stderr: one line rewritten in place (a new line each time off a terminal)."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.frames = 0
        self.tty = sys.stderr.isatty()

    def tick(self, detections: int) -> None:
        self.frames += 1
        now = time.perf_counter()
        if now - self.last >= RATE_EVERY_S:
            self.last = now
            line = f"frame {self.frames}: {self.fps():.1f} FPS, {detections} detections"
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def fps(self) -> float:
        wall = time.perf_counter() - self.start
        return self.frames / wall if wall > 0 else 0.0


def _source(args: argparse.Namespace) -> int:
    from edgecsp import video

    folder, items, fps_in, vs = _open_source(args)
    report: list[dict] = []
    writer = None
    rate = None
    try:
        with open_detector(args) as detector:
            names = detector.class_names
            rate = _Rate()  # from the first frame on, not the model's loading
            frames: Any = _Keep(items) if not folder and args.out is not None else items
            for i, det in enumerate(detector.stream(frames, args.score, args.iou)):
                rate.tick(len(det))
                if args.out is None:
                    continue
                if folder:
                    _draw_image(args.out, items[i], det, names, report)
                else:
                    frame = frames.pop()  # the decoded frame, kept beside its detections
                    if writer is None:
                        writer = video.VideoWriter(args.out, fps_in, frame.shape[1], frame.shape[0])
                    writer.write(np.asarray(draw(frame, det, names)))
    except KeyboardInterrupt:  # a camera runs until stopped: what was written stays valid
        print(file=sys.stderr)
        if rate is None:
            return 130
    finally:
        if writer is not None:
            writer.close()
        if vs is not None:
            vs.close()
    assert rate is not None
    if rate.tty:
        print(file=sys.stderr)
    if folder and args.out is not None:
        (args.out / "detections.json").write_text(json.dumps(report, indent=1))
    _print_source_result(args, rate, report if folder else None)
    return 0


def _open_source(args: argparse.Namespace) -> tuple[bool, Any, float, Any]:
    """(a folder?, the frames or image paths, the video's frame rate, the open video or None);
    a bad source or --out fails here, before the model loads."""
    from edgecsp import video

    source = Path(args.source)
    camera = video.is_camera(args.source)
    if not camera and source.is_dir():
        from edgecsp.bench.e2e import image_files

        if args.out is not None and args.out.suffix.lower() in video.VIDEO_SUFFIXES:
            raise EdgeCSPError("--out for a folder of images is a folder (drawn images + detections.json)")
        return True, image_files(source)[: args.max_frames], 0.0, None
    if not camera and not source.is_file():
        raise EdgeCSPError(f"--source {args.source} not found; pass a video file, a folder of images or /dev/videoN")
    if args.out is not None and args.out.suffix.lower() not in (".mp4", ".avi"):
        raise EdgeCSPError(f"--out {args.out}: an annotated video is written as .mp4 or .avi")
    vs = video.VideoSource(args.source)
    return False, _limited(vs, args.max_frames), vs.fps, vs


def _draw_image(out: Path, path: Path, det: Any, names: list[str], report: list[dict]) -> None:
    from edgecsp.data.preprocess import load_image_rgb

    out.mkdir(parents=True, exist_ok=True)
    draw(load_image_rgb(path), det, names).save(out / f"{path.stem}.png")
    report.append(_record(path, det, names))


def _print_source_result(args: argparse.Namespace, rate: _Rate, detections: list[dict] | None) -> None:
    if args.json:
        print(json.dumps({"frames": rate.frames, "fps": round(rate.fps(), 3), "out": str(args.out or ""),
                          "detections": detections}))
        return
    where = f", wrote {args.out}" if args.out is not None else ""
    print(f"{rate.frames} frames, {rate.fps():.1f} FPS{where}")


def _limited(vs: Any, limit: int | None) -> Any:
    for i, frame in enumerate(vs):
        if limit is not None and i >= limit:
            return
        yield frame


class _Keep:
    """Passes frames through, remembering them (in order) until the caller pops each one back."""

    def __init__(self, frames: Any):
        import collections
        import threading

        self.frames = iter(frames)
        self.kept: collections.deque[np.ndarray] = collections.deque()
        self.lock = threading.Lock()

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> np.ndarray:
        frame = next(self.frames)
        with self.lock:
            self.kept.append(frame)
        return frame

    def pop(self) -> np.ndarray:
        with self.lock:
            return self.kept.popleft()


if __name__ == "__main__":
    sys.exit(cli.run(main))
