"""The blocks a CSP stage runs on its block path, one builder per block type.

Each builder takes the input channel count and keyword arguments from a stage config and
returns ``(module, out_channels)``, so stage code never needs to know which block it holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgecsp.darknet.model import darknet_add
from edgecsp.errors import EdgeCSPError
from edgecsp.models.layers import ConvBNAct, ConvSpec, activation, conv_sequence


class Residual(nn.Module):
    """convs, then add the block input, then an activation (ResNet: leaky; DarkNet: linear).

    A block whose convs change the size or the width (ResNet-50's cfg's stride-2 blocks) adds its
    input by Darknet's rule (darknet_add), as the cfgs were trained: no projection conv.
    """

    def __init__(self, in_ch: int, convs: list[ConvSpec], post_act: str = "linear"):
        super().__init__()
        self.body, self.out_channels = conv_sequence(in_ch, convs)
        self.post_act = activation(post_act)
        # Decided once: a plain add keeps exported graphs free of shape checks.
        self.plain_add = in_ch == self.out_channels and all(c.s == 1 for c in convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.post_act(y + x if self.plain_add else darknet_add(y, x))


class DenseLayer(nn.Module):
    """DenseNet layer: bottleneck 1x1 then 3x3 growth, output concatenated to the input."""

    def __init__(self, in_ch: int, growth: int, bottleneck: int, act: str):
        super().__init__()
        self.body, _ = conv_sequence(in_ch, [ConvSpec(bottleneck, 1, act=act), ConvSpec(growth, 3, act=act)])
        self.out_channels = in_ch + growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class ElasticDenseLayer(nn.Module):
    """DenseNet layer with Elastic's two scales (Wang et al., CVPR 2019).

    The bottleneck is split in two branches of ``bottleneck // 2``: one at full resolution, one
    on a ``scale``x average-pooled input whose growth map is upsampled back (bilinear); the two
    growth maps are summed. ``scale=1`` keeps both at full resolution (Elastic's last stage,
    where the map is already 7x7 at 224).
    """

    def __init__(self, in_ch: int, growth: int, bottleneck: int, act: str, scale: int = 2):
        super().__init__()
        half = bottleneck // 2
        convs = [ConvSpec(half, 1, act=act), ConvSpec(growth, 3, act=act)]
        self.full, _ = conv_sequence(in_ch, convs)
        self.low, _ = conv_sequence(in_ch, convs)
        self.scale = scale
        self.out_channels = in_ch + growth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            low = self.low(x)
        else:
            low = self.low(nn.functional.avg_pool2d(x, self.scale, self.scale))
            # Upsample to x's own size, so odd map sizes work too.
            low = nn.functional.interpolate(low, size=x.shape[2:], mode="bilinear", align_corners=False)
        return torch.cat([x, self.full(x) + low], dim=1)


class TwoWayDenseLayer(nn.Module):
    """PeleeNet's two-way dense layer: a 3x3 branch and a 3x3-3x3 branch, both concatenated."""

    def __init__(self, in_ch: int, growth: int, bottleneck: int, act: str):
        super().__init__()
        half = growth // 2
        self.branch1, _ = conv_sequence(in_ch, [ConvSpec(bottleneck, 1, act=act), ConvSpec(half, 3, act=act)])
        self.branch2, _ = conv_sequence(
            in_ch, [ConvSpec(bottleneck, 1, act=act), ConvSpec(half, 3, act=act), ConvSpec(half, 3, act=act)]
        )
        self.out_channels = in_ch + 2 * half

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.branch1(x), self.branch2(x)], dim=1)


def _resnet(
    in_ch: int, mid: int, out: int, groups: int = 1, act: str = "leaky", stride: int = 1
) -> tuple[nn.Module, int]:
    # stride sits on the 3x3 (ResNet v1.5 / Darknet cfgs); the shortcut then samples its input.
    convs = [
        ConvSpec(mid, 1, act=act),
        ConvSpec(mid, 3, s=stride, groups=groups, act=act),
        ConvSpec(out, 1, act="linear"),
    ]
    block = Residual(in_ch, convs, post_act=act)
    return block, block.out_channels


