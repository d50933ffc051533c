"""Build a PyTorch module from a Darknet cfg that computes what Darknet computes at inference.

Formulas follow Darknet (AlexeyAB / hank-ai branch): activation constants, BatchNorm with
eps 1e-5 (what Darknet uses when it fuses BN for inference), pooling windows offset by
padding/2 with the rest on the right/bottom. Conv/BatchNorm/Linear modules appear in
``modules()`` in cfg order, which is the order of a Darknet .weights file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

from edgecsp.darknet.cfg import DarknetCfg, Section, parse_cfg
from edgecsp.darknet.weights import load_darknet_weights_into, save_darknet_weights_from
from edgecsp.resources import BYTES_PER_PARAM, BYTES_PER_VALUE, available_memory, gib

BN_EPS = 1e-5
# Limits checked before anything is allocated, so a cfg with a typo like filters=1000000000 or
# width=1000000 is refused instead of exhausting memory. They scale with the machine: a model
# is refused only when the memory available now cannot hold it (edgecsp.resources); the
# largest published detector (cspx-p7-mish, 276M parameters, 75M values per map at 1536) loads
# where a few GiB are free.


class DarknetActivation(nn.Module):
    """Darknet's activations by name; standard torch ops where they are identical."""

    NAMES = (
        "linear", "logistic", "loggy", "relu", "relu6", "elu", "selu", "gelu", "relie", "ramp",
        "leaky", "revleaky", "tanh", "plse", "stair", "hardtan", "lhtan", "swish", "mish",
        "hard_mish",
    )

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def extra_repr(self) -> str:
        return self.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.name
        if n == "linear":
            return x
        if n in ("leaky", "revleaky"):  # Darknet treats revleaky as leaky in forward
            return F.leaky_relu(x, 0.1)
        if n == "logistic":
            return torch.sigmoid(x)
        if n == "relu":
            return F.relu(x)
        if n == "relu6":
            return F.relu6(x)
        if n == "swish":
            return F.silu(x)
        if n == "mish":  # Darknet: x * tanh(softplus(x)), softplus threshold 20 as torch's
            return F.mish(x)
        if n == "tanh":
            return torch.tanh(x)
        if n == "elu":
            return F.elu(x)
        if n == "gelu":  # Darknet's tanh approximation (0.797885, 0.035677)
            return F.gelu(x, approximate="tanh")
        if n == "selu":  # Darknet's rounded constants, not torch's
            return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (torch.exp(x) - 1))
        if n == "loggy":
            return 2 * torch.sigmoid(x) - 1
        if n == "relie":
            return F.leaky_relu(x, 0.01)
        if n == "ramp":
            return F.relu(x) + 0.1 * x
        if n == "hardtan":
            return torch.clamp(x, -1, 1)
        if n == "lhtan":
            return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))
        if n == "plse":
            return torch.where(
                x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)
            )
        if n == "hard_mish":
            return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))
        if n == "stair":
            floor = torch.floor(x)
            half = torch.floor(x / 2)
            return torch.where(torch.remainder(floor, 2) == 0, half, x - floor + half)
        raise AssertionError(n)  # names are checked when the layer is built


