"""Small image folders and COCO files for the data tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from edgecsp.data import (
    write_coco,
)

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
