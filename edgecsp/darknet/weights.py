"""Read and write Darknet .weights files, for DarknetModel or any module laid out like a cfg.

Layout: int32 major, minor, revision; ``seen`` as int64 when major*10+minor >= 2, else int32;
then little-endian float32 parameters layer by layer:

- conv with BN: beta (Darknet's "biases"), gamma, rolling mean, rolling variance, weights
- conv without BN: biases, weights
- connected: biases, weights (out x in), then gamma, rolling mean, rolling variance with BN

A module's (Conv2d | Linear, BatchNorm or None) pairs are found in ``modules()`` order: a
BatchNorm that immediately follows a Conv2d/Linear belongs to it. A conv that owns no weight
(a share_index layer using another layer's) has no entries, as in Darknet's load/save_weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecsp.errors import EdgeCSPError, shown

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class WeightsHeader:
    major: int = 0
    minor: int = 2
    revision: int = 5  # what current Darknet writes
    seen: int = 0  # images seen in training

    @property
    def seen_is_64bit(self) -> bool:
        return self.major * 10 + self.minor >= 2

    @property
    def transposed(self) -> bool:
        # Darknet's marker for connected weights stored (in x out)
        return self.major > 1000 or self.minor > 1000


def read_weights(path: str | Path) -> tuple[WeightsHeader, np.ndarray]:
    """Header and the flat float32 parameters of a .weights file (no pickle involved)."""
    path = Path(path)
    try:
        data = bytearray(path.read_bytes())  # bytearray: numpy view is writable for torch
    except FileNotFoundError:
        raise EdgeCSPError(f"{shown(path)}: weights file not found; check the path") from None
    except OSError as err:
        raise EdgeCSPError(f"{shown(path)}: cannot read weights file ({err.strerror})") from None
    if data[:2] == b"PK":
        raise EdgeCSPError(f"{shown(path.name)}: looks like a PyTorch checkpoint (zip), not Darknet .weights")
    if len(data) < 16:
        raise EdgeCSPError(f"{shown(path.name)}: {len(data)} bytes is too short for a Darknet .weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    seen_dtype = "<i8" if major * 10 + minor >= 2 else "<i4"
    start = 12 + np.dtype(seen_dtype).itemsize
    if len(data) < start:
        raise EdgeCSPError(f"{shown(path.name)}: {len(data)} bytes is too short for a Darknet .weights header")
    seen = int(np.frombuffer(data, seen_dtype, 1, 12)[0])
    body = len(data) - start
    if body % 4:
        raise EdgeCSPError(
            f"{shown(path.name)}: {body} bytes after the header is not a whole number of float32 values; "
            "the file is damaged"
        )
    params = np.frombuffer(data, "<f4", body // 4, start)
    return WeightsHeader(major, minor, revision, seen), params


def write_weights(path: str | Path, params: np.ndarray, header: WeightsHeader = WeightsHeader()) -> None:
    """Write a header and flat float32 parameters."""
    seen_dtype = "<i8" if header.seen_is_64bit else "<i4"
    with open(path, "wb") as f:
        f.write(np.array([header.major, header.minor, header.revision], "<i4").tobytes())
        f.write(np.array([header.seen], seen_dtype).tobytes())
        f.write(np.ascontiguousarray(params, "<f4").tobytes())


@dataclass
class WeightUnit:
    """One Darknet layer's worth of parameters: a Conv2d or Linear and its BatchNorm, if any."""

    name: str
    layer: nn.Conv2d | nn.Linear
    bn: nn.BatchNorm1d | nn.BatchNorm2d | None = None

    @property
    def count(self) -> int:
        n = self.layer.weight.shape[0]
        return self.layer.weight.numel() + n + (3 * n if self.bn is not None else 0)


def darknet_units(module: nn.Module) -> list[WeightUnit]:
    """The module's weight units in .weights order; errors for anything the format cannot hold."""
    units: list[WeightUnit] = []
    prev = None
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and "weight" not in m._parameters:
            pass  # uses another layer's kernel (share_index): Darknet writes nothing for it
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            units.append(WeightUnit(name, m))
        elif isinstance(m, _BN):
            _attach_bn(units, prev, name, m)
        elif any(True for _ in m.parameters(recurse=False)):
            raise EdgeCSPError(
                f"module '{name}' ({type(m).__name__}) has parameters a Darknet .weights file cannot hold"
            )
        prev = m
    return units