class ConvLayer(nn.Module):
    """[convolutional]: Conv2d (bias only without BN), BatchNorm2d, activation."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, act: str):
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act = DarknetActivation(act)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class XnorConv2d(nn.Conv2d):
    """[convolutional] xnor=1 (XNOR-net), as Darknet computes it at inference.

    Darknet's inference path (fuse_conv_batchnorm, then the bit-packed GEMM of
    forward_convolutional_layer) gives, per filter f, mean|W_f| * sum(sign(W_f) * sign(x)), with
    sign(v) = +1 if v > 0 else -1 for weights and inputs alike, and the zero padding of the input
    packed as 0 bits, i.e. read as -1. BatchNorm after the conv equals Darknet's BN folded into the
    weights before binarizing (the sign and the mean absolute value both carry the BN scale).
    Training uses straight-through gradients (hardtanh for inputs, identity for weights), as
    Darknet's backward does.
    """

    def forward(self, x):
        w = self.weight
        scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)
        signs = (w > 0).to(w.dtype) * 2 - 1
        xb = (x > 0).to(x.dtype) * 2 - 1
        if self.training:
            clipped = x.clamp(-1, 1)
            xb = clipped + (xb - clipped).detach()
            signs = signs + (w - w.detach()) / scale.detach()  # gradient of sign*scale taken as identity
        pad_y, pad_x = self.padding  # type: ignore[misc]
        if pad_y or pad_x:
            xb = F.pad(xb, (pad_x, pad_x, pad_y, pad_y), value=-1.0)
        # +-1 times +-1 sums are whole numbers, exact in float32 in any summation order, as
        # Darknet's popcount is: a sum of exactly 0 stays 0 (and binarizes to -1 in the next xnor
        # layer) on every backend instead of becoming +-1e-8 depending on the order.
        out = F.conv2d(xb, signs, None, self.stride, 0, self.dilation, self.groups) * scale.view(1, -1, 1, 1)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class SharedConv2d(nn.Conv2d):
    """A convolution computed with another Conv2d's kernel and bias (Darknet's share_index).

    It owns no parameters, so state_dict, ``parameters()`` and a .weights file hold the kernel
    once (Darknet writes nothing for a shared layer); it is still a Conv2d to complexity counters
    and exporters, with its own stride, padding and dilation.
    """

    def __init__(self, source: nn.Conv2d, stride: tuple[int, int], padding: int, dilation: int):
        nn.Module.__init__(self)  # not Conv2d.__init__: that would create parameters of its own
        self.in_channels, self.out_channels = source.in_channels, source.out_channels
        self.kernel_size, self.groups = source.kernel_size, source.groups
        self.stride, self.padding, self.dilation = stride, (padding, padding), (dilation, dilation)
        self.transposed, self.output_padding, self.padding_mode = False, (0, 0), "zeros"
        self._source = (source,)  # a tuple, so the source is not registered (and counted) twice

    @property  # type: ignore[override]
    def weight(self):
        return self._source[0].weight

    @property  # type: ignore[override]
    def bias(self):
        return self._source[0].bias

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class SharedConvLayer(nn.Module):
    """[convolutional] share_index=N: layer N's kernel, bias and BatchNorm with this layer's
    stride, padding, dilation and activation (TridentNet's branches)."""

    def __init__(self, source: ConvLayer, stride: tuple[int, int], padding: int, dilation: int, act: str):
        super().__init__()
        self.conv = SharedConv2d(source.conv, stride, padding, dilation)
        self._source = (source,)
        self.act = DarknetActivation(act)

    @property
    def source(self) -> ConvLayer:
        return self._source[0]

    @property
    def bn(self):
        return self._source[0].bn

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class ConnectedLayer(nn.Module):
    """[connected]: flatten (C, H, W), Linear, optional BatchNorm1d, activation -> (N, out, 1, 1)."""

    def __init__(self, linear: nn.Linear, bn: nn.BatchNorm1d | None, act: str):
        super().__init__()
        self.linear = linear
        self.bn = bn
        self.act = DarknetActivation(act)

    def forward(self, x):
        x = self.linear(x.flatten(1))
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)[:, :, None, None]


class MaxPoolLayer(nn.MaxPool2d):
    """[maxpool]: windows start at -padding//2; padding defaults to size-1 in Darknet.

    A MaxPool2d subclass so generic tools (complexity counters, exporters) see a max-pool.
    """

    def __init__(self, size: int, stride_y: int, stride_x: int, padding: int):
        super().__init__(size, (stride_y, stride_x))
        self.before, self.after = padding // 2, padding - padding // 2

    def extra_repr(self) -> str:
        return f"size={self.kernel_size}, stride={self.stride}, darknet_padding={self.before + self.after}"

    def forward(self, x):
        if self.before == self.after and self.before <= self.kernel_size // 2:
            return F.max_pool2d(x, self.kernel_size, self.stride, padding=self.before)
        pad = (self.before, self.after, self.before, self.after)
        if max(self.before, self.after) < self.kernel_size:
            # Every window holds an in-image pixel, and the edge pixel it repeats is in that window:
            # the same maxima as -inf padding, without an infinite tensor that INT8 calibration
            # (min-max ranges, histograms) cannot quantize.
            return F.max_pool2d(F.pad(x, pad, mode="replicate"), self.kernel_size, self.stride)
        x = F.pad(x, pad, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)


