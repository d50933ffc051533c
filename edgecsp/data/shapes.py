"""The synthetic "shapes" detection set: a fixed, documented task (docs/shapes-dataset.md).

Six filled shape classes on photo and texture backgrounds, written as COCO JSON + JPEG. Each
image is a pure function of (seed, split, index), so any number of workers gives the same bytes.
Boxes are the tight box of the shape's rendered mask (pixels at least half covered).
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import multiprocessing
import os
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgecsp.data.coco import ImageRecord, write_coco
from edgecsp.errors import EdgeCSPError

PathLike = Union[str, os.PathLike]  # not X | Y: evaluated at run time, 3.8

# The task. Changing any of these changes the data set: bump GENERATOR_VERSION and the doc.
GENERATOR_VERSION = 1
CLASS_NAMES = ("circle", "square", "triangle", "pentagon", "star", "cross")  # category ids 1..6
SHORT_SIDE_RANGE = (240, 480)
ASPECT_RANGE = (0.6, 1.8)  # width / height
OBJECTS_RANGE = (1, 8)
REFERENCE_SHORT_SIDE = 320
LONG_SIDE_RANGE = (16.0, 128.0)  # box long side in px at the reference short side
MAX_IOU = 0.3
JPEG_QUALITY_RANGE = (70, 95)
SPLITS = ("train", "val")

SUPERSAMPLE = 4
_PLACE_ATTEMPTS = 60
_PHOTO_PROBABILITY = 0.6
# Bundled with scikit-image (no download); missing ones are skipped.
_PHOTO_FILES = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "ihc.png",
    "camera.png",
    "coins.png",
    "moon.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "clock_motion.png",
)
MANIFEST_NAME = "shapes.json"


@dataclass
class ShapesSample:
    """One rendered image and its ground truth (labels are 0-based class indices)."""

    file_name: str
    width: int
    height: int
    jpeg: bytes
    boxes: np.ndarray  # (N, 4) float32 xyxy pixels
    labels: np.ndarray  # (N,) int64
    areas: np.ndarray  # (N,) mask pixel counts
    colours: np.ndarray  # (N, 3) float32 RGB the shapes were filled with
    instance_map: np.ndarray  # (H, W) int16: 0 background, j + 1 where object j's mask is


# ---------------------------------------------------------------- per-image randomness


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    # crc32 gives the split a stable number across runs and Python versions (hash() is salted)
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def _image_hw(rng: np.random.Generator) -> tuple[int, int]:
    short = int(rng.integers(SHORT_SIDE_RANGE[0], SHORT_SIDE_RANGE[1] + 1))
    aspect = math.exp(rng.uniform(math.log(ASPECT_RANGE[0]), math.log(ASPECT_RANGE[1])))
    if aspect >= 1.0:
        return short, round(short * aspect)
    return round(short / aspect), short


# ---------------------------------------------------------------- backgrounds

_photos: list[np.ndarray] | None = None


def _photo_sources() -> list[np.ndarray]:
    """The bundled scikit-image sample photos, loaded once per process."""
    global _photos
    if _photos is None:
        _photos = []
        spec = importlib.util.find_spec("skimage")
        if spec is not None and spec.origin is not None:
            data_dir = Path(spec.origin).parent / "data"
            for name in _PHOTO_FILES:
                if (data_dir / name).is_file():
                    with Image.open(data_dir / name) as im:
                        _photos.append(np.asarray(im.convert("RGB" if im.mode not in ("L", "I;16") else "L")))
    return _photos


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _photo_background(rng: np.random.Generator, h: int, w: int, photos: list[np.ndarray]) -> np.ndarray:
    src = photos[int(rng.integers(len(photos)))]
    sh, sw = src.shape[:2]
    scale = max(h / sh, w / sw) * rng.uniform(1.0, 2.0)
    cw, ch = w / scale, h / scale
    x0, y0 = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    img = Image.fromarray(src).resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    out: np.ndarray = np.asarray(img, dtype=np.float32)
    if out.ndim == 2:  # greyscale photo: keep grey or map it between two random colours
        g = out[..., None] / 255.0
        if rng.random() < 0.5:
            dark, light = _random_colour(rng) * 0.5, 127 + _random_colour(rng) * 0.5
            out = dark + (light - dark) * g
        else:
            out = np.repeat(out[..., None], 3, axis=2)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.25:
        out = out[::-1]
    contrast, brightness = rng.uniform(0.7, 1.2), rng.uniform(-20, 20)
    return (out - out.mean()) * contrast + out.mean() + brightness


def _coords(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Pixel coordinates projected on a random direction (for gradients and stripes)."""
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.ogrid[0:h, 0:w]
    return (xs * math.cos(theta) + ys * math.sin(theta)).astype(np.float32)


