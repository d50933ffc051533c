"""PeleeNet (Wang et al., NeurIPS 2018) and CSPPeleeNet, with the paper's partial-transition variants.

No cfg was published, so these follow the PeleeNet paper: a stem block (3x3/2 conv, then a
1x1-3x3/2 branch beside a 2x2 max-pool, concatenated, 1x1), four stages of two-way dense layers
(3/4/8/6 layers, growth 32, bottleneck width 1/2/4/4 x 16 per branch), each closed by a 1x1
transition that keeps the width (128/256/512/704) and, between stages, a 2x2 average pool.
Activation is leaky ReLU, as the CSPNet reference trained its PeleeNet baseline.

CSPPeleeNet slices each dense stage's input (gamma = 0.5): half goes through the dense layers,
half around them; ``merge`` picks the paper's partial transition: "csp" (transition on the
dense path, concatenate, transition), "fusion_first" (concatenate, transition) or
"fusion_last" (transition on the dense path, concatenate). All keep PeleeNet's stage widths.
Where a transition follows the concatenation it runs after the stage's 2x2 pool: that is what
reproduces the reference's CSPPeleeNet figures (2.83M, 0.888 BFLOPs, -13%); before the pool,
the same network costs 1.12 BFLOPs (+10%). Those stages' outputs are then at the next stride.
"""

from __future__ import annotations

from edgecsp.models.backbone import BackboneSpec
from edgecsp.models.csp import StageSpec
from edgecsp.models.layers import ConvSpec, Pool

ACT = "leaky"
STEM_WIDTH = 32
DEPTHS = (3, 4, 8, 6)
BOTTLENECK = (1, 2, 4, 4)  # x half the growth rate, per branch
GROWTH = 32
FEATURES = (2, 3, 4)  # stage 0 is the stem block; strides 8, 16, 32
FEATURES_POOLED = (1, 2, 4)  # when stages end with pool + transition: strides 8, 16, 32


def _stem() -> StageSpec:
    # The stem block as a two-path stage without blocks: conv branch and pool, then a 1x1.
    w = STEM_WIDTH
    return StageSpec(
        "pelee",
        0,
        down=(ConvSpec(w, 3, 2, act=ACT),),
        cross=(Pool(2, 2),),
        main=(ConvSpec(w // 2, 1, act=ACT), ConvSpec(w, 3, 2, act=ACT)),
        transition_out=(ConvSpec(w, 1, act=ACT),),
    )


def peleenet(merge: str = "plain", gamma: float = 0.5) -> BackboneSpec:
    pool_first = merge in ("csp", "fusion_first")  # a transition after the concatenation
    stages, ch = [_stem()], STEM_WIDTH
    for i, (depth, bw) in enumerate(zip(DEPTHS, BOTTLENECK)):
        args = {"growth": GROWTH, "bottleneck": bw * GROWTH // 2, "act": ACT}
        out = ch + depth * GROWTH  # concatenation width, also the transition's
        main_in = ch if merge == "plain" else max(1, round(ch * gamma))
        main_out = main_in + depth * GROWTH  # dense path width; its partial transition keeps it
        pool = (Pool(2, 2, "avg"),)
        last = i == len(DEPTHS) - 1
        stages.append(
            StageSpec(
                "pelee",
                depth,
                args,
                down=pool if i and not pool_first else (),
                merge=merge,
                split="slice",
                gamma=gamma,
                transition_main=(ConvSpec(main_out, 1, act=ACT),) if merge in ("csp", "fusion_last") else (),
                transition_out=(
                    ()
                    if merge == "fusion_last"
                    else (pool if pool_first and not last else ()) + (ConvSpec(out, 1, act=ACT),)
                ),
            )
        )
        ch = out
    return BackboneSpec((), tuple(stages), FEATURES_POOLED if pool_first else FEATURES, classifier="pool_conv")


BACKBONES = {
    "peleenet": peleenet,
    "csppeleenet": lambda: peleenet("csp"),
    "csppeleenet-fusion-first": lambda: peleenet("fusion_first"),
    "csppeleenet-fusion-last": lambda: peleenet("fusion_last"),
}
