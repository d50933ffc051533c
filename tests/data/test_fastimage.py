"""Fast preprocessing (edgecsp.data.fastimage via preprocess): OpenCV's decoder and resize, JPEGs
decoded at reduced size, the Pillow fallback; the contract (RGB, EXIF upright, errors, exact
letterbox geometry) is the one of load_image_rgb + letterbox."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgecsp.data import fastimage
from edgecsp.data.preprocess import decode_image, letterbox, letterbox_file, load_image_rgb
from edgecsp.errors import EdgeCSPError

pytestmark = pytest.mark.skipif(fastimage.opencv() is None, reason="OpenCV is not installed")


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth scene with an edge: JPEG-friendly, so decoders agree closely."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)), np.full_like(x, 90)], -1)
    img = img.astype(np.uint8)
    img[h // 4: h // 2, w // 3: w // 2] = rng.integers(0, 255, 3, dtype=np.uint8)
    return img


@pytest.fixture
def pillow_only(monkeypatch):
    """The device-side fallback: as if OpenCV were not installed."""
    monkeypatch.setattr(fastimage, "_cv2", None)
    monkeypatch.setattr(fastimage, "_cv2_checked", True)


@pytest.mark.parametrize("hw", [(480, 640), (481, 641), (1000, 700), (100, 90)])
def test_letterbox_file_matches_letterbox_of_the_full_image(tmp_path, hw):
    path = tmp_path / "p.jpg"
    Image.fromarray(_photo(*hw)).save(path, quality=92)
    full = load_image_rgb(path)
    ref, ref_info = letterbox(full, 320)
    fast, info = letterbox_file(path, 320)
    assert info == ref_info  # the geometry is the full image's, whatever size was decoded
    assert fast.shape == ref.shape == (320, 320, 3) and fast.dtype == np.uint8
    assert np.abs(fast.astype(int) - ref).mean() < 2.0  # reduced decoding vs full decode + resize


def test_reduced_decoding_only_where_the_input_allows_it(tmp_path):
    path = tmp_path / "p.jpg"
    Image.fromarray(_photo(480, 640)).save(path)
    assert decode_image(path, 320)[1] == 2 and decode_image(path, 320)[0].shape == (240, 320, 3)
    assert decode_image(path, 160)[1] == 4
    assert decode_image(path, 416)[1] == 1  # 640 -> 416 is more than half: full size
    assert decode_image(path)[1] == 1
    assert decode_image(path, 320, mode="stretch")[1] == 1  # stretch: 480 -> 320 vertically is 2/3
    assert decode_image(path, (200, 300), mode="stretch")[1] == 2
    stretched, info = letterbox_file(path, 160, mode="stretch")
    ref, ref_info = letterbox(load_image_rgb(path), 160, mode="stretch")
    assert info == ref_info and np.abs(stretched.astype(int) - ref).mean() < 2.0


def test_opencv_decoding_equals_pillow_and_is_writable(tmp_path):
    path = tmp_path / "p.jpg"
    Image.fromarray(_photo(120, 160)).save(path)
    image = load_image_rgb(path)
    assert np.array_equal(image, np.asarray(Image.open(path).convert("RGB")))  # both libjpeg-turbo, same IDCT
    assert image.flags.writeable and image.flags.c_contiguous
    grey = tmp_path / "g.jpg"
    Image.fromarray(_photo(120, 160)[..., 0]).save(grey)
    assert load_image_rgb(grey).shape == (120, 160, 3)


def test_exif_rotated_jpeg_is_upright_and_maps_back(tmp_path):
    img = Image.fromarray(_photo(400, 800))  # stored 800x400, orientation 6: shown 400x800
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image_rgb(tmp_path / "r.jpg").shape == (800, 400, 3)
    _, info = letterbox_file(tmp_path / "r.jpg", 320)
    assert (info.orig_w, info.orig_h) == (400, 800)


def test_truncated_and_corrupt_jpegs_are_one_line_errors(tmp_path):
    good = tmp_path / "p.jpg"
    Image.fromarray(_photo(480, 640)).save(good)
    data = good.read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])  # OpenCV would fill the rest with grey
    (tmp_path / "c.jpg").write_bytes(data[:200] + b"\x00" * 500 + data[-2:])
    for name in ("t.jpg", "c.jpg"):
        with pytest.raises(EdgeCSPError, match="cannot read image"):
            letterbox_file(tmp_path / name, 320)


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_geometry_is_exact_with_opencv(mode):
    """A bright column at a known place lands where LetterboxInfo says, also in stretch mode."""
    h, w = 300, 500
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, 200:240] = 255
    boxed, info = letterbox(image, 256, mode=mode)
    mapped = info.to_letterbox(np.array([[200.0, 0.0, 240.0, float(h)]]))[0]
    row = boxed[int(mapped[1] + mapped[3]) // 2, :, 0].astype(float)
    centre = (row * np.arange(len(row))).sum() / row.sum() + 0.5  # pixel-edge coordinates
    assert centre == pytest.approx((mapped[0] + mapped[2]) / 2, abs=0.05)


def test_large_reduction_averages_instead_of_aliasing():
    """Every third column white, reduced 6x: area averaging gives a flat third (85); bilinear
    sampling alone would read two neighbouring columns (127.5)."""
    image = np.zeros((1200, 1800, 3), dtype=np.uint8)
    image[:, ::3] = 255
    boxed, _ = letterbox(image, 300)
    content = boxed[50:250, :].astype(float)
    assert abs(content.mean() - 85) < 2 and content.std() < 2


def test_pillow_fallback_keeps_the_contract(tmp_path, pillow_only):
    path = tmp_path / "p.jpg"
    Image.fromarray(_photo(480, 640)).save(path, quality=92)
    assert fastimage.opencv() is None
    image, reduction, size = decode_image(path, 320)
    assert reduction == 2 and image.shape == (240, 320, 3) and size == (640, 480)  # Pillow's draft mode
    fast, info = letterbox_file(path, 320)
    ref, ref_info = letterbox(load_image_rgb(path), 320)
    assert info == ref_info and np.abs(fast.astype(int) - ref).mean() < 2.0
