"""Basic layers shared by every model: conv-BN-activation, Maxout, SPP and SAM.

Every convolution is a ``ConvBNAct`` so that a model's Conv2d/BatchNorm2d pairs appear in
``modules()`` order exactly as Darknet lays out a cfg's convolutional layers; weights in
Darknet's format then load by order alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from edgecsp.errors import EdgeCSPError


class Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(nn.functional.softplus(x))


# Darknet's activation names -> PyTorch modules (leaky uses Darknet's 0.1 slope).
_ACTIVATIONS = {
    "linear": nn.Identity,
    "leaky": lambda: nn.LeakyReLU(0.1),
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "mish": Mish,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "logistic": nn.Sigmoid,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise EdgeCSPError(
            f"unknown activation {name!r}; use one of {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


@dataclass(frozen=True)
class ConvSpec:
    """One convolution as data: what a Darknet [convolutional] section says."""

    out: int
    k: int = 1
    s: int = 1
    groups: int = 1
    act: str = "leaky"
    bn: bool = True
    pad: int | None = None  # None: k // 2, Darknet's pad=1


@dataclass(frozen=True)
class Pool:
    """A pooling layer as data (Darknet's [maxpool] with size and stride; avg for DenseNet-style transitions)."""

    k: int = 2
    s: int = 2
    kind: str = "max"


class ConvBNAct(nn.Module):
    def __init__(self, in_ch: int, spec: ConvSpec):
        super().__init__()
        if in_ch % spec.groups or spec.out % spec.groups:
            raise EdgeCSPError(
                f"a conv with groups={spec.groups} needs input ({in_ch}) and output ({spec.out}) "
                "channels divisible by it; pick a width multiplier that keeps them divisible"
            )
        pad = spec.k // 2 if spec.pad is None else spec.pad
        self.conv = nn.Conv2d(
            in_ch, spec.out, spec.k, spec.s, pad, groups=spec.groups, bias=not spec.bn
        )
        self.bn = nn.BatchNorm2d(spec.out, eps=1e-5, momentum=0.03) if spec.bn else nn.Identity()
        self.act = activation(spec.act)
        self.out_channels = spec.out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def pool_layer(item: Pool) -> nn.Module:
    if item.kind == "max":
        # Darknet pads size-1 in total, (size-1)//2 before and the rest after.
        before = (item.k - 1) // 2
        after = item.k - 1 - before
        if before == after:
            return nn.MaxPool2d(item.k, item.s, padding=before)
        if item.k == item.s == 2:
            # The extra pixel after is ceil mode: ceil(w/2), like a 3x3/2 conv beside it.
            return nn.MaxPool2d(2, 2, ceil_mode=True)
        return nn.Sequential(nn.ConstantPad2d((before, after, before, after), float("-inf")), nn.MaxPool2d(item.k, item.s))
    if item.kind == "avg":
        return nn.AvgPool2d(item.k, item.s)
    raise EdgeCSPError(f"unknown pool kind {item.kind!r}; use 'max' or 'avg'")


def make_layer(in_ch: int, item: ConvSpec | Pool) -> tuple[nn.Module, int]:
    """One conv or pooling layer from its spec; returns the module and its output channels."""
    if isinstance(item, Pool):
        return pool_layer(item), in_ch
    return ConvBNAct(in_ch, item), item.out


def conv_sequence(in_ch: int, specs: Sequence[ConvSpec | Pool]) -> tuple[nn.Sequential, int]:
    """Chain convolutions (and pooling layers); returns the module and its output channel count."""
    layers = []
    for spec in specs:
        layer, in_ch = make_layer(in_ch, spec)
        layers.append(layer)
    return nn.Sequential(*layers), in_ch


class Maxout(nn.Module):
    """Channel compression by element-wise max over ``groups`` channel groups (EFM).

    The EFM uses it to shrink the fused feature pyramid (C -> C / groups) without any weights,
    which cuts the memory traffic of the maps that the heads read.
    """

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c % self.groups:
            raise EdgeCSPError(f"Maxout over {self.groups} groups needs channels divisible by it, got {c}")
        # Groups are contiguous channel blocks, so the op is a max over chunks (ONNX-friendly).
        chunks = torch.chunk(x, self.groups, dim=1)
        out = chunks[0]
        for chunk in chunks[1:]:
            out = torch.maximum(out, chunk)
        return out


class SPP(nn.Module):
    """Spatial pyramid pooling as Darknet writes it: max-pools of several sizes, stride 1, concat.

    Darknet's route order is [largest pool, ..., smallest pool, input].
    """

    def __init__(self, sizes: tuple[int, ...] = (5, 9, 13)):
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in sorted(sizes, reverse=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([pool(x) for pool in self.pools] + [x], dim=1)


class SAM(nn.Module):
    """Spatial attention module (the paper's EFM(SAM) edge design, YOLOv4's point-wise form).

    A conv with sigmoid gives an attention map the same shape as the input; the output is
    input * attention. Cheaper than SPP on edge devices, which is why the paper picks it.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.attention = ConvBNAct(channels, ConvSpec(channels, 1, act="logistic", bn=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)
