"""Detectors as data: a backbone (zoo name + multipliers), a neck, anchors and a YOLO head.

``DETECTORS`` holds the named configurations; ``build_detector`` turns one into a module.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import cast

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


# Limits a config must stay within, so a corrupt checkpoint or a typo (width=1000) is refused
# before anything is allocated. The zoo's detectors use width/depth <= 1 and at most 65M params.
MAX_PARAMS = 2**28  # 1 GiB of float32
MAX_MULTIPLIER = 4.0  # width and depth
MAX_CHANNELS = 4096  # neck width
MAX_INPUT = 8192  # pixels


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # JSON true is not a count


def _is_number(v) -> bool:
    # abs(v) < 1e300 also refuses nan, inf and ints too large for a float (math.isfinite would raise)
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and abs(cast(float, v)) < 1e300


def _neck_arg_problem(key: str, value) -> str | None:
    """What is wrong with one neck argument, or None."""
    if key in ("spp", "sam"):
        return None if isinstance(value, bool) else "must be true or false"
    if key == "act":
        return None if isinstance(value, str) else "must be an activation name"
    if key == "width":
        return None if _is_int(value) and 8 <= value <= MAX_CHANNELS else f"must be an integer in 8..{MAX_CHANNELS}"
    if key == "maxout_groups":
        return None if _is_int(value) and 1 <= value <= 16 else "must be an integer in 1..16"
    if key == "spp_sizes":  # odd sizes keep the map size (stride 1, padding size//2), so maps concatenate
        ok = isinstance(value, (list, tuple)) and value and all(_is_int(k) and 1 <= k <= 63 and k % 2 for k in value)
        return None if ok else "must be a list of odd integers in 1..63"
    return "has no check in edgecsp.models.detector; add one there"


def check_config(config: DetectorConfig) -> None:
    """Refuse a config this edgecsp cannot build, with one line naming the field.

    Every field's type and range is checked here (configs come from JSON checkpoints, artifact
    manifests and command lines); then the model is built on the meta device, which allocates
    nothing, and refused when its parameter count is over ``MAX_PARAMS``.
    """
    from edgecsp.models.zoo import BACKBONES

    c = config

    def bad(field_: str, why: str) -> EdgeCSPError:
        value = repr(getattr(c, field_))
        value = value if len(value) <= 60 else value[:57] + "..."
        return EdgeCSPError(f"detector config {field_}={value} {why}")

    if not isinstance(c.backbone, str) or c.backbone not in BACKBONES:
        raise bad("backbone", f"is not a zoo backbone; known: {', '.join(BACKBONES)}")
    if not isinstance(c.neck, str) or c.neck not in NECKS:
        raise bad("neck", f"is not a known neck; use one of {', '.join(NECKS)}")
    if not isinstance(c.neck_args, dict):
        raise bad("neck_args", "must be a mapping of neck arguments")
    accepted = set(inspect.signature(NECKS[c.neck]).parameters) - {"in_channels", "outputs"}
    for key, value in c.neck_args.items():
        problem = _neck_arg_problem(key, value) if key in accepted else f"is not an argument of the {c.neck} neck"
        if problem:
            raise EdgeCSPError(f"detector config neck_args {key!r:.40}={value!r:.60} {problem}")
    for name in ("width", "depth"):
        value = getattr(c, name)
        if not _is_number(value) or not 0 < value <= MAX_MULTIPLIER:
            raise bad(name, f"must be a number in (0, {MAX_MULTIPLIER:g}]")
    if not isinstance(c.strides, (list, tuple)) or not c.strides or \
            not all(_is_int(s) and 1 <= s <= MAX_INPUT for s in c.strides):
        raise bad("strides", "must be a list of positive integers, one per output level")
    if not isinstance(c.anchors, (list, tuple)) or not c.anchors or len(c.anchors) > 64 * len(c.strides) or \
            not all(isinstance(a, (list, tuple)) and len(a) == 2 and all(_is_number(v) and 0 < v <= 1e5 for v in a)
                    for a in c.anchors):
        raise bad("anchors", "must be a list of [width, height] pairs of pixel sizes in (0, 100000]")
    if not _is_int(c.num_classes) or not 1 <= c.num_classes <= 100_000:
        raise bad("num_classes", "must be an integer in 1..100000")
    if not _is_int(c.input_size) or not 1 <= c.input_size <= MAX_INPUT:
        raise bad("input_size", f"must be an integer in 1..{MAX_INPUT}")
    scales = c.scale_xy if isinstance(c.scale_xy, (list, tuple)) else [c.scale_xy]
    if not scales or not all(_is_number(v) and 0 < v <= 16 for v in scales):
        raise bad("scale_xy", "must be a positive number, or a list of one per output level")
    if not isinstance(c.new_coords, bool):
        raise bad("new_coords", "must be true or false")
    if not isinstance(c.description, str):
        raise bad("description", "must be a string")
    with torch.device("meta"):
        params = sum(p.numel() for p in Detector(c).parameters())
    if params > MAX_PARAMS:
        raise EdgeCSPError(
            f"detector config makes a model of {params:,} parameters, over edgecsp's limit of {MAX_PARAMS:,}; "
            "lower width, depth, neck width or num_classes")


def build_detector(name_or_config: str | DetectorConfig, **overrides) -> Detector:
    config = detector_config(name_or_config) if isinstance(name_or_config, str) else name_or_config
    config = config.with_overrides(**overrides)
    check_config(config)
    return Detector(config)
