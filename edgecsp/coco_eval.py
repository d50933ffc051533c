"""COCO evaluation shared by every model form: a PyTorch checkpoint, or any backend's runner.

A *predict function* maps a preprocessed NCHW float32 batch to the decoded output contract
``(N, K, 5 + C)``; everything before (letterbox) and after (NMS, back to image coordinates,
pycocotools) is the same code for all of them, so their numbers compare.
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable  # typing's: collections.abc.Callable[...] is not subscriptable at run time on 3.8

import numpy as np
from tqdm import tqdm

from edgecsp.data.coco import CocoDataset
from edgecsp.data.preprocess import letterbox, to_tensor_batch
from edgecsp.errors import EdgeCSPError
from edgecsp.postprocess import postprocess

PredictFn = Callable[[np.ndarray], np.ndarray]


def torch_predict_fn(model) -> PredictFn:
    import torch

    model.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model.predict(torch.from_numpy(batch)).numpy()

    return predict


def predict_dataset(predict: PredictFn, dataset: CocoDataset, input_size: int, batch_size: int = 8,
                    progress: bool = True, max_images: int | None = None, resize: str = "letterbox") -> list[dict]:
    """Run over the data set; returns COCO result dicts in original image coordinates.

    ``resize`` is the model's preprocessing ("letterbox" or "stretch", edgecsp.data.preprocess)."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    results = []
    bar = tqdm(total=n, desc="evaluating", unit="img", disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        idx = list(range(start, min(n, start + batch_size)))
        boxed, infos = [], []
        for i in idx:
            image, _, _ = dataset[i]
            lb, info = letterbox(image, input_size, mode=resize)
            boxed.append(lb)
            infos.append(info)
        out = predict(to_tensor_batch(boxed))
        for i, rows, info in zip(idx, out, infos):
            det = postprocess(rows, info, score_threshold=0.001, iou_threshold=0.6, max_detections=100)
            image_id = dataset.images[i].id
            cat_ids = dataset.label_to_category_id(det.labels)
            for box, score, cat in zip(det.boxes, det.scores, np.atleast_1d(cat_ids)):
                x1, y1, x2, y2 = (float(v) for v in box)
                results.append({"image_id": image_id, "category_id": int(cat),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
        bar.update(len(idx))
    bar.close()
    return results


def coco_metrics(dataset: CocoDataset, results: list[dict], image_ids: list[int] | None = None) -> dict:
    """AP, AP50, AP75 (fractions) and per-class AP50 with pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(dataset.annotations_path))
    if not gt.getAnnIds():
        raise EdgeCSPError(f"{dataset.annotations_path} has no annotations to evaluate against")
    names = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    empty = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "per_class": {n: 0.0 for n in names.values()}, "detections": 0}
    if not results:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T iou, R recall, K class, A area, M maxdets)
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, -1]
        p = p[p > -1]
        per_class[names[cat_id]] = round(float(p.mean()), 5) if p.size else 0.0
    stats = [max(0.0, float(s)) for s in ev.stats]
    return {"AP": round(stats[0], 5), "AP50": round(stats[1], 5), "AP75": round(stats[2], 5),
            "APs": round(stats[3], 5), "APm": round(stats[4], 5), "APl": round(stats[5], 5),
            "per_class": per_class, "detections": len(results), "images": len(ev.params.imgIds)}


def check_evaluable(dataset: CocoDataset, max_images: int | None = None) -> None:
    """Refuse a set with no valid box among the images to evaluate: every AP would be 0.0 and
    mean nothing (each box was zero-size, negative or outside its image and dropped)."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    if not any(len(dataset.targets(i)[0]) for i in range(n)):
        raise EdgeCSPError(f"{dataset.annotations_path} has no valid box left in the {n} images to evaluate (boxes "
                           "of zero size, negative or outside their image are dropped); nothing can be evaluated: "
                           "fix the annotations")


def check_classes(names: list[str], dataset: CocoDataset, what: str) -> None:
    """The model's classes are the data's by name and order, not only by count: a set whose
    classes were renamed or reordered would be scored against the wrong labels."""
    if len(names) != dataset.num_classes:
        raise EdgeCSPError(f"{what} has {len(names)} classes, {dataset.annotations_path} has {dataset.num_classes}; "
                           "pass the model's own validation data")
    if names == [f"class{i}" for i in range(len(names))]:  # a zoo detector with random weights: no names
        return
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(names, dataset.class_names))
              if str(a).strip().lower() != str(b).strip().lower()]
    if differ:
        shown_ = "; ".join(f"#{i} {a[:30]!r} vs {b[:30]!r}" for i, a, b in differ[:3])
        raise EdgeCSPError(f"{what}'s class names differ from {dataset.annotations_path}'s ({shown_}"
                           f"{' ...' if len(differ) > 3 else ''}); pass the model's own validation data (same "
                           "classes in the same order)")


def evaluate(predict: PredictFn, dataset: CocoDataset, input_size: int, batch_size: int = 8,
             progress: bool = True, max_images: int | None = None, resize: str = "letterbox") -> dict:
    check_evaluable(dataset, max_images)
    results = predict_dataset(predict, dataset, input_size, batch_size, progress, max_images, resize)
    ids = None if max_images is None else [dataset.images[i].id for i in range(min(len(dataset), max_images))]
    return coco_metrics(dataset, results, ids)
