"""YOLOv3-style anchor-based head: turns each level's raw map into decoded boxes and scores.

Decoding happens in the graph (it exports to ONNX), so every backend returns the same
contract: ``(N, K, 5 + classes)`` rows of ``x1, y1, x2, y2`` in input pixels, objectness and
per-class probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from edgecsp.errors import EdgeCSPError


class YoloLevel(nn.Module):
    """Decoding for one output level (Darknet's [yolo] layer, with scale_x_y and new_coords)."""

    def __init__(self, anchors: list[tuple[float, float]], stride: int, num_classes: int,
                 scale_xy: float = 1.0, new_coords: bool = False):
        super().__init__()
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32).view(1, -1, 1, 1, 2))
        self.stride = stride
        self.num_classes = num_classes
        self.num_anchors = len(anchors)
        self.scale_xy = scale_xy
        self.new_coords = new_coords

    def split(self, raw: torch.Tensor) -> torch.Tensor:
        """(N, A*(5+C), H, W) -> (N, A, H, W, 5+C)."""
        n, _, h, w = raw.shape
        return raw.view(n, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2)

    def grid(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        ys = torch.arange(h, device=device, dtype=torch.float32)
        xs = torch.arange(w, device=device, dtype=torch.float32)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy], dim=-1).view(1, 1, h, w, 2)

    def decode_xywh(self, p: torch.Tensor) -> torch.Tensor:
        """Box centres and sizes in input pixels from split raw predictions (N, A, H, W, >=4)."""
        h, w = p.shape[2], p.shape[3]
        grid = self.grid(h, w, p.device)
        s = self.scale_xy
        xy = (torch.sigmoid(p[..., :2]) * s - (s - 1) / 2 + grid) * self.stride
        if self.new_coords:
            wh = (2 * torch.sigmoid(p[..., 2:4])) ** 2 * self.anchors
        else:
            wh = torch.exp(p[..., 2:4].clamp(max=10.0)) * self.anchors
        return torch.cat([xy, wh], dim=-1)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        p = self.split(raw)
        xywh = self.decode_xywh(p)
        xy, wh = xywh[..., :2], xywh[..., 2:]
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=-1)
        scores = torch.sigmoid(p[..., 4:])
        return torch.cat([boxes, scores], dim=-1).reshape(p.shape[0], -1, 5 + self.num_classes)


class YoloHead(nn.Module):
    def __init__(self, anchors: list[list[tuple[float, float]]], strides: list[int], num_classes: int,
                 scale_xy: float | Sequence[float] = 1.0, new_coords: bool = False):
        super().__init__()
        # One scale_xy for all levels, or one per level (Darknet sets it per [yolo] layer).
        scales = [float(scale_xy)] * len(strides) if isinstance(scale_xy, (int, float)) else list(scale_xy)
        if len(scales) != len(strides):
            raise EdgeCSPError(
                f"{len(scales)} scale_xy values for {len(strides)} output levels; give one, or one per level")
        self.levels = nn.ModuleList(
            YoloLevel(a, s, num_classes, k, new_coords) for a, s, k in zip(anchors, strides, scales)
        )

    def forward(self, raws: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([level(raw) for level, raw in zip(self.levels, raws)], dim=1)
