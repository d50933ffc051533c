"""The native backbone zoo: every backbone of the CSPNet paper and its non-CSP counterpart.

Architectures are data (``BackboneSpec`` factories, one module per family); ``build_backbone``
turns a name into a ``Backbone`` that is an ImageNet classifier (``num_classes``) and a detector
backbone (``forward_features``: the stride 8, 16 and 32 maps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from edgecsp.errors import EdgeCSPError
from edgecsp.models.backbone import Backbone, BackboneSpec
from edgecsp.models.zoo import darknet, densenet, mobilenet, peleenet, resnet

BACKBONES: dict[str, Callable[[], BackboneSpec]] = {
    **resnet.BACKBONES,
    **darknet.BACKBONES,
    **mobilenet.BACKBONES,
    **densenet.BACKBONES,
    **peleenet.BACKBONES,
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        factory = BACKBONES[name]
    except KeyError:
        raise EdgeCSPError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None
    return factory()


def default_input_size(name: str) -> int:
    """The ImageNet input size the paper reports a backbone at: 224 for the MobileNet-v2, DenseNet
    and PeleeNet families (their own papers' size), 256 for the rest (the Darknet cfgs')."""
    backbone_spec(name)  # unknown names fail here, with the list of known ones
    return 224 if (name[3:] if name.startswith("csp") else name).startswith(("mobilenet", "densenet", "peleenet")) else 256


def build_backbone(
    name: str,
    *,
    width: float = 1.0,
    depth: float = 1.0,
    num_classes: int | None = None,
    features: bool | tuple[int, ...] = True,
) -> Backbone:
    """Build a zoo backbone.

    ``width``/``depth`` scale channels and block counts; ``num_classes`` adds the classifier;
    ``features`` True keeps the stride 8/16/32 stages, False none, a tuple picks stage indices.
    """
    if width <= 0 or depth <= 0:
        raise EdgeCSPError(f"width and depth multipliers must be positive, got width={width}, depth={depth}")
    if num_classes is not None and num_classes < 1:
        raise EdgeCSPError(f"num_classes must be at least 1, got {num_classes}")
    spec = backbone_spec(name).scaled(width, depth)
    if features is not True:
        spec = replace(spec, features=tuple(features) if features else ())
    return Backbone(spec, num_classes=num_classes)


__all__ = ["BACKBONES", "backbone_spec", "build_backbone", "default_input_size"]
