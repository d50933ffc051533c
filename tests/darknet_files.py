"""Darknet cfg helpers for the darknet tests: the shared cfgs, tiny cfgs written on the fly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The shared test data sit next to the checkout (/work/shared beside /work/main) or, for a
# worktree, a level further up.
from testpaths import CFG_DIR
from torch import nn

ALL_CFGS = sorted(p.name for p in CFG_DIR.glob("*.cfg")) if CFG_DIR.is_dir() else []
DETECTORS = [n for n in ALL_CFGS if "panet" in n]
CLASSIFIERS = [n for n in ALL_CFGS if n not in DETECTORS]


def shared_cfg(name: str) -> Path:
    if not CFG_DIR.is_dir():
        pytest.skip(f"shared Darknet cfgs not found at {CFG_DIR}")
    return CFG_DIR / name


def write_cfg(tmp_path: Path, body: str, size: int = 8, channels: int = 3, name: str = "t.cfg") -> Path:
    path = tmp_path / name
    path.write_text(f"[net]\nheight={size}\nwidth={size}\nchannels={channels}\n\n{body}")
    return path


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial values everywhere, BN statistics included, so round trips prove something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def assert_one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    text = str(err.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, f"{part!r} not in {text!r}"
