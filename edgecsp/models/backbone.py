"""A backbone as data: a stem, a list of CSP (or plain) stages, and which stages feed a detector.

The same ``Backbone`` serves as an ImageNet classifier (``classifier`` head on the last map) and
as a detector backbone (returns the feature maps of ``features``, strides 8/16/32 typically).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from edgecsp.errors import EdgeCSPError
from edgecsp.models.csp import CSPStage, StageSpec, scale_conv, scale_stage
from edgecsp.models.layers import ConvBNAct, ConvSpec, Pool, make_layer

CLASSIFIERS = ("conv", "pool_conv", "linear")


@dataclass(frozen=True)
class BackboneSpec:
    stem: tuple[ConvSpec | Pool, ...]
    stages: tuple[StageSpec, ...]
    features: tuple[int, ...] = ()  # stage indices whose outputs a detector uses
    head: tuple[ConvSpec | Pool, ...] = ()  # classifier convs before the 1000-way layer (e.g. conv 1x1)
    # "conv": Darknet's 1x1 conv to classes then global avgpool; "pool_conv": avgpool then the 1x1
    # conv (same output, the order most Darknet cfgs use, and far fewer FLOPs); "linear": avgpool, FC.
    classifier: str = "conv"
    stem_after: dict = field(default_factory=dict)  # stage index -> tuple of Pool/ConvSpec inserted before it

    def scaled(self, width: float = 1.0, depth: float = 1.0) -> BackboneSpec:
        return replace(
            self,
            stem=tuple(scale_conv(s, width) for s in self.stem),
            stages=tuple(scale_stage(s, width, depth) for s in self.stages),
            head=tuple(scale_conv(s, width) for s in self.head),
            stem_after={i: tuple(scale_conv(s, width) for s in items) for i, items in self.stem_after.items()},
        )


def _layer(in_ch: int, item: ConvSpec | Pool) -> tuple[nn.Module, int]:
    return make_layer(in_ch, item)


class Backbone(nn.Module):
    def __init__(self, spec: BackboneSpec, in_channels: int = 3, num_classes: int | None = None):
        super().__init__()
        if spec.classifier not in CLASSIFIERS:
            raise EdgeCSPError(f"unknown classifier {spec.classifier!r}; use one of {', '.join(CLASSIFIERS)}")
        if any(not 0 <= i < len(spec.stages) for i in spec.features):
            raise EdgeCSPError(f"features {spec.features} must be stage indices in 0..{len(spec.stages) - 1}")
        self.spec = spec
        ch = in_channels
        stem = []
        for item in spec.stem:
            layer, ch = _layer(ch, item)
            stem.append(layer)
        self.stem = nn.Sequential(*stem)
        self.stages = nn.ModuleList()
        self.stage_channels: list[int] = []
        for i, stage_spec in enumerate(spec.stages):
            pre = []
            for item in spec.stem_after.get(i, ()):
                layer, ch = _layer(ch, item)
                pre.append(layer)
            stage = CSPStage(ch, stage_spec)
            ch = stage.out_channels
            self.stages.append(nn.Sequential(*pre, stage) if pre else stage)
            self.stage_channels.append(ch)
        self.feature_channels = [self.stage_channels[i] for i in spec.features]
        self.classifier: nn.Module | None = None
        if num_classes is not None:
            head = []
            for item in spec.head:
                layer, ch = _layer(ch, item)
                head.append(layer)
            fc = ConvBNAct(ch, ConvSpec(num_classes, 1, act="linear", bn=False))
            if spec.classifier == "conv":
                head += [fc, nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            elif spec.classifier == "pool_conv":
                head += [nn.AdaptiveAvgPool2d(1), fc, nn.Flatten()]
            else:
                head += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(ch, num_classes)]
            self.classifier = nn.Sequential(*head)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.spec.features:
                outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.classifier is None:
            return self.forward_features(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.classifier(x)