def _two_tone(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    return c0 + (c1 - c0) * t[..., None]


def _texture_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = int(rng.integers(4))
    c0, c1 = _random_colour(rng), _random_colour(rng)
    if kind == 0:  # linear gradient
        u = _coords(rng, h, w)
        out = _two_tone((u - u.min()) / max(float(u.max() - u.min()), 1e-6), c0, c1)
    elif kind == 1:  # smooth value noise: a coarse random grid upsampled
        gh, gw = int(rng.integers(2, 12)), int(rng.integers(2, 12))
        grid = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.uint8)
        out = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    elif kind == 2:  # stripes, hard or sinusoidal
        phase = _coords(rng, h, w) / rng.uniform(6, 60)
        t = (phase % 1.0 < 0.5) if rng.random() < 0.5 else 0.5 + 0.5 * np.sin(2 * math.pi * phase)
        out = _two_tone(t.astype(np.float32), c0, c1)
    else:  # rotated checkerboard
        cell, theta = rng.uniform(8, 64), rng.uniform(0, math.pi / 2)
        ys, xs = np.ogrid[0:h, 0:w]
        u = np.floor((xs * math.cos(theta) + ys * math.sin(theta)) / cell)
        v = np.floor((ys * math.cos(theta) - xs * math.sin(theta)) / cell)
        out = _two_tone(((u + v) % 2).astype(np.float32), c0, c1)
    if rng.random() < 0.5:  # grain, so flat areas are not perfectly flat
        out = out + rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(2, 10)
    return out


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    photos = _photo_sources()
    if photos and rng.random() < _PHOTO_PROBABILITY:
        out = _photo_background(rng, h, w, photos)
    else:
        out = _texture_background(rng, h, w)
    return np.ascontiguousarray(np.clip(out, 0, 255), dtype=np.float32)


# ---------------------------------------------------------------- shapes


def _regular(n: int, radius: float = 1.0, start_deg: float = -90.0) -> np.ndarray:
    a = np.deg2rad(start_deg + 360.0 / n * np.arange(n))
    return radius * np.stack([np.cos(a), np.sin(a)], axis=1)


def _unit_outline(label: int) -> np.ndarray:
    """Outline of class `label` centred on the origin, unrotated, as (K, 2) vertices."""
    name = CLASS_NAMES[label]
    if name == "circle":
        return _regular(96)  # fine enough that supersampled rendering is a true circle
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if name == "triangle":
        return _regular(3)
    if name == "pentagon":
        return _regular(5)
    if name == "star":
        pts = _regular(10)
        pts[1::2] *= 0.42
        return pts
    t = 0.32  # cross (plus sign): arm half-thickness relative to arm half-length
    return np.array(
        [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]],
        dtype=np.float64,
    )


def _rasterize(vertices: np.ndarray, w: int, h: int) -> np.ndarray:
    """Coverage (uint8 0..255) of a polygon given in pixel-edge coordinates of a w x h window."""
    big = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    pts = vertices * SUPERSAMPLE - 0.5  # Pillow puts integer coordinates at pixel centres
    ImageDraw.Draw(big).polygon([(float(x), float(y)) for x, y in pts], fill=255)
    return np.asarray(big.reduce(SUPERSAMPLE))


@dataclass
class _Candidate:
    label: int
    x0: int  # window origin in the image
    y0: int
    alpha: np.ndarray  # window coverage, uint8
    box: np.ndarray  # tight box of alpha >= 128, image pixels


