"""Detectors as data: a backbone (zoo name + multipliers), a neck, anchors and a YOLO head.

``DETECTORS`` holds the named configurations; ``build_detector`` turns one into a module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from edgecsp.errors import EdgeCSPError
from edgecsp.models.head import YoloHead
from edgecsp.models.necks import EFM, PANetSPP

# YOLOv3's COCO anchors (the published CSP cfgs use them) and YOLOv4's (the "optimal" cfg).
COCO_ANCHORS_V3 = [(10, 13), (16, 30), (33, 23), (30, 61), (62, 45), (59, 119), (116, 90), (156, 198), (373, 326)]
COCO_ANCHORS_V4 = [(12, 16), (19, 36), (40, 28), (36, 75), (76, 55), (72, 146), (142, 110), (192, 243), (459, 401)]

NECKS = {"panet-spp": PANetSPP, "efm": EFM}


@dataclass(frozen=True)
class DetectorConfig:
    backbone: str
    neck: str
    neck_args: dict = field(default_factory=dict)
    width: float = 1.0  # backbone width multiplier
    depth: float = 1.0  # backbone depth multiplier
    anchors: tuple[tuple[float, float], ...] = tuple(COCO_ANCHORS_V3)
    strides: tuple[int, ...] = (8, 16, 32)
    num_classes: int = 80
    input_size: int = 416
    scale_xy: float | tuple[float, ...] = 1.0  # one value, or one per level (finest first)
    new_coords: bool = False
    description: str = ""

    def with_overrides(self, **kw) -> DetectorConfig:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


DETECTORS: dict[str, DetectorConfig] = {
    "cspresnext50-panet-spp": DetectorConfig(
        "cspresnext50", "panet-spp", description="paper's GPU detector (csresnext50-panet-spp.cfg)"),
    "cspresnext50-panet-spp-optimal": DetectorConfig(
        "cspresnext50", "panet-spp", anchors=tuple(COCO_ANCHORS_V4), scale_xy=(1.2, 1.1, 1.05), input_size=512,
        description="42.4 AP test-dev model (csresnext50-panet-spp-original-optimal.cfg)"),
    "cspresnet50-panet-spp": DetectorConfig(
        "cspresnet50", "panet-spp", description="csresnet50-panet-spp.cfg"),
    "cspdarknet53-panet-spp": DetectorConfig(
        "cspdarknet53", "panet-spp", description="csdarknet53-panet-spp.cfg"),
    "csppeleenet-efm": DetectorConfig(
        "csppeleenet", "efm", {"width": 128, "sam": True}, input_size=320,
        description="paper's edge design: CSPPeleeNet + EFM(SAM)"),
    # Small edge family from the same parts: one line each, width/depth multipliers.
    "csp-tiny-efm": DetectorConfig(
        "cspdarknet53", "efm", {"width": 64, "sam": True}, width=0.25, depth=0.33, input_size=320,
        new_coords=True, scale_xy=2.0, description="demo-sized edge detector: CSPDarkNet x0.25/0.33 + EFM(SAM)"),
    "csp-small-efm": DetectorConfig(
        "cspdarknet53", "efm", {"width": 96, "sam": True}, width=0.5, depth=0.33, input_size=320,
        new_coords=True, scale_xy=2.0, description="CSPDarkNet x0.5/0.33 + EFM(SAM)"),
}


def detector_config(name: str) -> DetectorConfig:
    if name not in DETECTORS:
        raise EdgeCSPError(f"unknown detector {name!r}; known: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name]


class Detector(nn.Module):
    """Backbone -> neck (ending in prediction convs) -> YOLO decoding.

    ``forward`` returns the raw per-level maps (what the loss needs); ``predict`` returns the
    decoded ``(N, K, 5 + classes)`` tensor that export and every backend share.
    """

    def __init__(self, config: DetectorConfig):
        super().__init__()
        from edgecsp.models.zoo import build_backbone  # zoo imports model parts; avoid a cycle

        self.config = config
        levels = len(config.strides)
        if len(config.anchors) % levels:
            raise EdgeCSPError(f"{len(config.anchors)} anchors cannot be shared by {levels} output levels")
        per_level = len(config.anchors) // levels
        self.backbone = build_backbone(config.backbone, width=config.width, depth=config.depth)
        if len(self.backbone.feature_channels) != levels:
            raise EdgeCSPError(
                f"backbone {config.backbone} exposes {len(self.backbone.feature_channels)} maps, "
                f"the detector needs {levels}")
        outputs = per_level * (5 + config.num_classes)
        self.neck = NECKS[config.neck](self.backbone.feature_channels, outputs, **config.neck_args)
        anchors = [list(config.anchors[i * per_level:(i + 1) * per_level]) for i in range(levels)]
        self.head = YoloHead(anchors, list(config.strides), config.num_classes, config.scale_xy, config.new_coords)
        self._init_prediction_biases(per_level)

    @torch.no_grad()
    def _init_prediction_biases(self, per_level: int) -> None:
        # Start with few objects per image and uniform classes (as YOLOv5 does): without this a
        # fresh detector spends its first epochs just lowering every cell's objectness.
        c = self.config
        for conv, stride in zip(self.neck.prediction_convs(), c.strides):
            bias = conv.conv.bias.view(per_level, 5 + c.num_classes)
            bias[:, 4] += math.log(8 / (c.input_size / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / max(c.num_classes - 0.99, 0.01))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.neck(self.backbone.forward_features(x))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x))


def build_detector(name_or_config: str | DetectorConfig, **overrides) -> Detector:
    config = detector_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    return Detector(config.with_overrides(**overrides))