def _resnext(
    in_ch: int, mid: int, out: int, groups: int = 32, act: str = "leaky", stride: int = 1
) -> tuple[nn.Module, int]:
    return _resnet(in_ch, mid, out, groups, act, stride)


def _darknet(in_ch: int, mid: int, act: str = "leaky") -> tuple[nn.Module, int]:
    block = Residual(in_ch, [ConvSpec(mid, 1, act=act), ConvSpec(in_ch, 3, act=act)])
    return block, in_ch


def _inverted(
    in_ch: int,
    expand: int | None = None,
    out: int | None = None,
    dw_out: int | None = None,
    act: str = "relu6",
    t: float | None = None,
    mult: int = 1,
    stride: int = 1,
) -> tuple[nn.Module, int]:
    """MobileNet-v2 block: 1x1 expand, 3x3 depthwise (stride here), 1x1 linear projection.

    ``expand`` is absolute, or ``t`` x the block's input (MobileNet's expansion ratio, so a stage
    of blocks whose input changes needs one ratio). ``mult`` > 1 (or ``dw_out`` > expand) is
    Darknet's grouped 3x3 with a channel multiplier (CSPMobileNet-v2's cfg). A shortcut is added
    when the block keeps shape, as the cfgs do.
    """
    if expand is None and t is not None:
        expand = max(1, round(in_ch * t))
    if out is None or expand is None:
        raise EdgeCSPError("an 'inverted' block needs out= and expand= (or the ratio t=)")
    dw_out = dw_out or expand * mult
    convs = [
        ConvSpec(expand, 1, act=act, pad=0),
        ConvSpec(dw_out, 3, s=stride, groups=expand, act=act),
        ConvSpec(out, 1, act="linear", pad=0),
    ]
    if in_ch == out and stride == 1:
        block: nn.Module = Residual(in_ch, convs)
        return block, out
    seq, ch = conv_sequence(in_ch, convs)
    return seq, ch


def _dense(
    in_ch: int, growth: int, bottleneck: int, act: str = "relu", elastic: int = 0
) -> tuple[nn.Module, int]:
    # elastic: 0 plain DenseNet layer; else Elastic's two-scale layer, low branch at 1/elastic.
    layer: ElasticDenseLayer | DenseLayer = (
        ElasticDenseLayer(in_ch, growth, bottleneck, act, elastic) if elastic else DenseLayer(in_ch, growth, bottleneck, act)
    )
    return layer, in_ch + growth


def _two_way_dense(in_ch: int, growth: int, bottleneck: int, act: str = "relu") -> tuple[nn.Module, int]:
    layer = TwoWayDenseLayer(in_ch, growth, bottleneck, act)
    return layer, layer.out_channels


BLOCKS: dict[str, Callable[..., tuple[nn.Module, int]]] = {
    "resnet": _resnet,
    "resnext": _resnext,
    "darknet": _darknet,
    "inverted": _inverted,
    "dense": _dense,
    "pelee": _two_way_dense,
}


def build_blocks(
    kind: str,
    in_ch: int,
    depth: int,
    args: dict,
    first_args: dict | None = None,
    then: tuple[tuple[int, dict], ...] = (),
) -> tuple[nn.Sequential, int]:
    """``depth`` blocks of one type; ``args`` are the builder's keyword arguments.

    ``first_args`` override ``args`` for the first block (e.g. its stride); ``then`` appends
    further runs ``(depth, overrides)`` of the same type (a stage whose width changes midway,
    as MobileNet-v2's rows do).
    """
    if kind not in BLOCKS:
        raise EdgeCSPError(f"unknown block type {kind!r}; known: {', '.join(BLOCKS)}")
    runs = [(depth, dict(args))] + [(d, {**args, **extra}) for d, extra in then]
    blocks: list[nn.Module] = []
    for run_depth, run_args in runs:
        for _ in range(run_depth):
            block_args = {**run_args, **first_args} if first_args and not blocks else run_args
            try:
                block, in_ch = BLOCKS[kind](in_ch, **block_args)
            except TypeError as err:
                raise EdgeCSPError(f"bad arguments {sorted(block_args)} for a {kind!r} block: {err}") from None
            blocks.append(block)
    return nn.Sequential(*blocks), in_ch


__all__ = ["BLOCKS", "ConvBNAct", "build_blocks", "darknet_add"]
