"""The verification set a bundle carries: a device checks its engine without data or pycocotools.

The host writes ``verify.npz`` (numpy arrays only, read with ``allow_pickle=False``):
  images            uint8 (N, S, S, 3): the first N validation images, letterboxed to the input size
  letterbox         float64 (N, 5): scale, pad_x, pad_y, original width, original height
  image_ids, category_ids   COCO ids of the images and of each class index
  gt_image, gt_xywh, gt_category, gt_iscrowd, gt_area        the images' ground truth
  <ref>_image, <ref>_xywh, <ref>_score, <ref>_category       the host's detections per reference
                    model (fp32: the FP32 ONNX; int8_qdq / fp16: the model TensorRT builds, both
                    run with ONNX Runtime), in original image pixels
On the device, ``VerifySet.evaluate`` runs an engine on the stored inputs through the same
postprocessing and scores it, and each reference's AP comes from its stored detections, with
edgecsp.cocoap (numpy; it matches pycocotools).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecsp.cocoap import Boxes, evaluate_boxes
from edgecsp.data.preprocess import LetterboxInfo, to_tensor_batch
from edgecsp.errors import EdgeCSPError
from edgecsp.postprocess import postprocess

FILE = "verify.npz"
DEFAULT_IMAGES = 48  # ~120 KB each at 320x320 (photo backgrounds compress little): ~6 MB
# The evaluation's postprocessing (edgecsp.coco_eval.predict_dataset uses the same).
SCORE_THRESHOLD, IOU_THRESHOLD, MAX_DETECTIONS = 0.001, 0.6, 100
MAX_VERIFY_BYTES = 512 * 1024 ** 2  # refuse a verify.npz that would unpack past this

PredictFn = Callable[[np.ndarray], np.ndarray]
_GT = ("gt_image", "gt_xywh", "gt_category", "gt_iscrowd", "gt_area")
_DET = ("image", "xywh", "score", "category")


def detections(predict: PredictFn, images: np.ndarray, letterbox: np.ndarray, image_ids: np.ndarray,
               category_ids: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Run ``predict`` on letterboxed uint8 images; detections in original pixels (xywh)."""
    out: dict[str, list[np.ndarray]] = {k: [] for k in _DET}
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        rows = predict(to_tensor_batch(list(chunk)))  # the same float conversion as every other path
        for j, pred in enumerate(rows):
            i = start + j
            scale, px, py, w, h = (float(v) for v in letterbox[i])
            info = LetterboxInfo(scale=scale, pad_x=px, pad_y=py, orig_w=int(w), orig_h=int(h))
            det = postprocess(pred, info, score_threshold=SCORE_THRESHOLD, iou_threshold=IOU_THRESHOLD,
                              max_detections=MAX_DETECTIONS)
            xyxy = np.asarray(det.boxes, dtype=np.float32).reshape(-1, 4)
            out["image"].append(np.full(len(xyxy), image_ids[i], dtype=np.int64))
            out["xywh"].append(np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1))
            out["score"].append(np.asarray(det.scores, dtype=np.float32).reshape(-1))
            out["category"].append(category_ids[np.asarray(det.labels, dtype=np.int64).reshape(-1)])
    empty = {"image": np.zeros(0, np.int64), "xywh": np.zeros((0, 4), np.float32),
             "score": np.zeros(0, np.float32), "category": np.zeros(0, np.int64)}
    return {k: np.concatenate(v) if v else empty[k] for k, v in out.items()}


def build(dataset: Any, input_size: int, max_images: int | None,
          references: dict[str, PredictFn]) -> dict[str, np.ndarray]:
    """The arrays of a verification set: the first ``max_images`` of a COCO-format ``dataset``,
    letterboxed to ``input_size``, its ground truth, and each reference model's detections."""
    from edgecsp.data.preprocess import letterbox

    n = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    if n == 0:
        raise EdgeCSPError("the validation set has no images to put in the bundle's verification set")
    boxed, infos = [], []
    for i in range(n):
        lb, info = letterbox(dataset[i][0], input_size)
        boxed.append(lb)
        infos.append([info.scale, info.pad_x, info.pad_y, info.orig_w, info.orig_h])
    arrays: dict[str, np.ndarray] = {
        "images": np.stack(boxed).astype(np.uint8),
        "letterbox": np.asarray(infos, dtype=np.float64),
        "image_ids": np.asarray([dataset.images[i].id for i in range(n)], dtype=np.int64),
        "category_ids": np.asarray(dataset.category_ids, dtype=np.int64),
    }
    arrays.update(_ground_truth(Path(dataset.annotations_path), set(arrays["image_ids"].tolist())))
    for name, predict in references.items():
        det = detections(predict, arrays["images"], arrays["letterbox"], arrays["image_ids"], arrays["category_ids"])
        arrays.update({f"{name}_{k}": v for k, v in det.items()})
    return arrays


