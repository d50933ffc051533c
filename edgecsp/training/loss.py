"""YOLO loss: CIoU box loss, objectness BCE (target = IoU), class BCE.

Targets are assigned as in Scaled-YOLOv4: a ground truth goes to every anchor whose shape is
within 4x of it, in its own cell and the two nearest neighbouring cells; this gives many
positives per object, which trains small data sets fast.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from edgecsp.models.head import YoloHead

# Finer maps have more cells, so their objectness weighs more; by stride, so 2-level tiny models
# and 4-5 level P6/P7 models weigh each map like the 3-level ones do.
LEVEL_BALANCE = {2: 16.0, 4: 8.0, 8: 4.0, 16: 1.0, 32: 0.4, 64: 0.1, 128: 0.03}


def box_ciou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of boxes given as (cx, cy, w, h), element-wise."""
    a1, a2 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b1, b2 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = (torch.min(a2, b2) - torch.max(a1, b1)).clamp(min=0).prod(1)
    union = a[:, 2:].prod(1) + b[:, 2:].prod(1) - inter + eps
    iou = inter / union
    enclose = torch.max(a2, b2) - torch.min(a1, b1)
    c2 = (enclose**2).sum(1) + eps
    rho2 = ((a[:, :2] - b[:, :2]) ** 2).sum(1)
    v = (4 / math.pi**2) * (torch.atan(b[:, 2] / (b[:, 3] + eps)) - torch.atan(a[:, 2] / (a[:, 3] + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + 1 + eps)
    return iou - rho2 / c2 - alpha * v


class YoloLoss(nn.Module):
    def __init__(self, head: YoloHead, box_weight: float = 0.05, obj_weight: float = 1.0,
                 cls_weight: float = 0.5, anchor_ratio: float = 4.0):
        super().__init__()
        self.head = head
        self.box_weight, self.obj_weight, self.cls_weight = box_weight, obj_weight, cls_weight
        self.anchor_ratio = anchor_ratio
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, raws: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``targets``: (T, 6) rows of image index, class, cx, cy, w, h in input pixels."""
        device = raws[0].device
        box_loss = torch.zeros((), device=device)
        obj_loss = torch.zeros((), device=device)
        cls_loss = torch.zeros((), device=device)
        for li, (level, raw) in enumerate(zip(self.head.levels, raws)):
            p = level.split(raw)  # (N, A, H, W, 5+C)
            h, w = p.shape[2], p.shape[3]
            obj_target = torch.zeros(p.shape[:4], device=device)
            idx, gt = self._assign(level, targets, h, w)
            if idx is not None:
                b, anc, gy, gx = idx
                ps = p[b, anc, gy, gx]
                pred = level.decode_xywh(p)[b, anc, gy, gx]
                ciou = box_ciou(pred, gt[:, 2:6])
                box_loss = box_loss + (1 - ciou).mean()
                obj_target[b, anc, gy, gx] = ciou.detach().clamp(min=0).to(obj_target.dtype)
                cls_t = torch.zeros_like(ps[:, 5:])
                cls_t[torch.arange(len(gt)), gt[:, 1].long()] = 1.0
                cls_loss = cls_loss + self.bce(ps[:, 5:], cls_t)
            balance = LEVEL_BALANCE.get(int(level.stride), 0.4)
            obj_loss = obj_loss + self.bce(p[..., 4], obj_target) * balance
        n = raws[0].shape[0]
        parts = {"box": box_loss * self.box_weight, "obj": obj_loss * self.obj_weight, "cls": cls_loss * self.cls_weight}
        total = sum(parts.values()) * n
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def _assign(self, level, targets: torch.Tensor, h: int, w: int):
        if targets.numel() == 0:
            return None, None
        anchors = level.anchors.view(-1, 2)
        na = anchors.shape[0]
        ratio = targets[None, :, 4:6] / anchors[:, None]  # (A, T, 2)
        ok = torch.max(ratio, 1 / ratio).max(2).values < self.anchor_ratio
        anc_idx, t_idx = ok.nonzero(as_tuple=True)
        if len(t_idx) == 0:
            return None, None
        gt = targets[t_idx]
        gxy = gt[:, 2:4] / level.stride  # centre in grid units
        # Own cell plus the neighbours on the sides the centre is nearest to.
        offsets = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], device=targets.device, dtype=gxy.dtype)
        frac = gxy % 1.0
        use = torch.stack([
            torch.ones_like(frac[:, 0], dtype=torch.bool),
            (frac[:, 0] < 0.5) & (gxy[:, 0] > 1), (frac[:, 1] < 0.5) & (gxy[:, 1] > 1),
            (frac[:, 0] > 0.5) & (gxy[:, 0] < w - 1), (frac[:, 1] > 0.5) & (gxy[:, 1] < h - 1),
        ])  # (5, M)
        sel_off, sel_m = use.nonzero(as_tuple=True)
        cells = (gxy[sel_m] - offsets[sel_off]).long()
        gx = cells[:, 0].clamp(0, w - 1)
        gy = cells[:, 1].clamp(0, h - 1)
        b = gt[sel_m, 0].long()
        anc = anc_idx[sel_m]
        del na
        return (b, anc, gy, gx), gt[sel_m]
