"""Training augmentation on numpy images: random scale and placement on the letterbox canvas,
flips and colour jitter. Boxes follow the pixels; boxes mostly cut off are dropped."""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgecsp.data.preprocess import PAD_VALUE


def random_letterbox(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, size: int,
                     rng: np.random.Generator, scale_range=(0.6, 1.3),
                     stretch: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random scale and placement; ``stretch`` scales each axis to ``size`` first (Darknet's resize)."""
    h, w = image.shape[:2]
    k = rng.uniform(*scale_range)
    sx, sy = (size / w * k, size / h * k) if stretch else (min(size / h, size / w) * k,) * 2
    nw, nh = max(8, round(w * sx)), max(8, round(h * sy))
    resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    ox = int(rng.integers(min(0, size - nw), max(0, size - nw) + 1))
    oy = int(rng.integers(min(0, size - nh), max(0, size - nh) + 1))
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + nw, size), min(oy + nh, size)
    canvas[y0:y1, x0:x1] = resized[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    b = boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([ox, oy, ox, oy], np.float32)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    b = b.clip(0, size)
    kept_area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = (kept_area > 0.6 * area) & ((b[:, 2] - b[:, 0]) > 2) & ((b[:, 3] - b[:, 1]) > 2)
    return canvas, b[keep].astype(np.float32), labels[keep]


def flip(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    size_h, size_w = image.shape[:2]
    if rng.random() < 0.5:
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, [0, 2]] = size_w - boxes[:, [2, 0]]
    if rng.random() < 0.5:
        image = image[::-1]
        boxes = boxes.copy()
        boxes[:, [1, 3]] = size_h - boxes[:, [3, 1]]
    return np.ascontiguousarray(image), boxes


def color_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    img = image.astype(np.float32)
    gray = img.mean(axis=2, keepdims=True)
    img = gray + (img - gray) * rng.uniform(0.6, 1.4)  # saturation
    img = (img - 128) * rng.uniform(0.75, 1.25) + 128 + rng.uniform(-25, 25)  # contrast, brightness
    return img.clip(0, 255).astype(np.uint8)


def augment(image, boxes, labels, size, rng, stretch: bool = False):
    image, boxes, labels = random_letterbox(image, boxes, labels, size, rng, stretch=stretch)
    image, boxes = flip(image, boxes, rng)
    return color_jitter(image, rng), boxes, labels