def _ground_truth(annotations: Path, image_ids: set) -> dict[str, np.ndarray]:
    """The annotation file's boxes of these images, as pycocotools reads them (crowd regions and
    their areas included: COCOeval ignores crowds instead of counting them as misses)."""
    data = json.loads(annotations.read_text())
    anns = [a for a in data.get("annotations", []) if a.get("image_id") in image_ids and len(a.get("bbox", [])) == 4]
    return {
        "gt_image": np.asarray([a["image_id"] for a in anns], dtype=np.int64),
        "gt_xywh": np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
        "gt_category": np.asarray([a["category_id"] for a in anns], dtype=np.int64),
        "gt_iscrowd": np.asarray([int(a.get("iscrowd", 0)) for a in anns], dtype=np.uint8),
        "gt_area": np.asarray([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns], dtype=np.float64),
    }


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Compressed .npz of plain arrays (no object arrays, so it loads without pickle)."""
    for k, v in arrays.items():
        if v.dtype == object:
            raise ValueError(f"verification array {k} holds Python objects")
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    Path(path).write_bytes(buf.getvalue())


@dataclass
class VerifySet:
    arrays: dict[str, np.ndarray]
    path: Path

    @property
    def images(self) -> int:
        return len(self.arrays["images"])

    @property
    def references(self) -> list[str]:
        return sorted(k[:-len("_score")] for k in self.arrays if k.endswith("_score"))

    def ground_truth(self) -> Boxes:
        a = self.arrays
        return Boxes(a["gt_image"], a["gt_xywh"], a["gt_category"], iscrowd=a["gt_iscrowd"], area=a["gt_area"])

    def score(self, det: dict[str, np.ndarray]) -> dict[str, float]:
        """AP, AP50, AP75 of detections against the stored ground truth (edgecsp.cocoap)."""
        dt = Boxes(det["image"], det["xywh"], det["category"], score=det["score"])
        metrics = evaluate_boxes(self.ground_truth(), dt, self.arrays["image_ids"], self.arrays["category_ids"])
        return {k: round(max(0.0, v), 5) for k, v in metrics.items()}

    def reference(self, name: str) -> dict[str, np.ndarray]:
        if name not in self.references:
            raise EdgeCSPError(f"{self.path} has no reference detections {name!r} (it has: {', '.join(self.references)})")
        return {k: self.arrays[f"{name}_{k}"] for k in _DET}

    def first(self, n: int) -> VerifySet:
        """The same set cut to its first ``n`` images (ground truth and references with them)."""
        a = self.arrays
        if n >= self.images:
            return self
        keep_ids = a["image_ids"][:n]
        out = {k: a[k][:n] for k in ("images", "letterbox", "image_ids")}
        out["category_ids"] = a["category_ids"]
        rows = np.isin(a["gt_image"], keep_ids)
        out.update({k: a[k][rows] for k in _GT})
        for ref in self.references:  # exact keys: one reference's name may begin another's
            rows = np.isin(a[f"{ref}_image"], keep_ids)
            out.update({f"{ref}_{k}": a[f"{ref}_{k}"][rows] for k in _DET})
        return VerifySet(out, self.path)

    def run(self, predict: PredictFn, batch_size: int = 8) -> dict[str, np.ndarray]:
        a = self.arrays
        return detections(predict, a["images"], a["letterbox"], a["image_ids"], a["category_ids"], batch_size)


def load(path: Path) -> VerifySet:
    """Read a verify.npz: plain arrays only (no pickle), the expected ones, sane shapes."""
    path = Path(path)
    try:
        # Read member by member (not np.load): sizes are checked before inflating, and read_array
        # with allow_pickle=False refuses object arrays, so nothing in the file can run code.
        arrays = {}
        with zipfile.ZipFile(path) as z:
            if sum(i.file_size for i in z.infolist()) > MAX_VERIFY_BYTES:
                raise EdgeCSPError(f"{path} unpacks to over {MAX_VERIFY_BYTES // 1024 ** 2} MiB; refused")
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"unexpected member {info.filename[:60]!r}")
                with z.open(info) as f:
                    arrays[info.filename[:-len(".npy")]] = np.lib.format.read_array(f, allow_pickle=False)
    except EdgeCSPError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise EdgeCSPError(f"{path} is not a readable verification set ({type(err).__name__}: {str(err)[:120]}); "
                           "rebuild the bundle") from None
    needed = ("images", "letterbox", "image_ids", "category_ids", *_GT)
    missing = [k for k in needed if k not in arrays]
    n = len(arrays.get("images", ()))
    ok = (not missing and arrays["images"].dtype == np.uint8 and arrays["images"].ndim == 4
          and arrays["images"].shape[-1] == 3 and arrays["letterbox"].shape == (n, 5) and len(arrays["image_ids"]) == n)
    if not ok:
        raise EdgeCSPError(f"{path} is not a verification set this edgecsp reads (missing or malformed: "
                           f"{', '.join(missing) or 'array shapes'}); rebuild the bundle")
    return VerifySet(arrays, path)
