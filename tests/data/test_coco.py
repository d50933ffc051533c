"""The COCO reader and writer: round trip, layouts, bad and odd input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from data_files import _coco_dir, _edit_json, _save

from edgecsp.data import (
    CocoDataset,
    DataWarning,
    resolve_dataset,
    write_coco,
)
from edgecsp.errors import EdgeCSPError


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
