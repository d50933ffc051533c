"""DarkNet-53 and CSPDarkNet-53 as darknet53.cfg / csdarknet53.cfg lay them out (leaky)."""

from __future__ import annotations

from edgecsp.models.backbone import BackboneSpec
from edgecsp.models.csp import StageSpec
from edgecsp.models.layers import ConvSpec

STEM = (ConvSpec(32, 3),)
WIDTHS = (64, 128, 256, 512, 1024)  # each stage opens with a 3x3 stride-2 conv to this width
DEPTHS = (1, 2, 8, 8, 4)
FEATURES = (2, 3, 4)  # strides 8, 16, 32


def darknet53() -> BackboneSpec:
    stages = tuple(
        StageSpec("darknet", d, {"mid": w // 2}, down=(ConvSpec(w, 3, 2),), merge="plain")
        for w, d in zip(WIDTHS, DEPTHS)
    )
    return BackboneSpec(STEM, stages, FEATURES, classifier="pool_conv")


def cspdarknet53() -> BackboneSpec:
    stages = []
    for i, (w, d) in enumerate(zip(WIDTHS, DEPTHS)):
        part = w if i == 0 else w // 2  # the first stage keeps full width on both paths
        stages.append(
            StageSpec(
                "darknet",
                d,
                {"mid": w // 2},
                down=(ConvSpec(w, 3, 2),),
                cross=(ConvSpec(part, 1),),
                main=(ConvSpec(part, 1),),
                transition_main=(ConvSpec(part, 1),),
                transition_out=(ConvSpec(w, 1),),
            )
        )
    return BackboneSpec(STEM, tuple(stages), FEATURES, classifier="pool_conv")


BACKBONES = {"darknet53": darknet53, "cspdarknet53": cspdarknet53}
