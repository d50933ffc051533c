"""The shapes task generator: determinism, rules, files, the cached default validation set."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from data_files import _save
from PIL import Image

from edgecsp.data import (
    CocoDataset,
    ensure_shapes_val,
    generate_shapes,
    resolve_dataset,
)
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
