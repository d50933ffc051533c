"""The one image preprocessing path: training, evaluation, calibration and every backend use it.

Images are HxWx3 uint8 RGB arrays. `letterbox` resizes keeping the aspect ratio and pads to the
network input size; `LetterboxInfo` maps boxes between original and letterboxed pixels. Boxes are
xyxy in pixel-edge coordinates (pixel i spans [i, i+1)), so a box over a whole WxH image is
[0, 0, W, H].
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence as SequenceType
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from edgecsp.data.fastimage import decode_jpeg, jpeg_reduction, resample
from edgecsp.errors import EdgeCSPError

PAD_VALUE = 114
# Transparent pixels are composited onto the padding grey, so they look like "no content".
_ALPHA_BACKGROUND = (PAD_VALUE, PAD_VALUE, PAD_VALUE)
# EXIF orientations that swap width and height (rotations by 90/270 degrees).
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}
# Larger images are refused before decoding: a few bytes can declare 100000x100000 pixels (a
# decompression bomb) and Pillow's own limit (89 M) only warns below twice its value. 50 M pixels
# takes 48 MP phone and 45 MP camera photos (8064x6048); the worst format at the limit (RGBA or
# 32-bit greyscale) peaks near 1.2 GB, where a 67 M-pixel TIFF measured 1.6 GB.
MAX_IMAGE_PIXELS = 50_000_000
# What Pillow raises on a corrupt EXIF block.
_EXIF_ERRORS = (OSError, ValueError, TypeError, KeyError, SyntaxError)

SizeLike = Union[int, SequenceType[int]]  # typing's: X | Y and abc generics fail at run time on 3.8
PathLike = Union[str, os.PathLike]


# How an image becomes the network input: "letterbox" keeps the aspect ratio and pads (edgecsp's
# models, Darknet cfgs with [net] letter_box=1); "stretch" resizes each axis to the input size
# (Darknet's default, which its cfgs without letter_box were trained and evaluated with).
RESIZE_MODES = ("letterbox", "stretch")


@dataclass(frozen=True)
class LetterboxInfo:
    """How one image was resized: network pixels = original * scale + pad (per axis)."""

    scale: float
    pad_x: float
    pad_y: float
    orig_w: int
    orig_h: int
    scale_y: float | None = None  # stretch only: the vertical scale (None: the same as ``scale``)

    def _scales(self) -> np.ndarray:
        sy = self.scale if self.scale_y is None else self.scale_y
        return np.array([self.scale, sy, self.scale, sy], dtype=np.float64)

    def to_letterbox(self, boxes: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from original-image pixels to letterboxed pixels."""
        b = _as_boxes(boxes)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        return (b * self._scales() + offset).astype(np.float32)

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map xyxy boxes from letterboxed pixels back to the original image, clipped to it."""
        b = _as_boxes(boxes)
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], dtype=np.float64)
        out = (b - offset) / self._scales()
        out[..., 0::2] = out[..., 0::2].clip(0.0, self.orig_w)
        out[..., 1::2] = out[..., 1::2].clip(0.0, self.orig_h)
        return out.astype(np.float32)


def _as_boxes(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1:] != (4,):
        raise EdgeCSPError(f"boxes must have shape (N, 4) in xyxy order, got shape {b.shape}")
    return b.copy()


def size_hw(size: SizeLike) -> tuple[int, int]:
    """(height, width) of an input size given as one int or a pair."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise EdgeCSPError(f"input size must be an int or (height, width), got {size!r}") from None
    if h <= 0 or w <= 0:
        raise EdgeCSPError(f"input size must be positive, got {size!r}")
    return h, w


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise EdgeCSPError(f"expected an HxWx3 RGB image array, got {shape}; load files with load_image_rgb")
    if image.dtype != np.uint8:
        raise EdgeCSPError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise EdgeCSPError("image is empty (zero width or height)")
    return image


def letterbox(image: np.ndarray, size: SizeLike, pad_value: int = PAD_VALUE,
              mode: str = "letterbox") -> tuple[np.ndarray, LetterboxInfo]:
    """Resize `image` (HxWx3 uint8 RGB) into `size` keeping its aspect ratio, padding centred.

    The resize samples exactly the source region [0, new/scale), so box mapping by
    `LetterboxInfo` is exact rather than off by the rounding of the resized size. With
    ``mode="stretch"`` each axis is scaled to the input size instead (no padding).
    """
    image = _check_image(image)
    return letterbox_decoded(image, 1, image.shape[1], image.shape[0], size, pad_value, mode)


