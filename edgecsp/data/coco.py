"""COCO-format detection datasets: reading (with validation), locating and writing.

Every dataset reader in edgecsp.data gives the same item interface (`DetectionDataset`):
`ds[i] -> (rgb uint8 HxWx3, boxes float32 (N, 4) xyxy pixels, labels int64 (N,))`, where labels
are contiguous 0-based class indices (index k is `ds.class_names[k]`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgecsp.data.preprocess import MAX_IMAGE_PIXELS, image_size, is_file, load_image_rgb
from edgecsp.errors import EdgeCSPError

PathLike = Union[str, os.PathLike]  # not X | Y: evaluated at run time, 3.8
# Boxes crossing the image border by at most this many pixels are clipped without a warning:
# annotation tools commonly round a border box a fraction of a pixel past the edge.
CLIP_TOLERANCE_PX = 1.0
# Boxes thinner than this after clipping count as zero-size and are dropped: stored as float32
# (0.0005 px steps at 6144) or written with 4 decimals they would collapse to zero area.
MIN_BOX_PX = 0.01


class DataWarning(UserWarning):
    """A dataset problem that was repaired (clipped or dropped boxes); training can go on."""


def data_warning(message: str, source: PathLike) -> None:
    """A DataWarning shown as one line, ``<data file>:0: DataWarning: <message>``: attributed to
    the data file (line 0) rather than to edgecsp's code, so Python prints no source line under it."""
    from edgecsp.errors import shown

    warnings.warn_explicit(shown(message), DataWarning, filename=shown(source), lineno=0, module="edgecsp.data")


@dataclass(frozen=True)
class ImageRecord:
    id: int
    file_name: str  # relative to the dataset's images directory
    width: int
    height: int


