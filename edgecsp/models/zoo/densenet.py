"""DenseNet-201 and CSPDenseNet-201, plain and with Elastic (the reference's ImageNet rows).

No cfg was published. DenseNet-201+Elastic follows Elastic's released model (Wang et al., CVPR
2019): 10/20/40/30 layers, growth 32, each layer two 64-wide bottleneck branches, one on a 2x
average-pooled input (full resolution in the last stage), summed; transitions halve the width,
then a 2x2 average pool. CSPDenseNet-201+Elastic: the reference gives only its figures (20.17M,
7.13 BFLOPs at 224); the design here is the one that reproduces both with DenseNet-201's
6/12/48/32 layers: gamma = 0.25 of each stage's input goes through the dense layers, a 1x1
partial transition keeps the dense path's width, the concatenation (DenseNet-201's widths
256/512/1792/1920) is halved by the transition as in DenseNet, and the last stage ends with
the concatenation (fusion last), 1920 wide as DenseNet-201.

Convs are conv-BN-ReLU (Darknet order, foldable for deployment) where DenseNet and Elastic use
BN-ReLU-conv: the same convs and FLOPs, a few BatchNorm parameters fewer (about 1%).
"""

from __future__ import annotations

from edgecsp.models.backbone import BackboneSpec
from edgecsp.models.csp import StageSpec
from edgecsp.models.layers import ConvSpec, Pool

ACT = "relu"
STEM = (ConvSpec(64, 7, 2, act=ACT), Pool(3, 2))
GROWTH, BOTTLENECK = 32, 128
DENSENET201 = (6, 12, 48, 32)
ELASTIC201 = (10, 20, 40, 30)  # Elastic's DenseNet-201 redistributes the layers
ELASTIC_SCALES = (2, 2, 2, 1)  # the low branch's downsampling per stage (none at stride 32)
CSP_GAMMA = 0.25
FEATURES = (1, 2, 3)  # strides 8, 16, 32


def densenet(depths, elastic: bool, csp: bool) -> BackboneSpec:
    stages, ch = [], STEM[0].out
    for i, depth in enumerate(depths):
        last = i == len(depths) - 1
        args = {"growth": GROWTH, "bottleneck": BOTTLENECK, "act": ACT}
        if elastic:
            args["elastic"] = ELASTIC_SCALES[i]
        out = ch + depth * GROWTH  # concatenation width (DenseNet's, CSP or not)
        down = (Pool(2, 2, "avg"),) if i else ()
        transition = () if last else (ConvSpec(out // 2, 1, act=ACT),)
        if csp:
            main_out = max(1, round(ch * CSP_GAMMA)) + depth * GROWTH
            spec = StageSpec(
                "dense",
                depth,
                args,
                down=down,
                merge="fusion_last" if last else "csp",
                split="slice",
                gamma=CSP_GAMMA,
                transition_main=(ConvSpec(main_out, 1, act=ACT),),
                transition_out=transition,
            )
        else:
            spec = StageSpec("dense", depth, args, down=down, merge="plain", transition_out=transition)
        stages.append(spec)
        ch = out // 2
    return BackboneSpec(STEM, tuple(stages), FEATURES, classifier="pool_conv")


BACKBONES = {
    "densenet201": lambda: densenet(DENSENET201, elastic=False, csp=False),
    "cspdensenet201": lambda: densenet(DENSENET201, elastic=False, csp=True),
    "densenet201-elastic": lambda: densenet(ELASTIC201, elastic=True, csp=False),
    "cspdensenet201-elastic": lambda: densenet(DENSENET201, elastic=True, csp=True),
}