class ChannelMaxout(nn.Module):
    """[maxpool] maxpool_depth=1 out_channels=N: output channel g is the max over input channels
    g, g+N, g+2N, ... at each pixel (Darknet's channel maxout; EFM's Maxout compression)."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}"

    def forward(self, x):
        n, c, h, w = x.shape
        return x.reshape(n, c // self.out_channels, self.out_channels, h, w).amax(1)


class LocalAvgPool(nn.Module):
    """[local_avgpool]: a windowed average like [maxpool]'s windows (offset by -padding/2), over
    the in-image pixels only, as Darknet counts them."""

    def __init__(self, size: int, stride_y: int, stride_x: int, padding: int):
        super().__init__()
        self.size, self.stride = size, (stride_y, stride_x)
        self.pad = (padding // 2, padding - padding // 2) * 2

    def forward(self, x):
        total = F.avg_pool2d(F.pad(x, self.pad), self.size, self.stride)
        count = F.avg_pool2d(F.pad(torch.ones_like(x[:, :1]), self.pad), self.size, self.stride)
        return total / count


class Reorg3dLayer(nn.Module):
    """[reorg3d]: space-to-depth by ``stride``; output channel (dy*s + dx)*C + c holds input
    channel c at pixel (y*s + dy, x*s + dx), Darknet's channel order (not pixel_unshuffle's)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.stride
        y = x.reshape(b, c, h // s, s, w // s, s).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(b, s * s * c, h // s, w // s)


class GlobalAvgPool(nn.AdaptiveAvgPool2d):
    """[avgpool]: Darknet's avgpool is always global."""

    def __init__(self):
        super().__init__(1)


class RouteLayer(nn.Module):
    """[route]: concatenate earlier outputs; with groups, keep slice group_id of each."""

    def __init__(self, sources: list[int], groups: int, group_id: int):
        super().__init__()
        self.sources, self.groups, self.group_id = tuple(sources), groups, group_id

    def forward(self, x, inputs):
        if self.groups > 1:
            parts = []
            for t in inputs:
                step = t.shape[1] // self.groups
                parts.append(t[:, self.group_id * step:(self.group_id + 1) * step])
            inputs = parts
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, 1)


class ShortcutLayer(nn.Module):
    """[shortcut]: add earlier outputs into the previous one, then activate.

    Darknet's rule for unequal shapes (the one the CSPNet-era cfgs were trained with, e.g.
    ResNet-50's parameter-free downsampling shortcuts): only the first min(C) channels are
    added; a larger ``from`` map is sampled every k-th pixel, a smaller one lands on every
    k-th pixel. The output keeps the previous layer's shape.
    """

    def __init__(self, sources: list[int], act: str):
        super().__init__()
        self.sources = tuple(sources)
        self.act = DarknetActivation(act)

    def forward(self, x, inputs):
        for t in inputs:
            x = darknet_add(x, t)
        return self.act(x)


def darknet_add(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x + t`` by Darknet's rule for unequal shapes (pjreddie's ``shortcut_cpu``, which trained
    the CSPNet-era cfgs): over the shared channels, ``x``'s extra ones kept; a larger ``t`` sampled
    every k-th pixel from the top-left, a smaller one added onto every k-th pixel. The result has
    ``x``'s shape. The one shortcut add of [shortcut] layers and of the zoo's residual blocks."""
    if x.shape == t.shape:
        return x + t
    (c2, h2, w2), (c1, h1, w1) = x.shape[1:], t.shape[1:]
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    c, h, w = min(c1, c2), min(h1, h2), min(w1, w2)
    add = t[:, :c, : h * stride : stride, : w * stride : stride]
    if sample == 1 and (h, w) == (h2, w2):
        return x + add if c == c2 else torch.cat([x[:, :c] + add, x[:, c:]], 1)
    x = x.clone()
    x[:, :c, : h * sample : sample, : w * sample : sample] += add
    return x


class UpsampleLayer(nn.Module):
    """[upsample]: nearest-neighbour by an integer stride, times ``scale``."""

    def __init__(self, stride: int, scale: float):
        super().__init__()
        self.stride, self.scale = stride, scale

    def forward(self, x):
        x = F.interpolate(x, scale_factor=self.stride, mode="nearest")
        return x if self.scale == 1 else x * self.scale


class YoloLayer(nn.Module):
    """[yolo]: passes its raw input through; the model collects it as a detector output."""

    def __init__(self, mask, anchors, classes: int, scale_x_y: float, new_coords: int):
        super().__init__()
        self.mask, self.anchors, self.classes = list(mask), list(anchors), classes
        self.scale_x_y, self.new_coords = scale_x_y, new_coords
        self.stride = 0  # input pixels per map cell, set by DarknetModel

    def extra_repr(self) -> str:
        return f"classes={self.classes}, anchors={self.anchors}"

    def forward(self, x):
        return x


class SamLayer(nn.Module):
    """[sam]: previous output times the ``from`` layer's output, element-wise."""

    def __init__(self, source: int, act: str):
        super().__init__()
        self.sources = (source,)
        self.act = DarknetActivation(act)

    def forward(self, x, inputs):
        return self.act(x * inputs[0])