class DetectionDataset:
    """Images plus per-image boxes/labels, already validated. Subclasses fill the fields."""

    class_names: list[str]
    images: list[ImageRecord]
    images_dir: Path
    _boxes: list[np.ndarray]
    _labels: list[np.ndarray]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, i: int) -> Path:
        return self.images_dir / self.images[i].file_name

    def targets(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes xyxy float32 (N, 4), labels int64 (N,)) of image i, without loading pixels."""
        return self._boxes[i].copy(), self._labels[i].copy()

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        rec = self.images[i]
        image = load_image_rgb(self.image_path(i))
        if image.shape[:2] != (rec.height, rec.width):
            raise EdgeCSPError(
                f"image {rec.file_name} is {image.shape[1]}x{image.shape[0]} (after EXIF rotation) but its "
                f"annotations say {rec.width}x{rec.height}; fix the width/height in the annotations"
            )
        boxes, labels = self.targets(i)
        return image, boxes, labels


class CocoDataset(DetectionDataset):
    """A COCO detection annotation file plus its images directory, validated on load.

    Problems that make results meaningless raise EdgeCSPError (missing images, unknown category
    or image ids, no images); boxes partly outside their image are clipped and boxes fully outside
    or of zero size are dropped, each with one DataWarning summarising the count. Crowd
    annotations (iscrowd=1) are not training targets; pycocotools still honours them in evaluation.
    """

    def __init__(self, annotations_json: PathLike, images_dir: PathLike):
        self.annotations_path = Path(annotations_json)
        self.images_dir = Path(images_dir)
        data = _read_json(self.annotations_path)
        self.categories = _parse_categories(data, self.annotations_path)
        self.category_ids = list(self.categories)
        self.class_names = list(self.categories.values())
        self.category_to_label = {cid: k for k, cid in enumerate(self.category_ids)}
        self.images = _parse_images(data, self.annotations_path, self.images_dir)
        self._boxes, self._labels = self._parse_annotations(data)

    def label_to_category_id(self, labels: int | np.ndarray) -> int | np.ndarray:
        """Contiguous 0-based class index (or array of them) -> COCO category id."""
        ids = np.asarray(self.category_ids, dtype=np.int64)
        out = ids[np.asarray(labels, dtype=np.int64)]
        return int(out) if np.ndim(out) == 0 else out

    def _parse_annotations(self, data: Mapping[str, Any]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        path = self.annotations_path
        index_of = {rec.id: k for k, rec in enumerate(self.images)}
        boxes: list[list[list[float]]] = [[] for _ in self.images]
        labels: list[list[int]] = [[] for _ in self.images]
        seen: set[int] = set()
        clipped = dropped = 0
        for n, ann in enumerate(_list_field(data, "annotations", path, required=False)):
            if not isinstance(ann, dict):
                raise EdgeCSPError(f"{path.name}: annotation #{n} is {_short(ann)}, not an object; fix the annotation file")
            aid = ann.get("id", f"#{n}")
            if "id" in ann:
                if _int_id(aid) is None:
                    raise EdgeCSPError(f"{path.name}: annotation id {_short(aid)} is not an integer")
                if aid in seen:  # pycocotools indexes boxes by id: a duplicate would hide another box
                    raise EdgeCSPError(f"{path.name}: annotation id {aid} appears twice; annotation ids must be unique")
                seen.add(aid)
            cid = ann.get("category_id")
            if _int_id(cid) not in self.category_to_label:
                raise EdgeCSPError(
                    f"annotation {_short(aid)} in {path.name} uses category id {_short(cid)}, which is not in "
                    f"'categories' (known ids: {_short(self.category_ids)}); fix the annotation file"
                )
            k = index_of.get(_int_id(ann.get("image_id")))
            if k is None:
                raise EdgeCSPError(
                    f"annotation {_short(aid)} in {path.name} refers to image id {_short(ann.get('image_id'))}, "
                    f"which is not in 'images'; fix the annotation file"
                )
            if ann.get("iscrowd", 0) not in (0, 1):  # a string "0" would be truthy: a crowd region
                raise EdgeCSPError(f"annotation {_short(aid)} in {path.name} has iscrowd "
                                   f"{_short(ann['iscrowd'])}; use 0 or 1")
            if ann.get("iscrowd", 0):
                continue
            box, status = _clip_box(ann.get("bbox"), self.images[k], aid, path)
            if status == "dropped":
                dropped += 1
                continue
            clipped += status == "clipped"
            boxes[k].append(box)
            labels[k].append(self.category_to_label[cid])
        if clipped:
            data_warning(f"clipped {clipped} boxes that extend outside their image", path)
        if dropped:
            data_warning(f"dropped {dropped} boxes that are fully outside their image or have zero size", path)
        return (
            [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
            [np.asarray(lab, dtype=np.int64) for lab in labels],
        )


def _short(value: Any) -> str:
    """A value from the file for an error message: repr (so one line), cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int_id(value: Any) -> int | None:
    """``value`` if it is an integer id (not a bool, float or string), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _read_json(path: Path) -> Mapping[str, Any]:
    if not is_file(path):
        raise EdgeCSPError(f"annotation file not found: {path}; check the path")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, RecursionError) as err:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        reason = "nested too deeply" if isinstance(err, RecursionError) else " ".join(str(err).split())
        raise EdgeCSPError(f"{path} is not valid JSON ({reason}); is it a COCO annotation file?") from None
    except OSError as err:
        raise EdgeCSPError(f"cannot read annotation file {path} ({err.strerror or err})") from None
    if not isinstance(data, dict):
        raise EdgeCSPError(f"{path} is not a COCO annotation file (top level is not an object)")
    return data


def _list_field(data: Mapping[str, Any], key: str, path: Path, required: bool = True) -> list:
    value = data.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise EdgeCSPError(f"{path.name} has no '{key}' list; is it a COCO detection annotation file?")
    return value


def _parse_categories(data: Mapping[str, Any], path: Path) -> dict[int, str]:
    cats: dict[int, str] = {}
    for c in _list_field(data, "categories", path):
        if not (isinstance(c, dict) and _int_id(c.get("id")) is not None and isinstance(c.get("name"), str)):
            raise EdgeCSPError(f"{path.name}: every category needs an integer 'id' and a 'name', got {_short(c)}")
        cid, name = c["id"], c["name"]
        if cid in cats:
            raise EdgeCSPError(f"{path.name}: category id {cid} appears twice; category ids must be unique")
        cats[cid] = name
    if not cats:
        raise EdgeCSPError(f"{path.name} defines no categories; add a 'categories' list")
    return dict(sorted(cats.items()))


def _file_name(value: Any, path: Path) -> str:
    """An image's file_name: a non-empty path relative to, and staying inside, the images directory."""
    if not isinstance(value, str) or not value.strip():
        raise EdgeCSPError(f"{path.name}: image file_name {_short(value)} is not a file name")
    rel = Path(value)
    if rel.is_absolute() or ".." in rel.parts:  # would read files outside the dataset
        raise EdgeCSPError(f"{path.name}: image file_name {_short(value)} must be relative to the images "
                           "directory, without '..'")
    return value