def _candidate(rng: np.random.Generator, h: int, w: int, lo: float, hi: float) -> _Candidate | None:
    label = int(rng.integers(len(CLASS_NAMES)))
    theta = rng.uniform(0, 2 * math.pi)
    c, s = math.cos(theta), math.sin(theta)
    pts = _unit_outline(label) @ np.array([[c, s], [-s, c]])
    pts -= pts.min(axis=0)
    pts *= math.exp(rng.uniform(math.log(lo), math.log(hi))) / pts.max()
    ext = pts.max(axis=0)
    pts += [rng.uniform(1, w - 1 - ext[0]), rng.uniform(1, h - 1 - ext[1])]  # fully inside
    x0, y0 = max(math.floor(pts[:, 0].min()) - 1, 0), max(math.floor(pts[:, 1].min()) - 1, 0)
    x1, y1 = min(math.ceil(pts[:, 0].max()) + 1, w), min(math.ceil(pts[:, 1].max()) + 1, h)
    alpha = _rasterize(pts - [x0, y0], x1 - x0, y1 - y0)
    ys, xs = np.nonzero(alpha >= 128)
    if len(xs) == 0:
        return None
    box = np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], dtype=np.float32)
    if not lo <= max(box[2] - box[0], box[3] - box[1]) <= hi:  # the rule holds for the measured box
        return None
    return _Candidate(label, x0, y0, alpha, box)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix between xyxy box sets a (N, 4) and b (M, 4)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    row = out.copy()
    out[:, 1:] |= row[:, :-1]
    out[:, :-1] |= row[:, 1:]
    return out


def _contrasting_colour(rng: np.random.Generator, patch: np.ndarray) -> np.ndarray:
    """Of a few random colours, the one farthest from most pixels around and under the shape."""
    pixels = patch.reshape(-1, 3)
    pixels = pixels[:: max(1, len(pixels) // 256)]
    candidates = rng.uniform(0, 255, size=(24, 3)).astype(np.float32)
    dist = np.linalg.norm(pixels[None, :, :] - candidates[:, None, :], axis=2)
    return candidates[int(np.argmax(np.percentile(dist, 10, axis=1)))]


def _draw_objects(rng: np.random.Generator, canvas: np.ndarray) -> list[tuple[_Candidate, np.ndarray]]:
    """Place 1..8 shapes with rejection sampling and paint them into `canvas` (in place).

    Shapes never share a pixel (so every mask stays fully visible and its box stays tight) and
    their boxes overlap with IoU <= MAX_IOU.
    """
    h, w = canvas.shape[:2]
    k = min(h, w) / REFERENCE_SHORT_SIDE
    lo, hi = LONG_SIDE_RANGE[0] * k, LONG_SIDE_RANGE[1] * k
    occupied = np.zeros((h, w), dtype=bool)
    placed: list[tuple[_Candidate, np.ndarray]] = []
    for _ in range(int(rng.integers(OBJECTS_RANGE[0], OBJECTS_RANGE[1] + 1))):
        for _attempt in range(_PLACE_ATTEMPTS):
            cand = _candidate(rng, h, w, lo, hi)
            if cand is None:
                continue
            wh, ww = cand.alpha.shape
            win = (slice(cand.y0, cand.y0 + wh), slice(cand.x0, cand.x0 + ww))
            if (occupied[win] & (cand.alpha > 0)).any():
                continue
            if placed and box_iou(cand.box, np.stack([p.box for p, _ in placed])).max() > MAX_IOU:
                continue
            colour = _contrasting_colour(rng, canvas[win])
            a = cand.alpha[..., None].astype(np.float32) / 255.0
            canvas[win] = canvas[win] * (1.0 - a) + colour * a
            occupied[win] |= _dilate(cand.alpha > 0)  # keep a one-pixel gap between shapes
            placed.append((cand, colour))
            break
    return placed


# ---------------------------------------------------------------- one image


def _finish(rng: np.random.Generator, canvas: np.ndarray, quality: int) -> bytes:
    """Camera-like degradations (blur, noise) and JPEG encoding."""
    img = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))
    if rng.random() < 0.6:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0)))
    if rng.random() < 0.6:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + rng.standard_normal(arr.shape, dtype=np.float32) * rng.uniform(1.0, 6.0)
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_sample(seed: int, split: str, index: int) -> ShapesSample:
    """Render image `index` of `split` for `seed` (deterministic)."""
    rng = _rng(seed, split, index)
    h, w = _image_hw(rng)
    canvas = _background(rng, h, w)
    placed = _draw_objects(rng, canvas)
    quality = int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))
    jpeg = _finish(rng, canvas, quality)
    instance_map = np.zeros((h, w), dtype=np.int16)
    areas = []
    for j, (cand, _) in enumerate(placed):
        hard = cand.alpha >= 128
        wh, ww = hard.shape
        instance_map[cand.y0 : cand.y0 + wh, cand.x0 : cand.x0 + ww][hard] = j + 1
        areas.append(int(hard.sum()))
    return ShapesSample(
        file_name=f"{index:06d}.jpg",
        width=w,
        height=h,
        jpeg=jpeg,
        boxes=np.stack([c.box for c, _ in placed]).astype(np.float32),
        labels=np.array([c.label for c, _ in placed], dtype=np.int64),
        areas=np.array(areas, dtype=np.float64),
        colours=np.stack([col for _, col in placed]).astype(np.float32),
        instance_map=instance_map,
    )


