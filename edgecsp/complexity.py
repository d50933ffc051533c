"""Count a model's parameters, multiply-accumulates, Darknet BFLOPs and CIO.

Works on any nn.Module by running one dummy image through it with forward hooks on the
convolutions and linear layers, so what is counted is what the forward actually calls.

Conventions:
- ``macs``: multiply-accumulates of convolutions (C_in/groups per output element) and linear
  layers; other ops (BN, activations, pooling, adds) are not counted.
- ``bflops``: Darknet's figure, 2 x convolution MACs / 1e9, convolutions only.
- ``cio``: the CSPNet paper's memory-traffic measure (from HarDNet): the sum over convolutions
  of input plus output feature-map element counts, batch 1. ``cio_with_pooling`` adds the
  pooling layers' inputs and outputs; that variant reproduces the paper's Figure 8 figures
  (ResNeXt-50 34.4M, CSPResNeXt-50 32.6M at 256x256), convolutions alone come out ~1.4M lower.
- ``params``: trainable parameters (BatchNorm gamma/beta included, running stats not).
  ``conv_params`` counts convolution kernels only (no biases, no BN): the convention of the
  CSPNet reference table (every published classifier figure matches it within 0.15%).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgecsp.errors import EdgeCSPError


@dataclass
class Row:
    """One counted call of a conv, linear or pooling module."""

    name: str
    kind: str  # "conv", "linear" or "pool"
    module_type: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    params: int
    macs: int
    cio: int

    @property
    def is_conv(self) -> bool:
        return self.kind == "conv"


def profile(model: nn.Module, input_size: int | tuple[int, int] = (224, 224), in_channels: int = 3) -> dict:
    """Complexity of ``model`` for one (in_channels, H, W) image.

    Returns a dict with ``params``, ``conv_params``, ``macs``, ``conv_macs``, ``bflops``, ``cio``, ``input``,
    ``rows`` (a list of :class:`Row`, in call order) and ``module_params`` (trainable
    parameters owned by each named module) for per-stage tables (see :func:`stage_table`).
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if min(h, w, in_channels) < 1:
        raise EdgeCSPError(f"input size {h}x{w}x{in_channels} must be positive")
    try:
        first = next(model.parameters())
        device, dtype = first.device, first.dtype
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    names = {m: n for n, m in model.named_modules()}
    rows: list[Row] = []

    def hook(module, args, output):
        x = args[0]
        n_out = output.numel()
        kind = _kind(module)
        if kind == "linear":
            macs = module.in_features * n_out
        elif kind == "conv":  # weight is (C_out, C_in/groups, *k): each output costs the rest
            macs = n_out * (module.weight.numel() // module.weight.shape[0])
        else:
            macs = 0
        own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
        rows.append(Row(names.get(module, "?"), kind, type(module).__name__, tuple(x.shape[1:]),
                        tuple(output.shape[1:]), own, macs, x.numel() + n_out))

    handles = [m.register_forward_hook(hook) for m in model.modules() if _kind(m)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)

    conv_macs = sum(r.macs for r in rows if r.is_conv)
    own_params = {
        name: n for name, m in model.named_modules()
        if (n := sum(p.numel() for p in m.parameters(recurse=False) if p.requires_grad))
    }
    return {
        "params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "conv_params": sum(
            m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        ),
        "macs": sum(r.macs for r in rows),
        "conv_macs": conv_macs,
        "bflops": 2 * conv_macs / 1e9,
        "cio": sum(r.cio for r in rows if r.is_conv),
        "cio_with_pooling": sum(r.cio for r in rows if r.kind in ("conv", "pool")),
        "input": (in_channels, h, w),
        "rows": rows,
        "module_params": own_params,
    }


_POOLS = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
)


def _kind(m: nn.Module) -> str | None:
    # Transposed convolutions are left out: their cost per output differs and Darknet has none.
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, _POOLS):
        return "pool"
    return None


def stage_table(result: dict, depth: int = 1) -> str:
    """A text table summing params and counts by the first ``depth`` parts of module names."""
    groups: dict[str, list[int]] = {}

    def group(name: str) -> list[int]:
        return groups.setdefault(".".join(name.split(".")[:depth]) or "(root)", [0, 0, 0, 0])

    for name, n in result["module_params"].items():
        group(name)[0] += n
    for r in result["rows"]:
        g = group(r.name)
        g[1] += r.macs
        g[2] += r.macs if r.is_conv else 0
        g[3] += r.cio if r.is_conv else 0
    lines = [f"{'stage':<24}{'params':>12}{'MMACs':>11}{'BFLOPs':>9}{'CIO (M)':>10}"]
    for key, (params, macs, conv, cio) in groups.items():
        lines.append(f"{key:<24}{params:>12,}{macs / 1e6:>11.1f}{2 * conv / 1e9:>9.3f}{cio / 1e6:>10.2f}")
    lines.append(
        f"{'total':<24}{result['params']:>12,}{result['macs'] / 1e6:>11.1f}"
        f"{result['bflops']:>9.3f}{result['cio'] / 1e6:>10.2f}"
    )
    return "\n".join(lines)
