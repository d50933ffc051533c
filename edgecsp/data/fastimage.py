"""Decoding and resampling with the library made for it: OpenCV where it is installed (its
libjpeg-turbo decodes straight into one array, its SIMD resize is 5-10x Pillow's), Pillow
otherwise (a device install without OpenCV gets the same geometry, more slowly).

Two speed-ups keep the geometry exact:
- reduced JPEG decoding: libjpeg scales by 1/2, 1/4 or 1/8 inside the inverse DCT, so a photo
  twice the network input or more is decoded at the size it is needed (pixel i of the reduced
  image covers original pixels [f*i, f*i + f));
- resizing with an explicit scale (``fx``/``fy``) rather than a target size, so the sampled source
  region is exactly the one ``LetterboxInfo`` maps boxes back through.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

# libjpeg's DCT-domain reductions, largest first
JPEG_REDUCTIONS = (8, 4, 2)
_JPEG_END = b"\xff\xd9"
_cv2: Any = None
_cv2_checked = False


def opencv() -> Any:
    """The cv2 module, or None where OpenCV is not installed (Pillow is used instead)."""
    global _cv2, _cv2_checked
    if not _cv2_checked:
        try:
            import cv2

            _cv2 = cv2 if hasattr(cv2, "IMREAD_COLOR_RGB") else None  # OpenCV >= 4.10 decodes to RGB
        except ImportError:
            _cv2 = None
        _cv2_checked = True
    return _cv2


def jpeg_reduction(width: int, height: int, scale: float) -> int:
    """The largest reduction whose image is still at least as large as ``scale`` asks for."""
    for f in JPEG_REDUCTIONS:
        if scale * f <= 1.0 + 1e-9 and width >= f and height >= f:
            return f
    return 1


def decode_jpeg(path: Path, width: int, height: int, reduction: int) -> np.ndarray | None:
    """An RGB JPEG (or greyscale) decoded by OpenCV at 1/``reduction`` size; None where OpenCV is
    missing or the file is not one it decodes completely (Pillow then decodes it and reports
    what is wrong in edgecsp's words)."""
    cv2 = opencv()
    if cv2 is None:
        return None
    data = np.fromfile(str(path), dtype=np.uint8)
    # libjpeg only warns on a truncated file and fills the rest with grey; Pillow refuses it
    if len(data) < 4 or data[-2:].tobytes() != _JPEG_END:
        return None
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION  # orientation: the caller's (EXIF) rule
    if reduction > 1:
        flags |= {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                  8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[reduction]  # the reduction bits, with RGB colour
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error:  # an OpenCV build that refuses this flag combination: Pillow decodes instead
        return None
    expected = (math.ceil(height / reduction), math.ceil(width / reduction), 3)
    if image is None or image.shape != expected:
        return None
    return image


def resample(image: np.ndarray, sx: float, sy: float, new_w: int, new_h: int) -> np.ndarray:
    """``image`` resampled so that output pixel edges = source pixel edges * (sx, sy), cropped to
    new_h x new_w (bilinear; area averaging first for reductions below 1/2, against aliasing)."""
    cv2 = opencv()
    src_h, src_w = image.shape[:2]
    if cv2 is None:
        from PIL import Image

        box = (0.0, 0.0, min(src_w, new_w / sx), min(src_h, new_h / sy))
        return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR, box=box))
    kx = int(1.0 / sx + 1e-9) if sx < 0.5 else 1
    ky = int(1.0 / sy + 1e-9) if sy < 0.5 else 1
    if kx > 1 or ky > 1:  # integer area reduction: exact, fast, and no aliasing from the bilinear step
        image = cv2.resize(image, None, fx=1.0 / kx, fy=1.0 / ky, interpolation=cv2.INTER_AREA)
        sx, sy = sx * kx, sy * ky
    if abs(sx - 1.0) > 1e-9 or abs(sy - 1.0) > 1e-9:
        # fx/fy (no dsize): OpenCV maps with exactly these scales (a dsize would imply its own)
        image = cv2.resize(image, None, fx=sx, fy=sy, interpolation=cv2.INTER_LINEAR)
    h, w = image.shape[:2]
    if h < new_h or w < new_w:  # rounding of OpenCV's output size: at most a pixel, repeat the edge
        image = cv2.copyMakeBorder(image, 0, max(0, new_h - h), 0, max(0, new_w - w), cv2.BORDER_REPLICATE)
    return image[:new_h, :new_w]
