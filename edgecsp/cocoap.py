"""COCO box AP in numpy: AP@[.5:.95], AP50 and AP75 as pycocotools computes them, for the device.

A Jetson checks its engine against the bundle's stored ground truth and reference detections
(edgecsp.verifyset) without pycocotools, which builds from source there. This follows COCOeval's
``bbox`` evaluation for the "all" area range and 100 detections per image and category: the same
score ordering (stable sorts), greedy matching at each IoU threshold (a crowd box may match many
detections and matches by intersection over the detection's area), 101-point interpolated
precision, and the mean over the thresholds, recall points and categories that have ground truth.
tests/test_cocoap.py holds it to pycocotools on real detections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
AREA_ALL = (0.0, 1e10)  # COCOeval's "all" area range: a ground-truth box outside it is ignored


@dataclass
class Boxes:
    """Boxes of several images: ``image`` (an image id), ``xywh``, ``category`` (a category id), and
    ``score`` (detections) or ``iscrowd``/``area`` (ground truth; area defaults to w x h)."""

    image: np.ndarray
    xywh: np.ndarray
    category: np.ndarray
    score: np.ndarray | None = None
    iscrowd: np.ndarray | None = None
    area: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.int64).reshape(-1)
        self.xywh = np.asarray(self.xywh, dtype=np.float64).reshape(-1, 4)
        self.category = np.asarray(self.category, dtype=np.int64).reshape(-1)
        n = len(self.image)
        if self.score is not None:
            self.score = np.asarray(self.score, dtype=np.float64).reshape(-1)
        self.iscrowd = (np.zeros(n, bool) if self.iscrowd is None
                        else np.asarray(self.iscrowd).reshape(-1).astype(bool))
        self.area = (self.xywh[:, 2] * self.xywh[:, 3] if self.area is None
                     else np.asarray(self.area, dtype=np.float64).reshape(-1))
        if not (len(self.xywh) == len(self.category) == len(self.iscrowd) == len(self.area) == n
                and (self.score is None or len(self.score) == n)):
            raise ValueError("boxes: image, xywh, category, score, iscrowd and area differ in length")


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU of xywh boxes (D, G); against a crowd box, intersection over the detection's area."""
    if len(dt) == 0 or len(gt) == 0:
        return np.zeros((len(dt), len(gt)))
    w = np.minimum(dt[:, None, 0] + dt[:, None, 2], gt[None, :, 0] + gt[None, :, 2]) - np.maximum(dt[:, None, 0],
                                                                                                  gt[None, :, 0])
    h = np.minimum(dt[:, None, 1] + dt[:, None, 3], gt[None, :, 1] + gt[None, :, 3]) - np.maximum(dt[:, None, 1],
                                                                                                  gt[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    da = (dt[:, 2] * dt[:, 3])[:, None]
    union = np.where(crowd[None, :], da, da + (gt[:, 2] * gt[:, 3])[None, :] - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _match(ious: np.ndarray, gt_ignore: np.ndarray, crowd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching per IoU threshold, in score order: (matched (T, D), matched to an ignored gt (T, D))."""
    t_count, d_count = len(IOU_THRESHOLDS), ious.shape[0]
    dt_matched = np.zeros((t_count, d_count), bool)
    dt_ignored = np.zeros((t_count, d_count), bool)
    for t, threshold in enumerate(IOU_THRESHOLDS):
        gt_taken = np.zeros(ious.shape[1], bool)
        for d in range(d_count):
            best, m = min(threshold, 1 - 1e-10), -1
            for g in range(ious.shape[1]):
                if gt_taken[g] and not crowd[g]:
                    continue
                if m > -1 and not gt_ignore[m] and gt_ignore[g]:
                    break  # ground truth is sorted real first: a real match beats any ignored one
                if ious[d, g] < best:
                    continue
                best, m = ious[d, g], g
            if m > -1:
                dt_matched[t, d], dt_ignored[t, d], gt_taken[m] = True, gt_ignore[m], True
    return dt_matched, dt_ignored


def _precision(scores: list[np.ndarray], matched: list[np.ndarray], ignored: list[np.ndarray],
               real_gt: int) -> np.ndarray:
    """One category's interpolated precision at each (IoU threshold, recall point)."""
    out = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    if not scores:
        return out
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    dtm = np.concatenate(matched, axis=1)[:, order]
    dti = np.concatenate(ignored, axis=1)[:, order]
    tps = np.cumsum(dtm & ~dti, axis=1).astype(float)
    fps = np.cumsum(~dtm & ~dti, axis=1).astype(float)
    for t in range(len(IOU_THRESHOLDS)):
        tp, fp = tps[t], fps[t]
        if not len(tp):
            continue
        recall = tp / real_gt
        precision = tp / (fp + tp + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
        idx = np.searchsorted(recall, RECALL_POINTS, side="left")
        valid = idx < len(precision)
        out[t, valid] = precision[idx[valid]]
    return out


def evaluate_boxes(gt: Boxes, dt: Boxes, image_ids: Any = None, category_ids: Any = None,
                   max_detections: int = MAX_DETECTIONS) -> dict[str, float]:
    """AP, AP50, AP75 (fractions) over ``image_ids`` (default: the ground truth's) and
    ``category_ids`` (default: those in the ground truth); -1 where nothing has ground truth."""
    if dt.score is None:
        raise ValueError("detections need scores")
    images = np.unique(gt.image if image_ids is None else np.asarray(image_ids, dtype=np.int64))
    cats = np.unique(gt.category if category_ids is None else np.asarray(category_ids, dtype=np.int64))
    gt_ignore_all = gt.iscrowd | (gt.area < AREA_ALL[0]) | (gt.area > AREA_ALL[1])
    precision = -np.ones((len(IOU_THRESHOLDS), len(RECALL_POINTS), len(cats)))
    gt_by = _group(gt.image, gt.category)
    dt_by = _group(dt.image, dt.category)
    for k, cat in enumerate(cats):
        scores: list[np.ndarray] = []
        matched: list[np.ndarray] = []
        ignored: list[np.ndarray] = []
        real_gt = 0
        for image in images:
            g = gt_by.get((int(image), int(cat)), np.zeros(0, np.int64))
            d = dt_by.get((int(image), int(cat)), np.zeros(0, np.int64))
            if not len(g) and not len(d):
                continue
            g = g[np.argsort(gt_ignore_all[g], kind="mergesort")]
            d = d[np.argsort(-dt.score[d], kind="mergesort")][:max_detections]
            ious = box_iou(dt.xywh[d], gt.xywh[g], gt.iscrowd[g])
            m, ig = _match(ious, gt_ignore_all[g], gt.iscrowd[g])
            scores.append(dt.score[d])
            matched.append(m)
            ignored.append(ig)
            real_gt += int((~gt_ignore_all[g]).sum())
        if real_gt:
            precision[:, :, k] = _precision(scores, matched, ignored, real_gt)

    def mean(p: np.ndarray) -> float:
        p = p[p > -1]
        return float(p.mean()) if p.size else -1.0

    return {"AP": mean(precision), "AP50": mean(precision[0]), "AP75": mean(precision[5])}


def _group(image: np.ndarray, category: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Indices per (image, category), each in the original order (pycocotools keeps input order)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, key in enumerate(zip(image.tolist(), category.tolist())):
        groups.setdefault(key, []).append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}
