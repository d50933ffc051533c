"""YOLO / darknet txt datasets: `images/` plus `labels/` with one `cls cx cy w h` line per box.

Coordinates are normalised to the image size (after EXIF rotation); a missing label file means
an image with no objects. Class names come from `classes.txt`, `obj.names` or another `*.names`
file in the root, or are passed in. Items follow the same interface as CocoDataset.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np

from edgecsp.data.coco import DetectionDataset, ImageRecord, _clip_box, _short, data_warning, write_coco
from edgecsp.data.preprocess import _shown, image_size
from edgecsp.errors import EdgeCSPError

PathLike = Union[str, os.PathLike]  # not X | Y: evaluated at run time, 3.8
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgeCSPError(f"{_shown(path)} is not a UTF-8 text file; is it a YOLO label or class names file?") from None
    except OSError as err:
        raise EdgeCSPError(f"cannot read {_shown(path)} ({err.strerror or err})") from None


def _read_names(root: Path) -> list[str]:
    candidates = [root / "classes.txt", root / "obj.names"] + sorted(root.glob("*.names"))
    for path in candidates:
        if path.is_file():
            names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
            if names:
                return names
    raise EdgeCSPError(f"no class names found in {root}; add a classes.txt (one name per line) or pass the names")


class YoloDataset(DetectionDataset):
    """A YOLO txt dataset. `root` holds `images/` and `labels/` unless the dirs are given."""

    def __init__(
        self,
        root: PathLike | None = None,
        names: Sequence[str] | None = None,
        images_dir: PathLike | None = None,
        labels_dir: PathLike | None = None,
    ):
        if root is not None:
            base = Path(root)
        elif images_dir is not None and labels_dir is not None:
            base = Path(images_dir).parent
        else:
            raise EdgeCSPError("give a YOLO dataset root, or both its images and labels directories")
        self.images_dir = Path(images_dir) if images_dir is not None else base / "images"
        self.labels_dir = Path(labels_dir) if labels_dir is not None else base / "labels"
        for d, what in ((self.images_dir, "images"), (self.labels_dir, "labels")):
            if not d.is_dir():
                raise EdgeCSPError(f"{what} directory not found: {d}; a YOLO dataset needs images/ and labels/")
        self.class_names = list(names) if names is not None else _read_names(base)
        if not self.class_names:  # every label would be out of range, and COCO needs a category
            raise EdgeCSPError("no class names given; pass at least one class name")
        files = sorted(p for p in self.images_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise EdgeCSPError(f"no images found in {self.images_dir}; the dataset is empty")
        self.images, self._boxes, self._labels = [], [], []
        counts = {"ok": 0, "clipped": 0, "dropped": 0}
        for i, path in enumerate(files):
            rel = path.relative_to(self.images_dir)
            w, h = image_size(path)
            rec = ImageRecord(i + 1, rel.as_posix(), w, h)
            boxes, labels = self._read_labels(self.labels_dir / rel.with_suffix(".txt"), rec, counts)
            self.images.append(rec)
            self._boxes.append(boxes)
            self._labels.append(labels)
        # A label file no image uses is usually a naming mismatch (a.jpg vs a.JPG): its boxes are lost.
        used = {self.labels_dir / Path(rec.file_name).with_suffix(".txt") for rec in self.images}
        orphans = sorted(p for p in self.labels_dir.rglob("*.txt") if p not in used and p.is_file())
        if orphans:
            data_warning(f"{len(orphans)} label files have no image (first: "
                         f"{_short(orphans[0].relative_to(self.labels_dir).as_posix())}); their boxes are ignored",
                         self.labels_dir)
        if counts["clipped"]:
            data_warning(f"clipped {counts['clipped']} YOLO boxes that extend outside their image", self.labels_dir)
        if counts["dropped"]:
            data_warning(f"dropped {counts['dropped']} YOLO boxes that are fully outside their image or have zero "
                         "size", self.labels_dir)

    def _read_labels(self, path: Path, rec: ImageRecord, counts: dict) -> tuple[np.ndarray, np.ndarray]:
        boxes, labels = [], []
        if path.is_file():
            for n, line in enumerate(_read_text(path).splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 5:
                    raise EdgeCSPError(f"{_shown(path)}:{n}: expected 'class cx cy w h', got {len(parts)} values")
                try:
                    cls = int(parts[0])
                    cx, cy, bw, bh = (float(v) for v in parts[1:])
                except ValueError:
                    raise EdgeCSPError(
                        f"{_shown(path)}:{n}: expected 'class cx cy w h' numbers, got {_short(line.strip())}"
                    ) from None
                if not 0 <= cls < len(self.class_names):
                    raise EdgeCSPError(
                        f"{_shown(path)}:{n}: class {cls} is outside the {len(self.class_names)} class names; "
                        f"fix the label or the class names file"
                    )
                xywh = [(cx - bw / 2) * rec.width, (cy - bh / 2) * rec.height, bw * rec.width, bh * rec.height]
                box, status = _clip_box(xywh, rec, f"{path.name}:{n}", path)
                counts[status] += 1
                if status != "dropped":
                    boxes.append(box)
                    labels.append(cls)
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)

    def to_coco(self, json_path: PathLike) -> Path:
        """Write this dataset as a COCO file (category ids 1..K, file names relative to images/)."""
        boxes, labels = zip(*(self.targets(i) for i in range(len(self))))
        write_coco(json_path, self.class_names, self.images, boxes, labels)
        return Path(json_path)


def yolo_to_coco(root: PathLike, out_json: PathLike | None = None, names: Sequence[str] | None = None) -> Path:
    """Convert a YOLO dataset to COCO JSON (default `root/annotations.json`, beside `images/`)."""
    ds = YoloDataset(root, names=names)
    return ds.to_coco(out_json if out_json is not None else Path(root) / "annotations.json")