def letterbox_file(path: PathLike, size: SizeLike, pad_value: int = PAD_VALUE,
                   mode: str = "letterbox") -> tuple[np.ndarray, LetterboxInfo]:
    """``letterbox(load_image_rgb(path), ...)``, faster: a JPEG at least twice the input size is
    decoded at 1/2, 1/4 or 1/8 size by the decoder itself; boxes map back to the full image."""
    out_hw = size_hw(size)
    if mode not in RESIZE_MODES:
        raise EdgeCSPError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    image, reduction, (w, h) = decode_image(path, out_hw, mode)
    return letterbox_decoded(image, reduction, w, h, out_hw, pad_value, mode)


def letterbox_decoded(image: np.ndarray, reduction: int, src_w: int, src_h: int, size: SizeLike,
                      pad_value: int = PAD_VALUE, mode: str = "letterbox") -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox (or stretch) an image of src_w x src_h pixels, given as ``image`` at 1/``reduction``
    of that size (``decode_image``): the geometry is the full image's, the sampling scale the
    reduced one's."""
    out_h, out_w = size_hw(size)
    if mode == "stretch":
        if (src_h, src_w) == (out_h, out_w) and reduction == 1:
            return image, LetterboxInfo(1.0, 0.0, 0.0, int(src_w), int(src_h), 1.0)
        sx, sy = out_w / src_w, out_h / src_h
        resized = resample(image, sx * reduction, sy * reduction, out_w, out_h)
        return resized, LetterboxInfo(sx, 0.0, 0.0, int(src_w), int(src_h), sy)
    if mode != "letterbox":
        raise EdgeCSPError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    scale = min(out_h / src_h, out_w / src_w)
    # floor (with slack for float error) so the sampled source region never exceeds the image
    new_w = max(1, min(out_w, math.floor(src_w * scale + 1e-6)))
    new_h = max(1, min(out_h, math.floor(src_h * scale + 1e-6)))
    if (new_w, new_h) == (src_w, src_h) and reduction == 1:
        resized = image
    else:
        resized = resample(image, scale * reduction, scale * reduction, new_w, new_h)
    pad_x = (out_w - new_w) // 2
    pad_y = (out_h - new_h) // 2
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, LetterboxInfo(float(scale), float(pad_x), float(pad_y), int(src_w), int(src_h))


def resize_mode(preprocessing: dict | None) -> str:
    """The resize mode a model or artifact's ``preprocessing`` description asks for."""
    mode = (preprocessing or {}).get("resize", "letterbox")
    if mode not in RESIZE_MODES:
        raise EdgeCSPError(f"preprocessing resize={mode!r:.40} is not one of {', '.join(RESIZE_MODES)}")
    return mode


