"""Tests for edgecsp.data: readers, preprocessing and the shapes generator."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecsp.data import (
    CocoDataset,
    DataWarning,
    YoloDataset,
    ensure_shapes_val,
    generate_shapes,
    image_size,
    letterbox,
    load_image_rgb,
    preprocess,
    resolve_dataset,
    to_tensor_batch,
    write_coco,
    yolo_to_coco,
)
from edgecsp.data.__main__ import main as data_main
from edgecsp.data.shapes import (
    CLASS_NAMES,
    LONG_SIDE_RANGE,
    MAX_IOU,
    REFERENCE_SHORT_SIDE,
    box_iou,
    generate_split,
    render_sample,
)
from edgecsp.errors import EdgeCSPError

# ---------------------------------------------------------------- helpers


def _save(path: Path, w: int, h: int, colour=(40, 80, 120)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), colour).save(path)


def _coco_dir(tmp_path: Path, n_images: int = 3) -> tuple[Path, list, list, list]:
    """A small COCO set with non-contiguous category ids; returns (dir, images, boxes, labels)."""
    rng = np.random.default_rng(0)
    images, boxes, labels = [], [], []
    for i in range(n_images):
        w, h = int(rng.integers(50, 120)), int(rng.integers(50, 120))
        _save(tmp_path / "images" / f"im{i}.png", w, h)
        xy = rng.uniform(0, [w / 2, h / 2], size=(i + 1, 2))
        wh = rng.uniform(2, [w / 2, h / 2], size=(i + 1, 2))
        images.append({"file_name": f"im{i}.png", "width": w, "height": h})
        boxes.append(np.concatenate([xy, xy + wh], axis=1).astype(np.float32))
        labels.append(rng.integers(0, 3, size=i + 1))
    write_coco(tmp_path / "annotations.json", ["a", "b", "c"], images, boxes, labels, category_ids=[3, 7, 10])
    return tmp_path, images, boxes, labels


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def test_write_coco_does_not_use_a_fixed_temporary_name(tmp_path):
    # A fixed "<name>.tmp" is shared by every writer of the same file: two concurrent writers race,
    # and one left behind (here a folder) breaks every later write. The temporary is private.
    (tmp_path / "annotations.json.tmp").mkdir()
    (tmp_path / "annotations.json.tmp" / "keep").write_text("someone else's")
    root, images, _, _ = _coco_dir(tmp_path)
    assert len(resolve_dataset(root)) == len(images)
    assert (tmp_path / "annotations.json.tmp" / "keep").read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["annotations.json", "annotations.json.tmp", "images"]


# ---------------------------------------------------------------- COCO reader


def test_coco_round_trip(tmp_path):
    root, images, boxes, labels = _coco_dir(tmp_path)
    ds = CocoDataset(root / "annotations.json", root / "images")
    assert len(ds) == 3
    assert ds.categories == {3: "a", 7: "b", 10: "c"}
    assert ds.class_names == ["a", "b", "c"]
    assert ds.category_to_label == {3: 0, 7: 1, 10: 2}
    assert list(ds.label_to_category_id(np.array([2, 0]))) == [10, 3]
    assert ds.annotations_path == root / "annotations.json"
    for i in range(3):
        img, b, lab = ds[i]
        assert img.shape == (images[i]["height"], images[i]["width"], 3) and img.dtype == np.uint8
        assert b.dtype == np.float32 and lab.dtype == np.int64
        np.testing.assert_allclose(b, boxes[i], atol=1e-3)
        np.testing.assert_array_equal(lab, labels[i])


def test_resolve_dataset_layouts(tmp_path):
    root, *_ = _coco_dir(tmp_path / "plain")
    assert len(resolve_dataset(root)) == 3
    # COCO 2017 layout: annotations/instances_val.json + val/
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (root / "annotations.json").rename(coco / "annotations" / "instances_val.json")
    (root / "images").rename(coco / "val")
    ds = resolve_dataset(coco)
    assert ds.images_dir == coco / "val" and len(ds) == 3
    assert len(resolve_dataset(annotations=coco / "annotations" / "instances_val.json", images=coco / "val")) == 3
    with pytest.raises(EdgeCSPError, match="no dataset given"):
        resolve_dataset()
    with pytest.raises(EdgeCSPError, match="dataset directory not found"):
        resolve_dataset(tmp_path / "nope")
    (coco / "annotations" / "instances_train.json").write_text("{}")
    with pytest.raises(EdgeCSPError, match="several annotation files"):
        resolve_dataset(coco)


def test_coco_missing_images(tmp_path):
    root, *_ = _coco_dir(tmp_path)
    (root / "images" / "im1.png").unlink()
    (root / "images" / "im2.png").unlink()
    with pytest.raises(EdgeCSPError, match=r"2 of 3 images .* missing .*first: im1\.png"):
        CocoDataset(root / "annotations.json", root / "images")


def test_coco_unknown_category(tmp_path):
    root, *_ = _coco_dir(tmp_path)
    _edit_json(root / "annotations.json", lambda d: d["annotations"][0].update(category_id=99))
    with pytest.raises(EdgeCSPError, match="category id 99"):
        CocoDataset(root / "annotations.json", root / "images")


def test_coco_empty_and_malformed(tmp_path):
    root, *_ = _coco_dir(tmp_path)
    _edit_json(root / "annotations.json", lambda d: d.update(images=[], annotations=[]))
    with pytest.raises(EdgeCSPError, match="no images"):
        CocoDataset(root / "annotations.json", root / "images")
    (root / "annotations.json").write_text("{not json")
    with pytest.raises(EdgeCSPError, match="not valid JSON"):
        CocoDataset(root / "annotations.json", root / "images")
    with pytest.raises(EdgeCSPError, match="annotation file not found"):
        CocoDataset(root / "missing.json", root / "images")


def test_coco_boxes_outside_image_clipped_or_dropped(tmp_path):
    _save(tmp_path / "images" / "a.png", 100, 80)
    images = [{"file_name": "a.png", "width": 100, "height": 80}]
    boxes = [np.array([[10, 10, 30, 30], [90, 70, 130, 100], [-20, 5, 10, 20], [120, 10, 150, 30], [5, 5, 5, 30]])]
    write_coco(tmp_path / "annotations.json", ["x"], images, boxes, [np.zeros(5, dtype=int)])
    with pytest.warns(DataWarning) as record:
        ds = CocoDataset(tmp_path / "annotations.json", tmp_path / "images")
    messages = " | ".join(str(w.message) for w in record)
    assert "clipped 2 boxes" in messages
    assert "dropped 2 boxes" in messages
    b, _ = ds.targets(0)
    np.testing.assert_allclose(b, [[10, 10, 30, 30], [90, 70, 100, 80], [0, 5, 10, 20]])


def test_coco_no_warning_for_clean_set(tmp_path):
    root, *_ = _coco_dir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CocoDataset(root / "annotations.json", root / "images")


# ---------------------------------------------------------------- YOLO reader


def test_yolo_round_trip_matches_coco(tmp_path):
    root = tmp_path / "yolo"
    sizes = {"a.jpg": (160, 90), "sub/b.png": (70, 130), "c.png": (64, 64)}
    for name, (w, h) in sizes.items():
        _save(root / "images" / name, w, h)
    (root / "labels" / "sub").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.25 0.5\n0 0.1 0.2 0.1 0.2\n\n")
    (root / "labels" / "sub" / "b.txt").write_text("2 0.5 0.25 1.0 0.5\n")
    # c.png has no label file: an image without objects
    (root / "classes.txt").write_text("cat\ndog\nbird\n")
    ds = YoloDataset(root)
    assert ds.class_names == ["cat", "dog", "bird"] and len(ds) == 3
    names = [r.file_name for r in ds.images]
    assert names == ["a.jpg", "c.png", "sub/b.png"]
    b, lab = ds.targets(0)
    np.testing.assert_allclose(b, [[60, 22.5, 100, 67.5], [8, 9, 24, 27]], atol=1e-4)
    np.testing.assert_array_equal(lab, [1, 0])
    assert ds.targets(1)[0].shape == (0, 4)
    coco = CocoDataset(yolo_to_coco(root), root / "images")
    assert coco.class_names == ds.class_names and coco.category_ids == [1, 2, 3]
    for i in range(len(ds)):
        yb, yl = ds.targets(i)
        cb, cl = coco.targets(i)
        np.testing.assert_allclose(cb, yb, atol=1e-3)
        np.testing.assert_array_equal(cl, yl)
    img, _, _ = coco[2]
    assert img.shape == (130, 70, 3)


def test_yolo_bad_labels(tmp_path):
    _save(tmp_path / "images" / "a.png", 20, 20)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.txt").write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(EdgeCSPError, match=r"a\.txt:1: class 5"):
        YoloDataset(tmp_path, names=["x", "y"])
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(EdgeCSPError, match="expected 'class cx cy w h'"):
        YoloDataset(tmp_path, names=["x"])
    with pytest.raises(EdgeCSPError, match="no class names"):
        YoloDataset(tmp_path)
    with pytest.raises(EdgeCSPError, match="looks like a YOLO"):
        resolve_dataset(tmp_path)


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


# ---------------------------------------------------------------- shapes generator


def _tree_bytes(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_shapes_deterministic_across_workers_and_seeds(tmp_path):
    a = generate_split(tmp_path / "a", "val", 6, seed=5, workers=1)
    b = generate_split(tmp_path / "b", "val", 6, seed=5, workers=2)
    c = generate_split(tmp_path / "c", "val", 6, seed=6, workers=1)
    ta, tb, tc = _tree_bytes(a), _tree_bytes(b), _tree_bytes(c)
    assert len(ta) == 6 + 2 and ta == tb
    assert ta["annotations.json"] != tc["annotations.json"]
    assert all(ta[k] != tc[k] for k in ta if k.endswith(".jpg"))
    # train and val are different images
    t = render_sample(5, "train", 0)
    assert t.jpeg != (a / "images" / "000000.jpg").read_bytes()


def test_shapes_rules_hold():
    sizes = set()
    for i in range(30):
        s = render_sample(11, "train", i)
        sizes.add((s.width > s.height, s.width == s.height))
        short = min(s.width, s.height)
        assert 240 <= short <= 480 and 0.6 - 0.01 <= s.width / s.height <= 1.8 + 0.01
        assert 1 <= len(s.boxes) <= 8
        assert ((s.labels >= 0) & (s.labels < 6)).all()
        k = short / REFERENCE_SHORT_SIDE
        long_side = np.maximum(s.boxes[:, 2] - s.boxes[:, 0], s.boxes[:, 3] - s.boxes[:, 1])
        assert (long_side >= LONG_SIDE_RANGE[0] * k).all() and (long_side <= LONG_SIDE_RANGE[1] * k).all()
        iou = box_iou(s.boxes, s.boxes)
        np.fill_diagonal(iou, 0)
        assert iou.max() <= MAX_IOU
        image = np.asarray(Image.open(io.BytesIO(s.jpeg)).convert("RGB"), dtype=np.float32)
        assert image.shape[:2] == (s.height, s.width)
        for j, (x0, y0, x1, y1) in enumerate(s.boxes.astype(int)):
            mask = s.instance_map == j + 1
            assert mask.sum() == s.areas[j]
            # tight: the mask lies inside the box and touches all four edges
            assert not mask[:y0].any() and not mask[y1:].any() and not mask[:, :x0].any() and not mask[:, x1:].any()
            inner = mask[y0:y1, x0:x1]
            assert inner[0].any() and inner[-1].any() and inner[:, 0].any() and inner[:, -1].any()
            # the drawn pixels carry the shape's colour, which contrasts with what is around it
            core = mask & np.roll(mask, 2, 0) & np.roll(mask, -2, 0) & np.roll(mask, 2, 1) & np.roll(mask, -2, 1)
            if core.sum() >= 4:
                assert np.median(np.linalg.norm(image[core] - s.colours[j], axis=1)) < 30
            ring = np.zeros_like(mask)  # background within 3 px of the box
            ring[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] = True
            ring &= s.instance_map == 0
            assert np.median(np.linalg.norm(image[ring] - s.colours[j], axis=1)) > 60
    assert len(sizes) >= 2  # both landscape and portrait images occur


def test_shapes_files_match_rendering(tmp_path):
    dirs = generate_shapes(tmp_path / "set", n_train=3, n_val=4, seed=2, workers=1)
    ds = resolve_dataset(dirs["val"])
    assert len(ds) == 4 and len(resolve_dataset(dirs["train"])) == 3
    assert ds.categories == {i + 1: name for i, name in enumerate(CLASS_NAMES)}
    assert list(CLASS_NAMES) == ["circle", "square", "triangle", "pentagon", "star", "cross"]
    for i in range(len(ds)):
        s = render_sample(2, "val", i)
        img, boxes, labels = ds[i]
        assert img.shape == (s.height, s.width, 3)
        np.testing.assert_array_equal(boxes, s.boxes)
        np.testing.assert_array_equal(labels, s.labels)
    ann = json.loads((dirs["val"] / "annotations.json").read_text())
    assert {a["category_id"] for a in ann["annotations"]} <= set(range(1, 7))
    # regenerating into a generated set is allowed; into foreign files is not
    generate_shapes(tmp_path / "set", n_train=2, n_val=1, seed=2, workers=1)
    assert len(list((dirs["train"] / "images").iterdir())) == 2
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(EdgeCSPError, match="not made by the shapes generator"):
        generate_split(tmp_path / "foreign", "val", 1)
    _save(tmp_path / "photos" / "images" / "holiday.jpg", 8, 8)  # user images are never cleared
    with pytest.raises(EdgeCSPError, match="not made by the shapes generator"):
        generate_split(tmp_path / "photos", "val", 1)
    # an interrupted run (no manifest yet) can be rerun
    (dirs["val"] / "shapes.json").unlink()
    generate_split(dirs["val"], "val", 2, seed=2, workers=1)
    assert len(resolve_dataset(dirs["val"])) == 2


def test_ensure_shapes_val_caches(tmp_path):
    d = ensure_shapes_val(tmp_path / "cache", n=3, seed=4, workers=1)
    stamp = (d / "annotations.json").stat().st_mtime_ns
    assert ensure_shapes_val(tmp_path / "cache", n=3, seed=4) == d
    assert (d / "annotations.json").stat().st_mtime_ns == stamp  # not regenerated
    assert (d / "images" / "000002.jpg").read_bytes() == render_sample(4, "val", 2).jpeg
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]
    # an incomplete set (no manifest) is rebuilt
    (d / "shapes.json").unlink()
    d2 = ensure_shapes_val(tmp_path / "cache", n=3, seed=4, workers=1)
    assert d2 == d and (d / "shapes.json").is_file() and len(CocoDataset(d / "annotations.json", d / "images")) == 3


def test_cli(tmp_path, capsys):
    assert data_main(["shapes", "--out", str(tmp_path / "s"), "--train", "2", "--val", "1", "--workers", "1"]) == 0
    assert (tmp_path / "s" / "train" / "annotations.json").is_file()
    assert data_main(["info", str(tmp_path / "s" / "val")]) == 0
    assert "1 images" in capsys.readouterr().out
    for argv, message in ((["info", str(tmp_path / "missing")], "expected an existing file or folder"),
                          (["shapes", "--out", str(tmp_path / "t"), "--seed", "-1"], "--seed: expected an integer")):
        with pytest.raises(SystemExit) as exit_:  # refused by the option types, one line
            data_main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    assert data_main(["info", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_every_command_falls_back_to_one_default_validation_set(tmp_path, monkeypatch):
    from edgecsp.data import shapes

    heard, asked = [], []

    def default(progress=None):  # the default set, with the progress it was given
        asked.append(progress)
        if progress is not None:
            progress("generating")
        return tmp_path / "default"

    monkeypatch.setattr(shapes, "default_val_dir", default)
    assert shapes.validation_data(str(tmp_path / "mine"), heard.append) == tmp_path / "mine"
    assert heard == [] and asked == []  # a given set is used as it is: nothing generated, nothing said
    assert shapes.validation_data(None, heard.append) == tmp_path / "default" and heard == ["generating"]
    assert shapes.validation_data() == tmp_path / "default" and asked[-1] is None
