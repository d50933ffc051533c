"""ResNet-50 / ResNeXt-50 and their CSP versions, as the reference implementation's Darknet cfgs
(resnet50.cfg, resnext50.cfg, csresnet50.cfg, csresnext50.cfg) lay them out.

The plain cfgs have no projection shortcuts: a stage's first block adds its (narrower, and for
stride 2 larger) input with Darknet's partial add. The CSP cfgs move each stage's first block
into the split: a stride-2 3x3 conv, then 1x1 convs for the cross and block paths.
"""

from __future__ import annotations

from edgecsp.models.backbone import BackboneSpec
from edgecsp.models.csp import StageSpec
from edgecsp.models.layers import ConvSpec, Pool

STEM = (ConvSpec(64, 7, 2), Pool(2, 2))
FEATURES = (1, 2, 3)  # strides 8, 16, 32

# Per stage: depth, bottleneck width, block output.
RESNET50 = ((3, 64, 256), (4, 128, 512), (6, 256, 1024), (3, 512, 2048))
RESNEXT50 = ((3, 128, 256), (4, 256, 512), (6, 512, 1024), (3, 1024, 2048))

# Per stage: depth, bottleneck width, block output, cross width, main width, activation of the
# split convs (the cfgs use linear in the middle stages), transition_out width.
CSRESNET50 = (
    (3, 64, 128, 128, 64, "leaky", 128),
    (3, 128, 256, 256, 256, "linear", 256),
    (5, 256, 512, 512, 512, "linear", 512),
    (2, 512, 1024, 1024, 1024, "leaky", 1024),
)
CSRESNEXT50 = (
    (3, 128, 128, 128, 64, "leaky", 256),
    (3, 256, 256, 256, 256, "linear", 512),
    (5, 512, 512, 512, 512, "linear", 1024),
    (2, 1024, 1024, 1024, 1024, "leaky", 2048),
)


def plain(rows, block: str, groups: int, classifier: str) -> BackboneSpec:
    stages = []
    for i, (depth, mid, out) in enumerate(rows):
        args = {"mid": mid, "out": out} | ({"groups": groups} if groups > 1 else {})
        stages.append(StageSpec(block, depth, args, merge="plain", first_args={"stride": 2} if i else {}))
    return BackboneSpec(STEM, tuple(stages), FEATURES, classifier=classifier)


def csp(rows, block: str, groups: int) -> BackboneSpec:
    stages, prev = [], 0
    for i, (depth, mid, out, cross, main, split_act, to) in enumerate(rows):
        args = {"mid": mid, "out": out} | ({"groups": groups} if groups > 1 else {})
        stages.append(
            StageSpec(
                block,
                depth,
                args,
                down=(ConvSpec(prev, 3, 2, groups=groups),) if i else (),
                cross=(ConvSpec(cross, 1, act=split_act),),
                main=(ConvSpec(main, 1, act=split_act),),
                transition_main=(ConvSpec(out, 1),),
                transition_out=(ConvSpec(to, 1),),
            )
        )
        prev = to
    return BackboneSpec(STEM, tuple(stages), FEATURES, classifier="pool_conv")


def resnet50() -> BackboneSpec:
    return plain(RESNET50, "resnet", 1, classifier="conv")  # the cfg convolves before pooling


def resnext50() -> BackboneSpec:
    return plain(RESNEXT50, "resnext", 32, classifier="pool_conv")


def cspresnet50() -> BackboneSpec:
    return csp(CSRESNET50, "resnet", 1)


def cspresnext50() -> BackboneSpec:
    return csp(CSRESNEXT50, "resnext", 32)


BACKBONES = {
    "resnet50": resnet50,
    "cspresnet50": cspresnet50,
    "resnext50": resnext50,
    "cspresnext50": cspresnext50,
}
