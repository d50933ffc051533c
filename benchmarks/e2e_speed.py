"""Speed as the application sees it, on the demo's intel-cpu INT8 artifact (issue 15):

    python benchmarks/e2e_speed.py [--images DIR] [--count 200] [--duration 20] [--threads default,1]
                                   [--out benchmarks/results]

Makes (once, cached under the edgecsp cache) --count 640x480 JPEG photos: the shapes task's
scenes (edgecsp.data.shapes: scikit-image's sample photos and textures as backgrounds, shapes on
top, blur, noise, JPEG quality 70-95) at a fixed 640x480, or takes --images DIR. Then, in one run
and interleaved in rounds (edgecsp.bench.e2e): the engine alone at batch 1 on the letterboxed
frames, ``detector(path)`` one image at a time, and ``detector.stream(paths)``, with the time per
stage, and main's path before issue 15 (Pillow decode and resize, float batch) for comparison;
once with the engine on the backend's default threads and once on 1 thread (on a 2-core machine
the other core then decodes). Prints a table per setting and writes
benchmarks/results/e2e-speed.json. The goal: stream >= 0.8x the engine-only FPS. Builds the
artifact first where artifacts/demo-intel-cpu-int8 is missing. About 1.5 minutes on a quiet
2-core machine (first run: +30 s to make the photos).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIZE = (480, 640)  # height, width: a VGA camera frame


def make_photos(count: int, seed: int = 20261201) -> Path:
    """``count`` 640x480 shapes scenes as JPEG files (deterministic per seed; cached)."""
    import numpy as np

    from edgecsp.data import shapes
    from edgecsp.paths import cache_dir

    folder = cache_dir() / f"e2e-photos-{SIZE[1]}x{SIZE[0]}-seed{seed}-n{count}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        canvas = shapes._background(rng, *SIZE)
        shapes._draw_objects(rng, canvas)
        quality = int(rng.integers(shapes.JPEG_QUALITY_RANGE[0], shapes.JPEG_QUALITY_RANGE[1] + 1))
        (folder / f"{i:04d}.jpg").write_bytes(shapes._finish(rng, canvas, quality))
    return folder


def main_branch_path(detector, path, clock=None) -> list[float]:
    """What ``detector(path)`` did before issue 15 (main at 9e200b0), spelled out: Pillow decodes
    the full image (EXIF transpose and three copies), Pillow's bilinear resize letterboxes it, a
    float batch is stacked, then one engine call and the postprocess. With ``clock``: the end time
    of each stage (decode, preprocess, inference, postprocess)."""
    import math

    import numpy as np
    from PIL import Image, ImageOps

    from edgecsp.data.preprocess import LetterboxInfo, to_tensor_batch
    from edgecsp.postprocess import postprocess

    marks = []
    with Image.open(path) as img:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        image = np.asarray(img.convert("RGB")).copy()
    marks.append(clock() if clock else 0.0)
    size = detector.input_size
    src_h, src_w = image.shape[:2]
    scale = min(size / src_h, size / src_w)
    new_w, new_h = math.floor(src_w * scale + 1e-6), math.floor(src_h * scale + 1e-6)
    box = (0.0, 0.0, min(src_w, new_w / scale), min(src_h, new_h / scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR, box=box))
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = resized
    info = LetterboxInfo(float(scale), float(pad_x), float(pad_y), src_w, src_h)
    batch = to_tensor_batch([canvas])
    marks.append(clock() if clock else 0.0)
    rows = detector.predict_batch(batch)
    marks.append(clock() if clock else 0.0)
    postprocess(rows[0], info)
    marks.append(clock() if clock else 0.0)
    return marks


def main_branch_stages(detector, paths) -> dict:
    """Per-stage mean ms of main_branch_path over ``paths`` (one pass)."""
    import time

    import numpy as np

    from edgecsp.bench.e2e import STAGES

    times = []
    for path in paths:
        t0 = time.perf_counter()
        marks = main_branch_path(detector, path, time.perf_counter)
        times.append(np.diff([t0, *marks]))
    mean = np.mean(times, axis=0) * 1e3
    out = {stage: {"mean": round(float(v), 4)} for stage, v in zip(STAGES, mean)}
    out["total"] = {"mean": round(float(mean.sum()), 4)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="a folder of images (default: 640x480 shapes photos, made once)")
    parser.add_argument("--count", type=int, default=200, help="photos to make (default 200)")
    parser.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "demo-intel-cpu-int8")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per engine setting")
    parser.add_argument("--workers", type=int, default=2, help="the stream's decode/preprocess threads")
    parser.add_argument("--threads", default="default,1",
                        help="the engine's inference threads, one run each: 'default' (the backend's) and/or "
                             "numbers (default: default,1: on 2 cores, 1 leaves a core to decoding)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from edgecsp.bench import e2e
    from edgecsp.bench import report as rep

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if not args.artifact.is_dir():
        from edgecsp.bench.on_demand import ensure_artifact

        args.artifact, _, _ = ensure_artifact("demo", "intel-cpu", "int8", args.artifact.parent, progress=log)
    images = args.images or make_photos(args.count)
    reports = {}
    for setting in (t.strip() for t in args.threads.split(",") if t.strip()):
        threads = None if setting == "default" else int(setting)
        log(f"engine threads: {setting}")
        import edgecsp

        options = {"threads": threads} if threads else {}
        # main's path on main's engine input (float NCHW), as it ran before issue 15
        with edgecsp.load(args.artifact, u8_input=False, **options) as plain:
            report = e2e.run_e2e(e2e.E2EOptions(
                artifact=args.artifact, images=images, duration_s=args.duration, workers=args.workers,
                runner_options=options,
                extra_paths={"before: main's detector(path)": lambda _, item: main_branch_path(plain, item)}),
                progress=log)
            report["stages_ms_before"] = main_branch_stages(plain, sorted(Path(images).glob("*.jpg")))
        report["source"]["made_by"] = (None if args.images else
                                       "benchmarks/e2e_speed.py make_photos (shapes scenes, 640x480)")
        report["settings"]["engine_threads"] = setting
        reports[setting] = report
        print(f"\n[engine threads: {setting}, {report['description'].get('threads')} in use]")
        print(e2e.format_table(report))
        before = report["stages_ms_before"]
        print("before (main's path), per frame (ms): " + "  ".join(f"{k} {before[k]['mean']:.2f}" for k in e2e.STAGES)
              + f"  = {before['total']['mean']:.2f}")
    path = rep.write_json({"schema": "edgecsp-e2e-speed/1", "runs": reports}, args.out / "e2e-speed.json")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
