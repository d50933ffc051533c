"""From the decoded output contract to detections: score threshold, class-wise NMS, and back to
original image coordinates. Numpy only, so every backend (and a deployed device without torch)
shares the exact same postprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecsp.data.preprocess import LetterboxInfo

# The thresholds of deployed detections, the same wherever detections are kept: python -m
# edgecsp.detect, a loaded artifact's predict(), the NMS an export or a TensorRT engine ends in.
# (Accuracy evaluation keeps nearly every box instead: see postprocess's own defaults.)
DEFAULT_SCORE = 0.25  # keep scores (objectness x class probability) above this
DEFAULT_IOU = 0.5  # suppress a box whose IoU with a kept box of its class is above this


@dataclass
class Detections:
    boxes: np.ndarray  # (K, 4) x1, y1, x2, y2 in original image pixels
    scores: np.ndarray  # (K,)
    labels: np.ndarray  # (K,) contiguous class index

    def __len__(self) -> int:
        return len(self.scores)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS; returns kept indices by descending score."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def postprocess(pred: np.ndarray, info: LetterboxInfo | None = None, score_threshold: float = 0.001,
                iou_threshold: float = 0.6, max_detections: int = 300, pre_nms_top_k: int = 3000) -> Detections:
    """One image's decoded rows ``(K, 5 + C)`` -> detections (one label per box, score = obj x cls)."""
    pred = np.asarray(pred, dtype=np.float32)
    cls_scores = pred[:, 5:] * pred[:, 4:5]
    labels = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(len(pred)), labels]
    keep = scores > score_threshold
    boxes, scores, labels = pred[keep, :4], scores[keep], labels[keep]
    if len(scores) > pre_nms_top_k:
        top = np.argpartition(-scores, pre_nms_top_k)[:pre_nms_top_k]
        boxes, scores, labels = boxes[top], scores[top], labels[top]
    # Offsetting boxes by class keeps NMS class-wise in a single pass.
    offset = labels[:, None].astype(np.float32) * 4096.0
    kept = nms(boxes + offset, scores, iou_threshold)[:max_detections]
    boxes, scores, labels = boxes[kept], scores[kept], labels[kept]
    if info is not None:
        boxes = info.to_original(boxes)
    return Detections(boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64))
