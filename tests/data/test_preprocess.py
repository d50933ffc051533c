"""Letterbox geometry and its inverse, tensors, image loading (modes, EXIF, errors)."""

from __future__ import annotations

import numpy as np
import pytest
from data_files import _save
from PIL import Image

from edgecsp.data import (
    image_size,
    letterbox,
    load_image_rgb,
    preprocess,
    to_tensor_batch,
)
from edgecsp.errors import EdgeCSPError

# ---------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("hw", [(100, 250), (250, 100), (77, 77), (31, 400)])
@pytest.mark.parametrize("size", [320, (256, 416)])
def test_letterbox_geometry_and_inverse(hw, size):
    h, w = hw
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 1] = 200
    # a white block whose position must survive the letterbox mapping
    bx0, by0, bx1, by1 = w // 4, h // 4, w // 4 + max(w // 3, 8), h // 4 + max(h // 3, 8)
    img[by0:by1, bx0:bx1] = 255
    out, info = letterbox(img, size)
    oh, ow = (size, size) if isinstance(size, int) else size
    assert out.shape == (oh, ow, 3) and out.dtype == np.uint8
    assert info.orig_w == w and info.orig_h == h
    # centred padding with the pad value, content in the middle
    new_w, new_h = ow - 2 * info.pad_x, oh - 2 * info.pad_y
    assert abs(new_w - w * info.scale) <= 1.01 and abs(new_h - h * info.scale) <= 1.01
    assert min(info.pad_x, info.pad_y) == 0
    if info.pad_x >= 1:
        assert (out[:, 0] == 114).all()
    if info.pad_y >= 1:
        assert (out[0] == 114).all()
    # the mapped block lands on the white block
    lb = info.to_letterbox(np.array([[bx0, by0, bx1, by1]], dtype=np.float32))[0]
    cx, cy = int((lb[0] + lb[2]) / 2), int((lb[1] + lb[3]) / 2)
    assert (out[cy, cx] > 240).all()
    # inverse round trip, including clipping to the image
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, [w, h], size=(20, 2))
    boxes = np.concatenate([xy, np.minimum(xy + rng.uniform(1, 50, size=(20, 2)), [w, h])], axis=1)
    back = info.to_original(info.to_letterbox(boxes))
    np.testing.assert_allclose(back, boxes, atol=1e-4, rtol=0)
    outside = info.to_original(np.array([[-50, -50, ow + 50, oh + 50]], dtype=np.float32))
    np.testing.assert_allclose(outside, [[0, 0, w, h]], atol=1e-4)


def test_letterbox_inverse_is_exact_in_pixels():
    # a box over the whole image maps exactly onto the resized content
    img = np.full((123, 457, 3), 255, dtype=np.uint8)
    out, info = letterbox(img, 320)
    lb = info.to_letterbox(np.array([[0, 0, 457, 123]]))[0]
    rows = np.nonzero((out != 114).any(axis=(1, 2)))[0]
    assert abs(lb[1] - rows.min()) < 1.0 and abs(lb[3] - (rows.max() + 1)) < 1.0
    assert lb[0] == 0 and abs(lb[2] - 320) < 1.0


@pytest.mark.parametrize("portrait", [False, True])
def test_letterbox_mapping_is_subpixel_accurate(portrait):
    # 300x100 into 320: the short side becomes 106.67 px, so a mapping that ignores the rounding
    # of the resized size is off by a third of a pixel at a step edge placed mid-image
    img = np.zeros((100, 300, 3), dtype=np.uint8)
    img[50:] = 255
    if portrait:
        img = img.transpose(1, 0, 2).copy()
    out, info = letterbox(img, 320)
    profile = (out[:, 160, 0] if not portrait else out[160, :, 0]).astype(np.float64)
    i = int(np.nonzero(profile >= 127.5)[0][0])  # first pixel past the edge's half-height
    crossing = i - 0.5 + (127.5 - profile[i - 1]) / (profile[i] - profile[i - 1])
    edge = info.to_letterbox(np.array([[50.0, 50.0, 60.0, 60.0]]))[0]
    assert abs(crossing - (edge[0] if portrait else edge[1])) < 0.2


def test_to_tensor_batch_and_preprocess(tmp_path):
    a = np.full((64, 64, 3), 255, dtype=np.uint8)
    a[..., 0] = 0
    batch = to_tensor_batch([a, a])
    assert batch.shape == (2, 3, 64, 64) and batch.dtype == np.float32
    assert batch[:, 0].max() == 0.0 and batch[:, 1].min() == 1.0  # RGB channel order kept
    with pytest.raises(EdgeCSPError, match="one size"):
        to_tensor_batch([a, a[:32]])
    _save(tmp_path / "x.png", 90, 40)
    batch, infos = preprocess([tmp_path / "x.png", np.zeros((10, 30, 3), np.uint8)], (96, 128))
    assert batch.shape == (2, 3, 96, 128) and len(infos) == 2 and infos[0].orig_w == 90
    assert 0.0 <= batch.min() and batch.max() <= 1.0
    with pytest.raises(EdgeCSPError, match="HxWx3"):
        letterbox(np.zeros((10, 10), np.uint8), 32)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "I;16", "CMYK"])
def test_load_image_converts_to_rgb(tmp_path, mode):
    src = Image.new("RGB", (30, 20), (200, 100, 50))
    img = src.convert(mode) if mode != "I;16" else Image.fromarray(np.full((20, 30), 4000, np.uint16))
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    arr = load_image_rgb(path)
    assert arr.shape == (20, 30, 3) and arr.dtype == np.uint8


def test_load_image_transparency_and_exif(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert (load_image_rgb(tmp_path / "t.png") == 114).all()
    # EXIF orientation 6 (rotate 90): stored 40x20, shown 20x40
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_image_rgb(tmp_path / "r.jpg").shape == (40, 20, 3)
    assert image_size(tmp_path / "r.jpg") == (20, 40)


def test_load_image_errors(tmp_path):
    with pytest.raises(EdgeCSPError, match="image file not found"):
        load_image_rgb(tmp_path / "none.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(EdgeCSPError, match="cannot read image"):
        load_image_rgb(tmp_path / "bad.jpg")