def to_tensor_batch(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack letterboxed HxWx3 uint8 RGB images into a float32 NCHW array in [0, 1].

    Returns numpy so every backend can use it; training wraps it with torch.from_numpy.
    """
    if len(images) == 0:
        raise EdgeCSPError("cannot build a batch from zero images")
    shapes = {np.shape(im) for im in images}
    if len(shapes) != 1:
        raise EdgeCSPError(f"all images in a batch must be letterboxed to one size, got shapes {sorted(shapes)}")
    batch = np.stack([_check_image(im) for im in images]).astype(np.float32)
    batch *= 1.0 / 255.0
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def preprocess(
    images: np.ndarray | PathLike | Sequence[np.ndarray | PathLike], size: SizeLike, mode: str = "letterbox"
) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Load (if paths), letterbox (or stretch) and batch images: returns (NCHW float32 batch, infos)."""
    if isinstance(images, (np.ndarray, str, os.PathLike)):
        images = [images]
    boxed, infos = [], []
    for item in images:
        arr = item if isinstance(item, np.ndarray) else load_image_rgb(item)
        lb, info = letterbox(arr, size, mode=mode)
        boxed.append(lb)
        infos.append(info)
    return to_tensor_batch(boxed), infos


def is_file(path: Path) -> bool:
    """Path.is_file, but False (not OSError) for a name the OS refuses, e.g. one too long."""
    try:
        return path.is_file()
    except OSError:
        return False


def _shown(path: PathLike) -> str:
    """A path for a one-line message: as is, or repr when its name holds a newline or control character."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def _unreadable(p: Path, err: BaseException) -> EdgeCSPError:
    reason = " ".join(str(err).split()) or type(err).__name__  # one line, even for odd messages
    return EdgeCSPError(f"cannot read image {_shown(p)} ({reason}); is it a valid JPEG/PNG file?")


@contextlib.contextmanager
def _opened(path: PathLike) -> Iterator[Image.Image]:
    """Open an image file (header only), refusing missing, empty and oversized ones."""
    p = Path(path)
    if not is_file(p):
        raise EdgeCSPError(f"image file not found: {_shown(p)}; check the path")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between its limit and twice it; ours below refuses those too.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except Image.DecompressionBombError:  # over twice Pillow's limit, so far over ours
        raise EdgeCSPError(f"image {_shown(p)} declares over {2 * Image.MAX_IMAGE_PIXELS} pixels, more than the "
                           f"limit of {MAX_IMAGE_PIXELS}; downscale it (or it is corrupt or a decompression bomb)") from None
    except Exception as err:  # noqa: BLE001 - Pillow's plugins raise SyntaxError, struct.error... for corrupt files
        raise _unreadable(p, err) from None
    with img:
        w, h = img.size
        if w * h > MAX_IMAGE_PIXELS:
            raise EdgeCSPError(f"image {_shown(p)} is {w}x{h} = {w * h} pixels, more than the limit of {MAX_IMAGE_PIXELS}; "
                               "downscale it (or it is corrupt or a decompression bomb)")
        if w <= 0 or h <= 0:
            raise EdgeCSPError(f"image {_shown(p)} is empty ({w}x{h} pixels); replace or remove it")
        yield img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float greyscale: stretch to 8 bit instead of Pillow's clipping conversion
        # float64, in place: float32 pixels can span more than float32's range
        with np.errstate(invalid="ignore"):  # a signalling NaN pixel warns when cast; zeroed below
            arr = np.array(img, dtype=np.float64)
        arr[~np.isfinite(arr)] = 0.0  # NaN/inf pixels (float TIFFs) would make the whole image NaN
        lo, hi = float(arr.min()), float(arr.max())
        arr -= lo
        arr *= 255.0 / (hi - lo) if hi > lo else 0.0
        return Image.fromarray(arr.round(out=arr).astype(np.uint8)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        base = Image.new("RGBA", img.size, _ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(base, img).convert("RGB")
    return img.convert("RGB")


def load_image_rgb(path: PathLike) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB, upright per its EXIF orientation.

    Greyscale, palette, CMYK and 16-bit images are converted; transparency is composited onto
    the padding grey (114). Images over MAX_IMAGE_PIXELS are refused before they are decoded.
    """
    return decode_image(path)[0]


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except (*_EXIF_ERRORS, OverflowError):  # a broken EXIF block: treat as upright, as exif_transpose would fail
        return 1


def decode_image(path: PathLike, size: SizeLike | None = None,
                 mode: str = "letterbox") -> tuple[np.ndarray, int, tuple[int, int]]:
    """(RGB array, reduction, full (width, height)): decoded at 1/reduction size where ``size``
    (the network input, resized to by ``mode``) allows it for an upright JPEG, else at full size
    (reduction 1)."""
    p = Path(path)
    out_hw = None if size is None else size_hw(size)
    with _opened(p) as img:
        w, h = img.size
        upright = _orientation(img) in (0, 1)
        reduction = 1
        if out_hw is not None and upright and img.format == "JPEG":
            # letterbox scales both axes alike; stretch scales each, and the larger scale decides
            axis = (out_hw[0] / h, out_hw[1] / w)
            reduction = jpeg_reduction(w, h, max(axis) if mode == "stretch" else min(axis))
        if upright and img.format == "JPEG" and img.mode in ("RGB", "L"):
            fast = decode_jpeg(p, w, h, reduction)  # OpenCV: decoded into one array, no copies
            if fast is not None:
                return fast, reduction, (w, h)
        if reduction > 1:  # Pillow's draft mode: the same DCT-domain reduction
            img.draft("RGB", (w // reduction, h // reduction))
            reduction = max(1, round(w / img.size[0]))
        try:
            img.load()
        except Exception as err:  # noqa: BLE001 - decoders raise arbitrary types for corrupt data
            raise _unreadable(p, err) from None
        if not upright:
            try:
                img = ImageOps.exif_transpose(img) or img  # only here: without rotation it would copy
            except _EXIF_ERRORS:  # a broken EXIF block should not make an otherwise fine image unusable
                pass
            w, h = img.size
        try:
            rgb = _to_rgb(img)
        except ValueError as err:  # a pixel format Pillow cannot convert to RGB
            raise _unreadable(p, err) from None
        return np.array(rgb), reduction, (w, h)  # one copy out of Pillow's buffer, writable


def image_size(path: PathLike) -> tuple[int, int]:
    """(width, height) of an image file as load_image_rgb returns it, read from the header only."""
    with _opened(path) as img:
        w, h = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        except _EXIF_ERRORS:
            orientation = 1
    return (h, w) if orientation in _TRANSPOSED_ORIENTATIONS else (w, h)