def _image_dim(entry: dict, key: str, fname: str, path: Path) -> int | None:
    """An image's width or height: a positive integer (640 or 640.0), None when absent (read from the file)."""
    value = entry.get(key)
    if value is None or (value == 0 and not isinstance(value, bool)):  # optional in some exports
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_IMAGE_PIXELS:
        raise EdgeCSPError(f"{path.name}: image {_short(fname)} has {key} {_short(entry[key])}; "
                           "it must be a positive integer (pixels)")
    return value


def _parse_images(data: Mapping[str, Any], path: Path, images_dir: Path) -> list[ImageRecord]:
    entries = _list_field(data, "images", path)
    if not entries:
        raise EdgeCSPError(f"{path.name} lists no images; the dataset is empty")
    if not images_dir.is_dir():
        raise EdgeCSPError(f"images directory not found: {images_dir}; check the images path")
    seen: set[int] = set()
    missing: list[str] = []
    raw = []
    for e in entries:
        if not (isinstance(e, dict) and _int_id(e.get("id")) is not None and "file_name" in e):
            raise EdgeCSPError(f"{path.name}: every image needs an integer 'id' and a 'file_name', got {_short(e)}")
        iid, fname = e["id"], _file_name(e["file_name"], path)
        if iid in seen:
            raise EdgeCSPError(f"{path.name}: image id {iid} appears twice; image ids must be unique")
        seen.add(iid)
        w, h = _image_dim(e, "width", fname, path), _image_dim(e, "height", fname, path)
        if not is_file(images_dir / fname):
            missing.append(fname)
        raw.append((iid, fname, w, h))
    if missing:
        raise EdgeCSPError(
            f"{len(missing)} of {len(entries)} images listed in {path.name} are missing from {images_dir} "
            f"(first: {missing[0] if missing[0].isprintable() else _short(missing[0])}); check the images directory"
        )
    records = []
    for iid, fname, w, h in raw:
        if not w or not h:  # optional in some exports: read the header
            w, h = image_size(images_dir / fname)
        records.append(ImageRecord(iid, fname, w, h))
    return records


def _clip_box(bbox: Any, rec: ImageRecord, aid: Any, path: Path) -> tuple[list[float], str]:
    """COCO [x, y, w, h] -> clipped xyxy and 'ok' | 'clipped' | 'dropped'."""
    # only a list of 4 numbers: a string "1234" or a dict would iterate into 4 values too
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
        raise EdgeCSPError(
            f"annotation {_short(aid)} in {path.name} has a malformed bbox {_short(bbox)}; expected [x, y, w, h]"
        )
    try:
        x, y, w, h = (float(v) for v in bbox)
    except OverflowError:  # an integer beyond float range: as unusable as inf
        return [], "dropped"
    if not np.isfinite([x, y, w, h]).all() or w <= 0 or h <= 0:
        return [], "dropped"
    x0, y0, x1, y1 = x, y, x + w, y + h
    cx0, cy0 = min(max(x0, 0.0), rec.width), min(max(y0, 0.0), rec.height)
    cx1, cy1 = min(max(x1, 0.0), rec.width), min(max(y1, 0.0), rec.height)
    if cx1 - cx0 < MIN_BOX_PX or cy1 - cy0 < MIN_BOX_PX:
        return [], "dropped"
    excess = max(-x0, -y0, x1 - rec.width, y1 - rec.height)
    return [cx0, cy0, cx1, cy1], "clipped" if excess > CLIP_TOLERANCE_PX else "ok"