def _attach_bn(units: list[WeightUnit], prev, name: str, bn) -> None:
    owner = units[-1] if units else None
    if owner is None or owner.layer is not prev:
        raise EdgeCSPError(
            f"BatchNorm '{name}' does not directly follow a Conv2d or Linear in module order; "
            "Darknet .weights cannot hold it"
        )
    expected = nn.BatchNorm2d if isinstance(prev, nn.Conv2d) else nn.BatchNorm1d
    if not isinstance(bn, expected) or bn.num_features != prev.weight.shape[0]:
        raise EdgeCSPError(f"BatchNorm '{name}' does not match '{owner.name}' before it (kind or channel count)")
    if not bn.affine or not bn.track_running_stats:
        raise EdgeCSPError(f"BatchNorm '{name}' needs affine=True and running statistics for Darknet .weights")
    owner.bn = bn


def darknet_param_count(module: nn.Module) -> int:
    """How many float32 values the module's .weights file holds after the header."""
    return sum(u.count for u in darknet_units(module))


def load_darknet_weights_into(module: nn.Module, path: str | Path) -> WeightsHeader:
    """Load a .weights file into ``module`` (a DarknetModel or any module in cfg order)."""
    header, data = read_weights(path)
    units = darknet_units(module)
    need = sum(u.count for u in units)
    name = shown(Path(path).name)
    if data.size < need:
        raise EdgeCSPError(
            f"{name}: expected {need} floats after the header, found {data.size}; "
            "the file is truncated or made for another cfg"
        )
    if data.size > need:
        raise EdgeCSPError(
            f"{name}: the weights do not fit the cfg: the file has {data.size} floats, "
            f"the model needs {need}; use the .weights file trained with this cfg"
        )
    broken = int(np.count_nonzero(~np.isfinite(data)))
    if broken:  # one NaN weight makes every output NaN; refuse rather than load it silently
        raise EdgeCSPError(f"{name}: {broken} of the {data.size} weights are NaN or infinite; the file is damaged")
    reader = _Reader(data)
    with torch.no_grad():
        for unit in units:
            _load_unit(unit, reader, header.transposed)
    return header


def save_darknet_weights_from(module: nn.Module, path: str | Path, seen: int = 0) -> None:
    """Write ``module``'s parameters as a Darknet .weights file."""
    parts: list[np.ndarray] = []
    with torch.no_grad():
        for unit in darknet_units(module):
            parts.extend(_unit_arrays(unit))
    params = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    write_weights(path, params, WeightsHeader(seen=seen))


class _Reader:
    def __init__(self, data: np.ndarray):
        self.data, self.pos = data, 0

    def take(self, n: int) -> torch.Tensor:
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return torch.from_numpy(chunk)


def _load_unit(unit: WeightUnit, reader: _Reader, transposed: bool) -> None:
    layer, bn = unit.layer, unit.bn
    n = layer.weight.shape[0]
    biases = reader.take(n)
    if isinstance(layer, nn.Conv2d):
        if bn is not None:
            _load_bn(bn, biases, reader, n)
        weight = reader.take(layer.weight.numel()).view(layer.weight.shape)
    else:
        if transposed:
            weight = reader.take(layer.weight.numel()).view(layer.weight.shape[::-1]).t()
        else:
            weight = reader.take(layer.weight.numel()).view(layer.weight.shape)
        if bn is not None:
            _load_bn(bn, biases, reader, n)
    layer.weight.copy_(weight)
    if bn is not None:
        if layer.bias is not None:  # Darknet's single bias is BN's beta
            layer.bias.zero_()
    elif layer.bias is not None:
        layer.bias.copy_(biases)
    elif bool((biases != 0).any()):
        raise EdgeCSPError(
            f"'{unit.name}' has no bias but the weights file gives it nonzero biases; "
            "build the layer with bias=True"
        )


def _load_bn(bn, beta: torch.Tensor, reader: _Reader, n: int) -> None:
    bn.bias.copy_(beta)
    bn.weight.copy_(reader.take(n))
    bn.running_mean.copy_(reader.take(n))
    bn.running_var.copy_(reader.take(n))


def _unit_arrays(unit: WeightUnit) -> list[np.ndarray]:
    layer, bn = unit.layer, unit.bn

    def np32(t: torch.Tensor) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).reshape(-1).numpy()

    weight = np32(layer.weight)
    n = layer.weight.shape[0]
    if bn is None:
        bias = np32(layer.bias) if layer.bias is not None else np.zeros(n, np.float32)
        return [bias, weight]
    mean, var = bn.running_mean, bn.running_var
    assert mean is not None and var is not None  # darknet_units only pairs BNs with stats
    if layer.bias is not None:  # fold a conv bias into BN: BN(x + b) uses mean - b
        mean = mean - layer.bias
    stats = [np32(bn.weight), np32(mean), np32(var)]
    if isinstance(layer, nn.Conv2d):
        return [np32(bn.bias), *stats, weight]
    return [np32(bn.bias), weight, *stats]
