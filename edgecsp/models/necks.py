"""Necks that turn backbone maps into per-level prediction maps: EFM and PANet with SPP.

Each neck ends with the 1x1 prediction convolutions (``outputs`` channels per level), because
Darknet interleaves them with the neck's layers and we keep Darknet's layer order so its
weights load by order.
"""

from __future__ import annotations

import torch
from torch import nn

from edgecsp.models.layers import SAM, SPP, ConvBNAct, ConvSpec, Maxout, conv_sequence


def _pred(in_ch: int, outputs: int) -> ConvBNAct:
    return ConvBNAct(in_ch, ConvSpec(outputs, 1, act="linear", bn=False))


def _five(in_ch: int, w: int, act: str) -> tuple[nn.Sequential, int]:
    """YOLOv3/v4 neck's 1-3-1-3-1 convolution set."""
    specs = [ConvSpec(w, 1, act=act), ConvSpec(2 * w, 3, act=act)] * 2 + [ConvSpec(w, 1, act=act)]
    return conv_sequence(in_ch, specs)


class PANetSPP(nn.Module):
    """The paper's GPU-detector neck (YOLOv4's): SPP on the coarsest map, top-down FPN then a
    bottom-up path aggregation, one YOLO output per level (finest first, like the cfgs).

    ``width`` is the coarsest level's channel count (512 in the published cfgs); each finer level
    halves it.
    """

    def __init__(self, in_channels: list[int], outputs: int, width: int = 512, act: str = "leaky",
                 spp_sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        levels = len(in_channels)
        widths = [width // 2 ** (levels - 1 - i) for i in range(levels)]  # finest .. coarsest
        c = lambda o, k=1, s=1: ConvSpec(o, k, s, act=act)
        self.top_pre, ch = conv_sequence(in_channels[-1], [c(width), c(2 * width, 3), c(width)])
        self.spp = SPP(spp_sizes)
        self.top_post, ch = conv_sequence(ch * (len(spp_sizes) + 1), [c(width), c(2 * width, 3), c(width)])
        # Top-down, from the second-coarsest level to the finest.
        self.td = nn.ModuleList()
        for i in reversed(range(levels - 1)):
            w = widths[i]
            step = nn.Module()
            step.reduce = ConvBNAct(ch, c(w))
            step.lateral = ConvBNAct(in_channels[i], c(w))
            step.convs, ch = _five(2 * w, w, act)
            self.td.append(step)
        self.fine_head, _ = conv_sequence(ch, [c(2 * widths[0], 3)])
        self.fine_pred = _pred(2 * widths[0], outputs)
        # Bottom-up, from the second-finest level to the coarsest.
        self.bu = nn.ModuleList()
        for i in range(1, levels):
            w = widths[i]
            step = nn.Module()
            step.down = ConvBNAct(ch, c(w, 3, 2))
            step.convs, ch = _five(2 * w, w, act)
            step.head = ConvBNAct(ch, c(2 * w, 3))
            step.pred = _pred(2 * w, outputs)
            self.bu.append(step)

    def prediction_convs(self) -> list[ConvBNAct]:
        return [self.fine_pred] + [step.pred for step in self.bu]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        x = self.top_post(self.spp(self.top_pre(feats[-1])))
        td_outs = [x]  # coarsest first
        for step, feat in zip(self.td, reversed(feats[:-1])):
            up = nn.functional.interpolate(step.reduce(x), scale_factor=2.0, mode="nearest")
            x = step.convs(torch.cat([step.lateral(feat), up], dim=1))
            td_outs.append(x)
        outs = [self.fine_pred(self.fine_head(x))]
        for step, skip in zip(self.bu, reversed(td_outs[:-1])):
            x = step.convs(torch.cat([step.down(x), skip], dim=1))
            outs.append(step.pred(step.head(x)))
        return outs


class EFM(nn.Module):
    """Exact Fusion Model: each output level fuses the pyramid levels whose receptive fields fit
    its anchors (itself and its two neighbours), then Maxout halves the fused channels so the
    maps the heads read cost half the memory traffic.

    Optional SPP on the coarsest input and SAM on each fused map (the paper's EFM(SAM) design).
    """

    def __init__(self, in_channels: list[int], outputs: int, width: int = 128, act: str = "leaky",
                 spp: bool = False, sam: bool = True, maxout_groups: int = 2):
        super().__init__()
        levels = len(in_channels)
        c = lambda o, k=1, s=1: ConvSpec(o, k, s, act=act)
        self.spp = None
        coarse_in = in_channels[-1]
        if spp:
            self.spp_pre = ConvBNAct(coarse_in, c(width))
            self.spp = SPP()
            coarse_in = 4 * width
        lat_in = list(in_channels[:-1]) + [coarse_in]
        self.lateral = nn.ModuleList(ConvBNAct(ch, c(width)) for ch in lat_in)
        # Downsampling a finer neighbour: a stride-2 3x3 conv learns what to keep.
        self.down = nn.ModuleList(ConvBNAct(width, c(width, 3, 2)) for _ in range(levels - 1))
        self.fuse = nn.ModuleList()
        for i in range(levels):
            n_inputs = 1 + (i > 0) + (i < levels - 1)
            self.fuse.append(nn.Sequential(
                ConvBNAct(n_inputs * width, c(maxout_groups * width)),
                Maxout(maxout_groups),
                ConvBNAct(width, c(width, 3)),
                SAM(width) if sam else nn.Identity(),
            ))
        self.pred = nn.ModuleList(_pred(width, outputs) for _ in range(levels))

    def prediction_convs(self) -> list[ConvBNAct]:
        return list(self.pred)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        feats = list(feats)
        if self.spp is not None:
            feats[-1] = self.spp(self.spp_pre(feats[-1]))
        p = [lat(f) for lat, f in zip(self.lateral, feats)]
        outs = []
        for i, fuse in enumerate(self.fuse):
            parts = [p[i]]
            if i > 0:
                parts.insert(0, self.down[i - 1](p[i - 1]))
            if i < len(p) - 1:
                parts.append(nn.functional.interpolate(p[i + 1], scale_factor=2.0, mode="nearest"))
            outs.append(self.pred[i](fuse(torch.cat(parts, dim=1))))
        return outs
