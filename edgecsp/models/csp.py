"""The cross stage partial stage of the CSPNet paper, as one module driven by a ``StageSpec``.

A stage optionally downsamples, splits its base feature map into two parts, runs one part
through the stage's blocks and sends the other around them, then merges the two with
partial transition layers. The paper's three merge strategies:

- ``csp``: transition on the block path, concatenate, transition again (the paper's choice);
- ``fusion_first``: concatenate the two parts, then one transition (reuses most gradient, cheapest
  but loses accuracy);
- ``fusion_last``: transition on the block path only, then concatenate;
- ``plain`` is the non-CSP counterpart: no split, blocks then transition.

The split is either convolutions (Darknet's CSP cfgs; an empty ``main`` feeds the blocks the
stage input itself) or a channel slice where ``gamma`` is the fraction of channels that goes
through the blocks (the paper's partial ratio). Any conv list may hold ``Pool`` items too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from edgecsp.errors import EdgeCSPError
from edgecsp.models.blocks import build_blocks
from edgecsp.models.layers import ConvSpec, Pool, conv_sequence

MERGES = ("csp", "fusion_first", "fusion_last", "plain")
SPLITS = ("conv", "slice")


@dataclass(frozen=True)
class StageSpec:
    block: str
    depth: int
    block_args: dict = field(default_factory=dict)
    down: tuple[ConvSpec | Pool, ...] = ()  # before the split (usually the stride-2 conv)
    merge: str = "csp"
    split: str = "conv"
    gamma: float = 0.5
    cross: tuple[ConvSpec | Pool, ...] = ()  # the part that goes around the blocks (split="conv")
    main: tuple[ConvSpec | Pool, ...] = ()  # the part that goes through the blocks (split="conv")
    transition_main: tuple[ConvSpec | Pool, ...] = ()  # partial transition on the block path
    transition_out: tuple[ConvSpec | Pool, ...] = ()  # transition after the concatenation
    first_args: dict = field(default_factory=dict)  # block_args overrides for the first block (stride)
    then: tuple[tuple[int, dict], ...] = ()  # more runs (depth, block_args overrides) after ``depth``


class CSPStage(nn.Module):
    def __init__(self, in_ch: int, spec: StageSpec):
        super().__init__()
        _check(spec)
        self.spec = spec
        # Registration order = Darknet's layer order: down, cross, main, blocks, transitions.
        self.down, ch = conv_sequence(in_ch, spec.down)
        self.slice_at = 0
        if spec.merge == "plain":
            cross_ch, main_ch = 0, ch
            self.cross = nn.Sequential()
            self.main, main_ch = conv_sequence(ch, spec.main)
        elif spec.split == "conv":
            self.cross, cross_ch = conv_sequence(ch, spec.cross)
            self.main, main_ch = conv_sequence(ch, spec.main)
        else:
            main_ch = max(1, round(ch * spec.gamma))
            cross_ch = ch - main_ch
            self.slice_at = cross_ch
            self.cross, self.main = nn.Sequential(), nn.Sequential()
        self.blocks, block_ch = build_blocks(
            spec.block, main_ch, spec.depth, dict(spec.block_args), dict(spec.first_args), spec.then
        )
        self.transition_main, block_ch = conv_sequence(block_ch, spec.transition_main)
        merged = block_ch + cross_ch
        self.transition_out, self.out_channels = conv_sequence(merged, spec.transition_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        if self.spec.merge == "plain":
            return self.transition_out(self.transition_main(self.blocks(self.main(x))))
        if self.slice_at:
            cross, main = x[:, : self.slice_at], x[:, self.slice_at :]
        else:
            cross, main = self.cross(x), self.main(x)
        main = self.transition_main(self.blocks(main))
        # Darknet's CSP cfgs concatenate [block path, cross path]; keep that order.
        return self.transition_out(torch.cat([main, cross], dim=1))


def _check(spec: StageSpec) -> None:
    if spec.merge not in MERGES:
        raise EdgeCSPError(f"unknown CSP merge {spec.merge!r}; use one of {', '.join(MERGES)}")
    if spec.split not in SPLITS:
        raise EdgeCSPError(f"unknown CSP split {spec.split!r}; use one of {', '.join(SPLITS)}")
    if not 0.0 < spec.gamma < 1.0:
        raise EdgeCSPError(f"CSP partial ratio gamma must be in (0, 1), got {spec.gamma}")
    if spec.merge == "fusion_first" and spec.transition_main:
        raise EdgeCSPError("a 'fusion_first' stage concatenates before any transition: drop transition_main")
    if spec.merge == "fusion_last" and spec.transition_out:
        raise EdgeCSPError("a 'fusion_last' stage ends with the concatenation: drop transition_out")
    if spec.merge != "plain" and spec.split == "conv" and not spec.cross:
        raise EdgeCSPError("a CSP stage with split='conv' needs cross convolutions (main may be empty)")
    if spec.depth < 0 or any(d < 0 for d, _ in spec.then):
        raise EdgeCSPError(f"a stage's depth must be >= 0, got {spec.depth}")


# --- width / depth multipliers -------------------------------------------------------------

_CHANNEL_ARGS = ("mid", "out", "expand", "dw_out", "growth", "bottleneck")


def make_divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(round(value / divisor)) * divisor)


def scale_conv(spec: ConvSpec | Pool, width: float, divisor: int = 8) -> ConvSpec | Pool:
    if width == 1.0 or isinstance(spec, Pool):
        return spec
    groups = spec.groups
    if groups > 1 and spec.out % groups == 0 and spec.out // groups <= 2:
        # Depthwise (with a channel multiplier of 1 or 2): the group count follows the width
        # of its input, which was scaled the same way, and the multiplier stays.
        groups = make_divisible(groups * width, divisor)
        return replace(spec, out=groups * (spec.out // spec.groups), groups=groups)
    # Grouped (ResNeXt): keep the cardinality, scale the width per group.
    out = make_divisible(spec.out * width, max(divisor, groups))
    return replace(spec, out=out)


def scale_stage(spec: StageSpec, width: float = 1.0, depth: float = 1.0) -> StageSpec:
    """One line turns a big config into a small edge variant: channels x width, blocks x depth."""
    if width == 1.0 and depth == 1.0:
        return spec
    convs = lambda specs: tuple(scale_conv(s, width) for s in specs)
    groups = spec.block_args.get("groups", 1)

    def scale_args(block_args: dict) -> dict:
        return {
            k: (make_divisible(v * width, max(8, groups)) if k in _CHANNEL_ARGS and v else v)
            for k, v in block_args.items()
        }

    # A stage with blocks keeps at least one; a stage without (a stem-like stage) keeps none.
    scale_depth = lambda d: max(1, round(d * depth)) if d else 0
    return replace(
        spec,
        depth=scale_depth(spec.depth),
        block_args=scale_args(spec.block_args),
        first_args=scale_args(spec.first_args),
        then=tuple((scale_depth(d), scale_args(a)) for d, a in spec.then),
        down=convs(spec.down),
        cross=convs(spec.cross),
        main=convs(spec.main),
        transition_main=convs(spec.transition_main),
        transition_out=convs(spec.transition_out),
    )
