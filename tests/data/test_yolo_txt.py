"""The YOLO txt reader: same data as COCO, bad labels refused."""

from __future__ import annotations

import numpy as np
import pytest
from data_files import _save

from edgecsp.data import (
    CocoDataset,
    YoloDataset,
    resolve_dataset,
    yolo_to_coco,
)
from edgecsp.errors import EdgeCSPError

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