def _resolve_paths(
    data_dir: PathLike | None, annotations: PathLike | None, images: PathLike | None
) -> tuple[Path, Path]:
    if annotations is not None:
        ann = Path(annotations)
        if images is not None:
            return ann, Path(images)
        for guess in ([Path(data_dir) / "images"] if data_dir else []) + [ann.parent / "images"]:
            if guess.is_dir():
                return ann, guess
        raise EdgeCSPError(f"no images directory found next to {ann}; pass the images directory explicitly")
    if data_dir is None:
        raise EdgeCSPError("no dataset given; pass a dataset directory, or an annotation file and an images directory")
    root = Path(data_dir)
    if not root.is_dir():
        raise EdgeCSPError(f"dataset directory not found: {root}; check the path")
    if (root / "annotations.json").is_file():
        ann, guess = root / "annotations.json", root / "images"
    else:
        found = sorted(root.glob("instances_*.json")) + sorted(root.glob("annotations/instances_*.json"))
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(root)) for p in found)
            raise EdgeCSPError(f"{root} holds several annotation files ({names}); pass the one to use explicitly")
        if not found:
            if (root / "labels").is_dir() and (root / "images").is_dir():
                raise EdgeCSPError(
                    f"{root} looks like a YOLO txt dataset; convert it first with "
                    f"'python -m edgecsp.data yolo2coco {root}'"
                )
            raise EdgeCSPError(f"{root} has no annotations.json or instances_*.json; is it a COCO dataset directory?")
        ann = found[0]
        split = ann.stem[len("instances_") :]  # COCO layout: annotations/instances_val2017.json + val2017/
        guess = root / "images" if (root / "images").is_dir() else root / split
    return ann, Path(images) if images is not None else guess


def resolve_dataset(
    data_dir: PathLike | None = None,
    annotations: PathLike | None = None,
    images: PathLike | None = None,
) -> CocoDataset:
    """Open a COCO dataset from a directory or explicit paths.

    A directory holds `annotations.json` + `images/`, or `instances_*.json` (also under
    `annotations/`) + `images/` or the COCO split folder (e.g. `val2017/`). Explicit
    `annotations`/`images` override what the directory would give.
    """
    ann, img_dir = _resolve_paths(data_dir, annotations, images)
    return CocoDataset(ann, img_dir)


def write_coco(
    path: PathLike,
    class_names: Sequence[str],
    images: Sequence[ImageRecord | Mapping[str, Any]],
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    areas: Sequence[Sequence[float]] | None = None,
    category_ids: Sequence[int] | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict:
    """Write a COCO detection file and return its dict.

    `images[i]` is an ImageRecord or a mapping with file_name, width, height (id defaults to
    i + 1); `boxes[i]` are xyxy pixels and `labels[i]` 0-based class indices for image i.
    Category ids are 1..K unless `category_ids` gives them; `areas` defaults to box areas.
    """
    if not (len(images) == len(boxes) == len(labels)):
        raise EdgeCSPError("write_coco needs one boxes array and one labels array per image")
    cat_ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
    if len(cat_ids) != len(class_names):
        raise EdgeCSPError("write_coco needs one category id per class name")
    out_images: list[dict] = []
    out_anns: list[dict] = []
    for i, img in enumerate(images):
        rec = (
            img
            if isinstance(img, ImageRecord)
            else ImageRecord(int(img.get("id", i + 1)), str(img["file_name"]), int(img["width"]), int(img["height"]))
        )
        out_images.append({"id": rec.id, "file_name": rec.file_name, "width": rec.width, "height": rec.height})
        b = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)
        lab = np.asarray(labels[i], dtype=np.int64).reshape(-1)
        if len(b) != len(lab):
            raise EdgeCSPError(f"image {rec.file_name}: {len(b)} boxes but {len(lab)} labels")
        for j, (box, k) in enumerate(zip(b, lab)):
            if not 0 <= k < len(cat_ids):
                raise EdgeCSPError(f"image {rec.file_name}: label {k} is not a class index (0..{len(cat_ids) - 1})")
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            area = float(areas[i][j]) if areas is not None else w * h
            out_anns.append(
                {
                    "id": len(out_anns) + 1,
                    "image_id": rec.id,
                    "category_id": cat_ids[k],
                    "bbox": [round(float(box[0]), 4), round(float(box[1]), 4), round(w, 4), round(h, 4)],
                    "area": round(area, 4),
                    "iscrowd": 0,
                }
            )
    data = {
        "info": dict(info or {}),
        "images": out_images,
        "annotations": out_anns,
        "categories": [{"id": cid, "name": name} for cid, name in zip(cat_ids, class_names)],
    }
    from edgecsp.fsutil import atomic_write

    atomic_write(Path(path), json.dumps(data, separators=(",", ":")))  # never a half-written annotation file
    return data
