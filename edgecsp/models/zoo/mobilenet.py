"""MobileNet-v2 and CSPMobileNet-v2 as mobilenet-v2.cfg / csmobilenet-v2.cfg lay them out.

Both cfgs use ReLU (not ReLU6), expand in the first block too, and put the stride-2 of the
64-channel row on the 96-channel row instead. The CSP cfg turns each stage's first block into
the split: its 1x1 expansion (t=3) is the stage's ``down``, a depthwise stride-2 3x3 of it is
the cross path and a stride-2 3x3 with channel multiplier 2 plus the projection is the block
path; the remaining blocks expand t=3 with a multiplier-2 grouped 3x3.
"""

from __future__ import annotations

from edgecsp.models.backbone import BackboneSpec
from edgecsp.models.csp import StageSpec
from edgecsp.models.layers import ConvSpec

ACT = "relu"
STEM = (ConvSpec(32, 3, 2, act=ACT),)
FEATURES = (2, 3, 4)  # strides 8, 16, 32

# Per stage: stride, then runs of (blocks, output width) (MobileNet-v2's rows, grouped by stride).
ROWS = (
    (1, ((1, 16),)),
    (2, ((2, 24),)),
    (2, ((3, 32), (4, 64))),
    (2, ((3, 96),)),
    (2, ((3, 160), (1, 320))),
)
HEAD = 1280  # the plain net's last 1x1 conv before the classifier
CSP_TRANSITION = 640  # the CSP net's transition after its last concatenation


def _then(runs) -> tuple[tuple[int, dict], ...]:
    return tuple((d, {"out": o}) for d, o in runs[1:])


def mobilenetv2() -> BackboneSpec:
    stages = []
    for i, (stride, runs) in enumerate(ROWS):
        args = {"t": 1 if i == 0 else 6, "out": runs[0][1], "act": ACT}
        first = {"stride": stride} if stride > 1 else {}
        stages.append(StageSpec("inverted", runs[0][0], args, merge="plain", first_args=first, then=_then(runs)))
    head = (ConvSpec(HEAD, 1, act=ACT),)
    return BackboneSpec(STEM, tuple(stages), FEATURES, head=head, classifier="pool_conv")


def cspmobilenetv2() -> BackboneSpec:
    stages, prev_out = [], 0
    for i, (stride, runs) in enumerate(ROWS):
        depth, out = runs[0]
        if i == 0:
            # The first stage keeps its one block; the cross path is a grouped 3x3 of the stem.
            stage = StageSpec(
                "inverted",
                depth,
                {"t": 1, "out": out, "act": ACT},
                cross=(ConvSpec(out, 3, groups=out, act=ACT),),
                then=_then(runs),
            )
        else:
            x = 3 * prev_out  # the absorbed first block's expansion
            stage = StageSpec(
                "inverted",
                depth - 1,
                {"t": 3, "mult": 2, "out": out, "act": ACT},
                down=(ConvSpec(x, 1, act=ACT),),
                cross=(ConvSpec(x, 3, stride, groups=x, act=ACT),),
                main=(ConvSpec(2 * x, 3, stride, groups=x, act=ACT), ConvSpec(out, 1, act="linear")),
                transition_out=(ConvSpec(CSP_TRANSITION, 1, act=ACT),) if i == len(ROWS) - 1 else (),
                then=_then(runs),
            )
        stages.append(stage)
        prev_out = runs[-1][1]
    return BackboneSpec(STEM, tuple(stages), FEATURES, classifier="pool_conv")


BACKBONES = {"mobilenetv2": mobilenetv2, "cspmobilenetv2": cspmobilenetv2}