class ScaleChannelsLayer(nn.Module):
    """[scale_channels]: the ``from`` layer's output scaled by the previous (C,1,1) or (1,H,W)."""

    def __init__(self, source: int, act: str):
        super().__init__()
        self.sources = (source,)
        self.act = DarknetActivation(act)

    def forward(self, x, inputs):
        return self.act(inputs[0] * x)


class SoftmaxLayer(nn.Module):
    """[softmax]: over ``groups`` contiguous chunks of each image's output, or over channels."""

    def __init__(self, groups: int, temperature: float, spatial: bool):
        super().__init__()
        self.groups, self.temperature, self.spatial = groups, temperature, spatial

    def forward(self, x):
        x = x / self.temperature if self.temperature != 1 else x
        if self.spatial:
            return torch.softmax(x, 1)
        shape = x.shape
        return torch.softmax(x.reshape(shape[0], self.groups, -1), -1).reshape(shape)


class Identity(nn.Module):
    """[dropout] and [cost]: no effect at inference."""

    def forward(self, x):
        return x


class ReorgLayer(nn.Module):
    """[reorg] (YOLOv2's, Darknet's REORG_OLD): Darknet's own index shuffle, kept verbatim.

    Darknet views the (C, H, W) input buffer as (C/s^2, H*s, W*s) and writes a (C, H, W)
    space-to-depth of that view, then reads the buffer as (C*s^2, H/s, W/s). ``reverse``
    undoes it. This is not torch's pixel_unshuffle, which weights trained in Darknet need.
    """

    def __init__(self, stride: int, reverse: bool):
        super().__init__()
        self.stride, self.reverse = stride, reverse

    def forward(self, x):
        b, c, h, w = x.shape
        s = self.stride
        if self.reverse:
            y = x.reshape(b, s, s, c // (s * s), h, w).permute(0, 3, 4, 1, 5, 2)
            return y.reshape(b, c // (s * s), h * s, w * s)
        y = x.reshape(b, c // (s * s), h, s, w, s).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(b, c * s * s, h // s, w // s)


# ---------------------------------------------------------------------------------------------
# Building a model from parsed sections

Shape = Tuple[int, int, int]  # (C, H, W) of one image


@dataclass(frozen=True)
class LayerInfo:
    """Shape inference for one layer, computed at construction."""

    index: int
    type: str
    line: int
    out_shape: Shape
    sources: tuple[int, ...]


@dataclass
class _Context:
    """What a layer builder sees besides its input shape: earlier outputs and the parameter count."""

    shapes: list[Shape]
    modules: list[nn.Module] = field(default_factory=list)
    params: int = 0
    memory: int = field(default_factory=available_memory)

    def add_params(self, s: Section, count: int) -> None:
        self.params += count
        need = self.params * BYTES_PER_PARAM
        if need > self.memory:
            raise s.error(
                f"brings the model to {self.params:,} parameters, which need about {gib(need)} of memory; "
                f"this machine has {gib(self.memory)} available (free memory, or check filters=, size=, output=)"
            )


def _check_values(s: Section, shape: Shape, what: str, memory: int | None = None) -> None:
    c, h, w = shape
    memory = available_memory() if memory is None else memory
    need = c * h * w * BYTES_PER_VALUE * 2  # the map and the next layer's
    if need > memory:
        raise s.error(
            f"{what} would be {c} x {h} x {w} values per image, about {gib(need)} of memory; this machine "
            f"has {gib(memory)} available (use a smaller input size, fewer filters, or free memory)"
        )


_NOT_SUPPORTED_ACTIVATIONS = (
    "normalize_channels", "normalize_channels_softmax", "normalize_channels_softmax_maxval",
)


def _activation(s: Section, default: str) -> str:
    name = s.get_str("activation", default)
    if name in DarknetActivation.NAMES:
        return name
    if name in _NOT_SUPPORTED_ACTIVATIONS:
        raise s.error(f"activation={name} is not supported by edgecsp", "activation")
    raise s.error(
        f"unknown activation={name}; use one of {', '.join(DarknetActivation.NAMES)}", "activation"
    )


def _at_least(s: Section, key: str, default: int, low: int = 1) -> int:
    value = s.get_int(key, default)
    if value < low:
        raise s.error(f"{key}={value} must be at least {low}", key)
    return value


def _strides(s: Section) -> tuple[int, int]:
    stride = _at_least(s, "stride", 1)
    sx, sy = s.get_int("stride_x", -1), s.get_int("stride_y", -1)
    return (sy if sy >= 1 else stride), (sx if sx >= 1 else stride)


def _resolve(s: Section, key: str, count: int | None = None) -> list[int]:
    """Darknet layer references: negative counts back from this layer, others are absolute."""
    if not s.has(key):
        raise s.error(f"needs {key}=... (which earlier layers to use)")
    refs = s.get_ints(key, [])
    if count is not None and len(refs) != count:
        raise s.error(f"{key}={s.raw(key)} must name exactly {count} layer", key)
    out = []
    for ref in refs:
        target = s.index + ref if ref < 0 else ref
        if target < 0:
            raise s.error(
                f"{key}={s.raw(key)} points before the first layer (this is layer {s.index})", key
            )
        if target >= s.index:
            raise s.error(
                f"{key}={s.raw(key)} points at layer {target}, not an earlier one "
                f"(this is layer {s.index})", key
            )
        out.append(target)
    return out


def _conv(s: Section, shape: Shape, ctx: _Context):
    c, h, w = shape
    filters, size = _at_least(s, "filters", 1), _at_least(s, "size", 1)
    sy, sx = _strides(s)
    xnor = bool(s.get_int("xnor", 0))
    groups = 1 if xnor else _at_least(s, "groups", 1)  # Darknet ignores groups= on xnor layers
    dilation = _at_least(s, "dilation", 1) if size > 1 else 1  # Darknet ignores it for 1x1
    padding = size // 2 if s.get_int("pad", 0) else _at_least(s, "padding", 0, low=0)
    bn = bool(s.get_int("batch_normalize", 0) or s.get_int("cbn", 0))
    act = _activation(s, "logistic")  # Darknet's default when activation= is missing
    if c % groups or filters % groups:
        raise s.error(f"groups={groups} must divide both input channels ({c}) and filters ({filters})", "groups")
    span = dilation * (size - 1) + 1
    oh = (h + 2 * padding * dilation - span) // sy + 1  # Darknet/cuDNN pad by padding*dilation
    ow = (w + 2 * padding * dilation - span) // sx + 1
    if oh < 1 or ow < 1:
        raise s.error(f"input {h}x{w} is too small for size={size}; use a larger input size")
    _check_values(s, (c, h + 2 * padding * dilation, w + 2 * padding * dilation), "the padded input", ctx.memory)
    if s.has("share_index"):
        return _shared_conv(s, ctx, (c, filters, size, groups, bn, xnor), (sy, sx), padding, dilation, act), \
            (filters, oh, ow), ()
    if xnor and (sy != sx or dilation > 1):
        raise s.error("xnor=1 with unequal strides or dilation is not supported by edgecsp (Darknet runs "
                      "those through another, float path)", "xnor")
    if s.get_int("bin_output", 0):
        if not xnor:
            raise s.error("bin_output=1 needs xnor=1 (Darknet only reads it on xnor layers)", "bin_output")
        # Darknet's calculate_binary_weights makes such a layer's activation linear at inference
        # (its output is only binarized by the next xnor layer).
        act = "linear"
    ctx.add_params(s, filters * (c // groups) * size * size + (4 * filters if bn else filters))
    kind = XnorConv2d if xnor else nn.Conv2d
    conv = kind(c, filters, size, (sy, sx), padding * dilation, dilation, groups, bias=not bn)
    norm = nn.BatchNorm2d(filters, eps=BN_EPS) if bn else None
    return ConvLayer(conv, norm, act), (filters, oh, ow), ()


def _shared_conv(s: Section, ctx: _Context, spec, stride, padding: int, dilation: int, act: str):
    """[convolutional] share_index=N: layer N's kernel, bias and BatchNorm (all shared, as Darknet's
    make_convolutional_layer points them at layer N's arrays); N counts back from here if negative."""
    c, filters, size, groups, bn, xnor = spec
    ref = s.get_int("share_index", 0)
    target = ref if ref >= 0 else s.index + ref
    if not 0 <= target < s.index:
        raise s.error(f"share_index={ref} must name an earlier layer (this is layer {s.index})", "share_index")
    source = ctx.modules[target]
    if not isinstance(source, ConvLayer):
        raise s.error(f"share_index={ref} names layer {target}, which is not a [convolutional]", "share_index")
    if isinstance(source, SharedConvLayer):  # a share of a share uses the original's arrays, as in Darknet
        source = source.source
    conv = source.conv
    theirs = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.groups, source.bn is not None,
              isinstance(conv, XnorConv2d))
    if theirs != (c, filters, size, groups, bn, xnor):
        names = ("input channels", "filters", "size", "groups", "batch_normalize", "xnor")
        diff = ", ".join(f"{n} {a} vs {b}" for n, a, b in zip(names, (c, filters, size, groups, bn, xnor), theirs)
                         if a != b)
        raise s.error(f"share_index={ref}: layer {target} differs ({diff}); a shared layer needs the same "
                      "kernel shape and batch_normalize", "share_index")
    if xnor:
        raise s.error("xnor=1 together with share_index is not supported by edgecsp", "xnor")
    return SharedConvLayer(source, stride, padding * dilation, dilation, act)


def _maxpool(s: Section, shape: Shape, ctx: _Context):
    c, h, w = shape
    if s.get_int("maxpool_depth", 0):
        out = _at_least(s, "out_channels", 1)
        if c % out:
            raise s.error(f"out_channels={out} must divide the {c} input channels (channel maxout)", "out_channels")
        return ChannelMaxout(out), (out, h, w), ()
    size, sy, sx, padding, out = _pool_window(s, shape, ctx)
    return MaxPoolLayer(size, sy, sx, padding), out, ()


def _local_avgpool(s: Section, shape: Shape, ctx: _Context):
    size, sy, sx, padding, out = _pool_window(s, shape, ctx)
    return LocalAvgPool(size, sy, sx, padding), out, ()


def _pool_window(s: Section, shape: Shape, ctx: _Context) -> tuple[int, int, int, int, Shape]:
    """[maxpool] and [local_avgpool] windows: size, strides, Darknet's padding (default size-1)
    and the output shape, checked before anything is allocated."""
    c, h, w = shape
    sy, sx = _strides(s)
    size = _at_least(s, "size", s.get_int("stride", 1))
    padding = _at_least(s, "padding", size - 1, low=0)
    oh, ow = (h + padding - size) // sy + 1, (w + padding - size) // sx + 1
    if oh < 1 or ow < 1:
        raise s.error(f"input {h}x{w} is too small for size={size}; use a larger input size")
    _check_values(s, (c, h + padding, w + padding), "the padded input", ctx.memory)
    return size, sy, sx, padding, (c, oh, ow)


def _reorg3d(s: Section, shape: Shape, ctx: _Context):
    stride = _at_least(s, "stride", 1)
    c, h, w = shape
    if s.get_int("reverse", 0):
        raise s.error("reverse=1 is not supported by edgecsp for [reorg3d]", "reverse")
    if h % stride or w % stride:
        raise s.error(f"stride={stride} does not evenly divide the input {h}x{w}", "stride")
    return Reorg3dLayer(stride), (c * stride * stride, h // stride, w // stride), ()


def _avgpool(s: Section, shape: Shape, ctx: _Context):
    return GlobalAvgPool(), (shape[0], 1, 1), ()


def _route(s: Section, shape: Shape, ctx: _Context):
    sources = _resolve(s, "layers")
    groups = _at_least(s, "groups", 1)
    group_id = s.get_int("group_id", 0)
    if not 0 <= group_id < groups:
        raise s.error(f"group_id={group_id} must be in 0..{groups - 1}", "group_id")
    first = ctx.shapes[sources[0]]
    channels = 0
    for j in sources:
        c, h, w = ctx.shapes[j]
        if (h, w) != first[1:]:
            raise s.error(
                f"layers={s.raw('layers')} joins a {first[1]}x{first[2]} output with a {h}x{w} one "
                f"(layer {j}); route inputs must share height and width", "layers"
            )
        if c % groups:
            raise s.error(f"groups={groups} does not divide the {c} channels of layer {j}", "groups")
        channels += c // groups
    return RouteLayer(sources, groups, group_id), (channels, first[1], first[2]), tuple(sources)


def _shortcut(s: Section, shape: Shape, ctx: _Context):
    sources = _resolve(s, "from")
    _, h2, w2 = shape
    for j in sources:
        _, h1, w1 = ctx.shapes[j]
        stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
        if stride != max(h1 // h2, 1) or sample != max(h2 // h1, 1):
            raise s.error(
                f"from={s.raw('from')} adds a {h1}x{w1} output (layer {j}) to a {h2}x{w2} one; "
                "Darknet needs the same size ratio in height and width", "from"
            )
    return ShortcutLayer(sources, _activation(s, "linear")), shape, tuple(sources)


def _upsample(s: Section, shape: Shape, ctx: _Context):
    stride = s.get_int("stride", 2)
    if stride < 1:
        raise s.error(f"stride={stride} (downsampling) is not supported; use stride >= 1", "stride")
    c, h, w = shape
    return UpsampleLayer(stride, s.get_float("scale", 1.0)), (c, h * stride, w * stride), ()


def _yolo(s: Section, shape: Shape, ctx: _Context):
    classes, num = _at_least(s, "classes", 20), _at_least(s, "num", 1)
    mask = s.get_ints("mask", list(range(num)))
    anchors = s.get_floats("anchors", [])
    if len(anchors) % 2:
        raise s.error(f"anchors= has {len(anchors)} numbers, an odd count; anchors are width,height pairs "
                      "(a comma missing or one too many?)", "anchors")
    # Darknet reads at most num pairs into a num-pair buffer and does not check mask= against it: a
    # mask >= num reads past the buffer (cspx-p7-mish.cfg: num=16, 20 anchors, masks up to 19). The
    # anchors the cfg lists are explicit, so a mask is valid when it names a listed pair.
    for m in mask:
        if not 0 <= m < len(anchors) // 2:
            uses = f"mask={s.raw('mask')} uses" if s.has("mask") else f"without mask=, num={num} uses"
            raise s.error(f"{uses} anchor {m}, but anchors= lists {len(anchors) // 2} (numbered from 0)", "mask")
    expected = len(mask) * (classes + 5)
    if shape[0] != expected:
        raise s.error(
            f"the layer before has {shape[0]} filters but {len(mask)} masks x (classes={classes} + 5) "
            f"need {expected}; set filters={expected} there"
        )
    pairs = [(anchors[2 * m], anchors[2 * m + 1]) for m in mask]
    layer = YoloLayer(mask, pairs, classes, s.get_float("scale_x_y", 1.0), s.get_int("new_coords", 0))
    return layer, shape, ()


def _sam(s: Section, shape: Shape, ctx: _Context):
    (j,) = _resolve(s, "from", count=1)
    if ctx.shapes[j] != shape:
        raise s.error(f"from={s.raw('from')} has shape {ctx.shapes[j]} but the input is {shape}; they must match", "from")
    return SamLayer(j, _activation(s, "linear")), shape, (j,)


def _scale_channels(s: Section, shape: Shape, ctx: _Context):
    (j,) = _resolve(s, "from", count=1)
    if s.get_int("scale_wh", 0):
        raise s.error("scale_wh=1 is not supported by edgecsp", "scale_wh")
    if shape != (ctx.shapes[j][0], 1, 1):
        raise s.error(
            f"the input {shape} must be ({ctx.shapes[j][0]}, 1, 1) to scale the channels of layer {j}", "from"
        )
    return ScaleChannelsLayer(j, _activation(s, "linear")), ctx.shapes[j], (j,)


def _softmax(s: Section, shape: Shape, ctx: _Context):
    groups = _at_least(s, "groups", 1)
    c, h, w = shape
    if (c * h * w) % groups:
        raise s.error(f"groups={groups} does not divide the {c * h * w} inputs", "groups")
    temperature = s.get_float("temperature", 1.0)
    if temperature <= 0:
        raise s.error(f"temperature={temperature} must be positive", "temperature")
    return SoftmaxLayer(groups, temperature, bool(s.get_float("spatial", 0))), shape, ()


def _connected(s: Section, shape: Shape, ctx: _Context):
    outputs = _at_least(s, "output", 1)
    bn = bool(s.get_int("batch_normalize", 0))
    inputs = shape[0] * shape[1] * shape[2]
    ctx.add_params(s, inputs * outputs + (4 * outputs if bn else outputs))
    linear = nn.Linear(inputs, outputs, bias=not bn)
    norm = nn.BatchNorm1d(outputs, eps=BN_EPS) if bn else None
    return ConnectedLayer(linear, norm, _activation(s, "logistic")), (outputs, 1, 1), ()


def _identity(s: Section, shape: Shape, ctx: _Context):
    return Identity(), shape, ()


def _reorg(s: Section, shape: Shape, ctx: _Context):
    stride = _at_least(s, "stride", 1)
    reverse = bool(s.get_int("reverse", 0))
    c, h, w = shape
    area = stride * stride
    if c % area or (not reverse and (h % stride or w % stride)):
        raise s.error(f"stride={stride} does not evenly divide the input {c}x{h}x{w}", "stride")
    out = (c // area, h * stride, w * stride) if reverse else (c * area, h // stride, w // stride)
    return ReorgLayer(stride, reverse), out, ()


_BUILDERS = {
    "convolutional": _conv, "maxpool": _maxpool, "avgpool": _avgpool, "route": _route,
    "shortcut": _shortcut, "upsample": _upsample, "yolo": _yolo, "sam": _sam,
    "scale_channels": _scale_channels, "softmax": _softmax, "connected": _connected,
    "dropout": _identity, "cost": _identity, "reorg": _reorg, "reorg3d": _reorg3d,
    "local_avgpool": _local_avgpool,
}


class DarknetModel(nn.Module):
    """A Darknet network as an nn.Module.

    ``forward`` returns the list of [yolo] layer inputs (raw maps, in cfg order) when the cfg
    has [yolo] layers, else the last layer's output (N, C, H, W). Shapes are inferred at
    construction for ``input_size`` (default: [net] height, width) and ``in_channels``
    (default: [net] channels); ``layer_info`` holds them.
    """

    def __init__(
        self,
        cfg: str | Path | DarknetCfg,
        input_size: int | tuple[int, int] | None = None,
        in_channels: int | None = None,
    ):
        super().__init__()
        cfg = cfg if isinstance(cfg, DarknetCfg) else parse_cfg(cfg)
        self.cfg = cfg
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        h, w = input_size or (cfg.height, cfg.width)
        c = in_channels or cfg.channels
        if min(h, w, c) < 1:
            raise cfg.net.error(
                "needs height, width and channels (or pass input_size= and in_channels=)"
            )
        self.input_shape: Shape = (c, h, w)
        ctx = _Context([])
        _check_values(cfg.net, self.input_shape, "the input", ctx.memory)
        self.layers = nn.ModuleList()
        self.layer_info: list[LayerInfo] = []
        shape = self.input_shape
        for section in cfg.layers:
            module, shape, sources = _BUILDERS[section.type](section, shape, ctx)
            _check_values(section, shape, "the output", ctx.memory)
            if isinstance(module, YoloLayer):
                module.stride = h // shape[1]
            ctx.shapes.append(shape)
            ctx.modules.append(module)
            self.layers.append(module)
            self.layer_info.append(LayerInfo(section.index, section.type, section.line, shape, sources))
        self._sources = [info.sources for info in self.layer_info]
        self._keep = frozenset(j for info in self.layer_info for j in info.sources)
        self.yolo_indices = [i.index for i in self.layer_info if i.type == "yolo"]

    @property
    def output_shapes(self) -> list[Shape]:
        return [info.out_shape for info in self.layer_info]

    @property
    def yolo_layers(self) -> list[YoloLayer]:
        return [m for m in self.layers if isinstance(m, YoloLayer)]

    def forward(self, x: torch.Tensor):
        saved: dict[int, torch.Tensor] = {}
        heads = []
        yolo = set(self.yolo_indices)
        for i, layer in enumerate(self.layers):
            sources = self._sources[i]
            x = layer(x, [saved[j] for j in sources]) if sources else layer(x)
            if i in self._keep:
                saved[i] = x
            if i in yolo:
                heads.append(x)
        return heads if yolo else x

    def describe(self) -> str:
        """One line per layer: index, type, output C x H x W, referenced layers."""
        lines = [f"input {self.input_shape[0]} x {self.input_shape[1]} x {self.input_shape[2]}"]
        for info in self.layer_info:
            c, h, w = info.out_shape
            refs = f"  <- {', '.join(map(str, info.sources))}" if info.sources else ""
            lines.append(f"{info.index:4d} {info.type:<15} {c:5d} x {h:4d} x {w:4d}{refs}")
        return "\n".join(lines)

    def load_weights(self, path: str | Path):
        """Load a Darknet .weights file made for this cfg; returns its header."""
        return load_darknet_weights_into(self, path)

    def save_weights(self, path: str | Path, seen: int = 0) -> None:
        """Write this model's parameters as a Darknet .weights file."""
        save_darknet_weights_from(self, path, seen=seen)