def _write_one(job: tuple[int, str, int, str]) -> tuple[str, int, int, np.ndarray, np.ndarray, np.ndarray]:
    seed, split, index, images_dir = job
    s = render_sample(seed, split, index)
    with open(os.path.join(images_dir, s.file_name), "wb") as f:
        f.write(s.jpeg)
    return s.file_name, s.width, s.height, s.boxes, s.labels, s.areas


# ---------------------------------------------------------------- sets on disk


def _manifest(split: str, n: int, seed: int) -> dict:
    return {
        "generator": "edgecsp.data.shapes",
        "version": GENERATOR_VERSION,
        "split": split,
        "n": n,
        "seed": seed,
        "classes": list(CLASS_NAMES),
        "photos": len(_photo_sources()),
    }


def _read_manifest(split_dir: Path) -> dict | None:
    try:
        return json.loads((split_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _check_args(n: int, seed: int, workers: int | None) -> int:
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise EdgeCSPError(f"number of images must be a non-negative integer, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise EdgeCSPError(f"seed must be a non-negative integer, got {seed!r}")
    if workers is None:
        return max(1, min(os.cpu_count() or 1, 8))
    if workers < 1:
        raise EdgeCSPError(f"workers must be at least 1, got {workers}")
    return int(workers)


def _is_generated(split_dir: Path) -> bool:
    """Whether `split_dir` holds only what this generator writes (complete or interrupted)."""
    if _read_manifest(split_dir) is not None:
        return True
    if not {p.name for p in split_dir.iterdir()} <= {"annotations.json", "images", MANIFEST_NAME}:
        return False
    images = split_dir / "images"
    return not images.exists() or all(re.fullmatch(r"\d{6,}\.jpg", p.name) for p in images.iterdir())


def _prepare_split_dir(split_dir: Path) -> None:
    """Make `split_dir` ready to write; only ever clears a directory this generator made."""
    if split_dir.exists() and any(split_dir.iterdir()):
        if not _is_generated(split_dir):
            raise EdgeCSPError(
                f"{split_dir} is not empty and was not made by the shapes generator; choose an empty output directory"
            )
        (split_dir / MANIFEST_NAME).unlink(missing_ok=True)  # first: an interrupted rewrite reads as incomplete
        shutil.rmtree(split_dir / "images", ignore_errors=True)
        (split_dir / "annotations.json").unlink(missing_ok=True)
    (split_dir / "images").mkdir(parents=True, exist_ok=True)


def _run_jobs(jobs: list, workers: int) -> list:
    if workers == 1 or len(jobs) < 2:
        return [_write_one(j) for j in jobs]
    _photo_sources()  # load once here; forked workers inherit it
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    with ctx.Pool(min(workers, len(jobs))) as pool:
        return pool.map(_write_one, jobs, chunksize=max(1, min(16, len(jobs) // (4 * workers))))


def generate_split(split_dir: PathLike, split: str, n: int, seed: int = 0, workers: int | None = None) -> Path:
    """Write `n` images of `split` to `split_dir/{annotations.json, images/}`; returns split_dir."""
    if split not in SPLITS:
        raise EdgeCSPError(f"split must be one of {SPLITS}, got {split!r}")
    workers = _check_args(n, seed, workers)
    split_dir = Path(split_dir)
    _prepare_split_dir(split_dir)
    images_dir = split_dir / "images"
    results = _run_jobs([(int(seed), split, i, str(images_dir)) for i in range(n)], workers)
    records = [ImageRecord(i + 1, name, w, h) for i, (name, w, h, *_rest) in enumerate(results)]
    info = {"description": "edgecsp synthetic shapes", "version": GENERATOR_VERSION, "split": split, "seed": int(seed)}
    write_coco(
        split_dir / "annotations.json",
        CLASS_NAMES,
        records,
        [r[3] for r in results],
        [r[4] for r in results],
        areas=[r[5] for r in results],
        info=info,
    )
    # the manifest goes last: its presence means the split is complete
    (split_dir / MANIFEST_NAME).write_text(json.dumps(_manifest(split, n, int(seed)), indent=1), encoding="utf-8")
    return split_dir


def generate_shapes(
    out_dir: PathLike, n_train: int = 1000, n_val: int = 200, seed: int = 0, workers: int | None = None
) -> dict[str, Path]:
    """Write `out_dir/train` and `out_dir/val` (COCO JSON + JPEG); returns {split: dir}."""
    out = Path(out_dir)
    return {
        "train": generate_split(out / "train", "train", n_train, seed, workers),
        "val": generate_split(out / "val", "val", n_val, seed, workers),
    }


def ensure_shapes_val(cache_dir: PathLike, n: int = 200, seed: int = 0, workers: int | None = None) -> Path:
    """The shapes val split (n images, seed) under `cache_dir`, generated on first use.

    Returns a directory with annotations.json + images/ (open it with resolve_dataset). Its
    images equal the val split of generate_shapes with the same seed.
    """
    _check_args(n, seed, workers)
    if n < 1:
        raise EdgeCSPError("the shapes validation set needs at least one image")
    target = Path(cache_dir) / f"shapes-v{GENERATOR_VERSION}-seed{seed}-val{n}"
    if _read_manifest(target) == _manifest("val", n, int(seed)) and (target / "annotations.json").is_file():
        return target
    # build beside the target and rename, so a concurrent or interrupted run never leaves half a set
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    generate_split(tmp, "val", n, seed, workers)
    if target.exists():
        if _read_manifest(target) == _manifest("val", n, int(seed)):
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
            return target
        if not _is_generated(target):
            shutil.rmtree(tmp, ignore_errors=True)
            raise EdgeCSPError(f"{target} exists but is not a shapes set; remove it or use another cache directory")
        shutil.rmtree(target)
    os.replace(tmp, target)
    return target


def default_cache_dir() -> Path:
    """Where generated data is cached: $EDGECSP_CACHE_DIR, else ~/.cache/edgecsp."""
    from edgecsp.paths import cache_root

    return cache_root()


# The default validation set: the shapes task's val split, fixed seed, generated on first use.
DEFAULT_VAL_IMAGES = 200
DEFAULT_VAL_SEED = 20261125


def default_val_dir(progress: Callable[[str], None] | None = None) -> Path:
    """The default validation set (generated once into the cache, then reused); ``progress`` hears
    about it only when it is generated."""
    from edgecsp.paths import cache_dir

    root = cache_dir()
    target = root / f"shapes-v{GENERATOR_VERSION}-seed{DEFAULT_VAL_SEED}-val{DEFAULT_VAL_IMAGES}"
    if progress is not None and _read_manifest(target) != _manifest("val", DEFAULT_VAL_IMAGES, DEFAULT_VAL_SEED):
        progress("preparing the default validation set (shapes task, generated once and cached)")
    return ensure_shapes_val(root, n=DEFAULT_VAL_IMAGES, seed=DEFAULT_VAL_SEED)


def validation_data(data: str | Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """The validation set to use: ``data`` when given, else the default one (default_val_dir), the
    one fallback of every command and check."""
    return Path(data) if data is not None else default_val_dir(progress)
