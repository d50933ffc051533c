"""Anchors fitted to a data set: k-means on box sizes with 1 - IoU as the distance."""

from __future__ import annotations

import numpy as np

from edgecsp.errors import EdgeCSPError


def _wh_iou(wh: np.ndarray, centers: np.ndarray) -> np.ndarray:
    inter = np.minimum(wh[:, None, 0], centers[None, :, 0]) * np.minimum(wh[:, None, 1], centers[None, :, 1])
    union = wh[:, None].prod(-1) + centers[None].prod(-1) - inter
    return inter / union


def fit_anchors(wh: np.ndarray, k: int = 9, seed: int = 0, iters: int = 300) -> list[tuple[float, float]]:
    """Cluster box (w, h) in input pixels into ``k`` anchors, sorted by area (small first)."""
    wh = np.asarray(wh, dtype=np.float64)
    wh = wh[(wh > 1).all(axis=1)]
    if len(wh) < k:
        raise EdgeCSPError(f"need at least {k} boxes to fit {k} anchors, the data set has {len(wh)}")
    rng = np.random.default_rng(seed)
    # k-means++ style seeding on 1 - IoU keeps small and large boxes represented.
    centers = [wh[rng.integers(len(wh))]]
    for _ in range(1, k):
        d = 1 - _wh_iou(wh, np.array(centers)).max(axis=1)
        centers.append(wh[rng.choice(len(wh), p=d**2 / (d**2).sum())])
    centers = np.array(centers)
    for _ in range(iters):
        assign = _wh_iou(wh, centers).argmax(axis=1)
        new = np.array([np.median(wh[assign == j], axis=0) if (assign == j).any() else centers[j] for j in range(k)])
        if np.allclose(new, centers):
            break
        centers = new
    centers = centers[np.argsort(centers.prod(axis=1))]
    return [(round(float(w), 1), round(float(h), 1)) for w, h in centers]


def anchor_fitness(wh: np.ndarray, anchors: list[tuple[float, float]]) -> float:
    """Mean best IoU of each box with any anchor (a quick check of the fit)."""
    return float(_wh_iou(np.asarray(wh, float), np.asarray(anchors, float)).max(axis=1).mean())
