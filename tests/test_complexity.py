"""Complexity counting: hand-computed counts on small modules, and the CSPNet reference table.

Reference figures (../shared/reference/csp-paper-numbers.md) are the README of the CSPNet
reference implementation: Darknet BFLOPs (2 x conv MACs / 1e9, convolutions only, at the
cfg's own input size) and parameter counts. The parameter convention that matches every
classifier within 0.15% is "convolution kernels only": BatchNorm parameters are not counted
(counting them misses MobileNet-v2 by +1.0% and CSPMobileNet-v2 by +1.2%), the final
1000-way classifier conv is (leaving it out misses by 2.4%-36%). Conv biases exist only on
that last conv (1000 values) and cannot be told apart at the table's rounding.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from testpaths import CFG_DIR
from torch import nn

from edgecsp.complexity import profile, stage_table

# model cfg -> (params in millions, Darknet BFLOPs), from csp-paper-numbers.md
REFERENCE = {
    "resnet50.cfg": (22.73, 9.74),
    "csresnet50.cfg": (21.57, 8.97),
    "resnext50.cfg": (22.19, 10.11),
    "csresnext50.cfg": (20.50, 7.93),
    "darknet53.cfg": (41.57, 18.57),
    "csdarknet53.cfg": (27.61, 13.07),
    "mobilenet-v2.cfg": (3.47, 0.858),
    "csmobilenet-v2.cfg": (2.51, 0.764),
}
TOLERANCE = 0.005


@cache
def reference_profile(name: str):
    from edgecsp.darknet import DarknetModel

    if not CFG_DIR.is_dir():
        pytest.skip(f"shared Darknet cfgs not found at {CFG_DIR}")
    model = DarknetModel(CFG_DIR / name)  # the cfg's own input size
    c, h, w = model.input_shape
    return model, profile(model, (h, w), c)


def conv_kernel_params(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def rel(ours: float, ref: float) -> float:
    return abs(ours - ref) / ref


# --------------------------------------------------------------------------- small modules


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.b = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)
        self.frozen = nn.Parameter(torch.ones(5), requires_grad=False)

    def forward(self, x):
        x = self.b(torch.relu(self.a(x)))
        return self.fc(self.pool(x).flatten(1))


def test_counts_by_hand():
    model = Small().train()
    r = profile(model, (32, 24), in_channels=3)
    a_out, b_out = 8 * 16 * 12, 16 * 16 * 12  # stride 2 halves 32x24
    a_macs = a_out * 3 * 3 * 3
    b_macs = b_out * (8 // 4) * 3 * 3  # grouped conv sees C_in / groups
    fc_macs = 16 * 10
    assert r["conv_macs"] == a_macs + b_macs
    assert r["macs"] == a_macs + b_macs + fc_macs
    assert r["bflops"] == pytest.approx(2 * (a_macs + b_macs) / 1e9)
    assert r["cio"] == (3 * 32 * 24 + a_out) + (a_out + b_out)
    assert r["cio_with_pooling"] == r["cio"] + b_out + 16
    params = (8 * 3 * 9 + 8) + 16 * 2 * 9 + 2 * 16 + (16 * 10 + 10)  # the frozen one is not counted
    assert r["params"] == params
    assert r["conv_params"] == 8 * 3 * 9 + 16 * 2 * 9
    assert [row.name for row in r["rows"]] == ["a", "b.0", "pool", "fc"]
    assert model.training  # mode restored
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_stage_table_sums_to_totals():
    r = profile(Small(), 32)
    table = stage_table(r)
    lines = table.splitlines()
    assert sorted(line.split()[0] for line in lines[1:-1]) == ["a", "b", "fc", "pool"]
    assert lines[-1].split()[0] == "total"
    assert f"{r['params']:,}" in lines[-1]
    by_stage = sum(int(line.split()[1].replace(",", "")) for line in lines[1:-1])
    assert by_stage == r["params"]


def test_model_without_parameters():
    r = profile(nn.MaxPool2d(2), (4, 4), in_channels=1)
    assert r["params"] == 0 and r["macs"] == 0 and r["cio_with_pooling"] == 16 + 4


# --------------------------------------------------------------------------- reference table


def expected_cfg_conv_macs(name: str) -> int:
    """Darknet's per-layer formula straight from the cfg text: (C_in/groups) C_out k^2 H_out W_out."""
    model, _ = reference_profile(name)
    shapes = [model.input_shape] + model.output_shapes
    total = 0
    for info, section in zip(model.layer_info, model.cfg.layers):
        if section.type == "convolutional":
            c_in = shapes[info.index][0]
            c_out, h, w = info.out_shape
            k = section.get_int("size")
            total += c_in // section.get_int("groups", 1) * c_out * k * k * h * w
    return total


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_reference_params(name):
    model, r = reference_profile(name)
    ref_params, _ = REFERENCE[name]
    assert r["conv_params"] == conv_kernel_params(model)
    assert rel(r["conv_params"] / 1e6, ref_params) < TOLERANCE
    # Trainable params (what profile reports) add BatchNorm gamma/beta and the biases.
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    bias = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)
    assert r["params"] == conv_kernel_params(model) + bn + bias


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=pytest.mark.xfail(
                strict=True,
                reason="resnet50.cfg runs its 1000-filter conv on the 8x8 map before [avgpool]: "
                "+0.262 BFLOPs (9.999 vs 9.74, +2.7%); see test_resnet50_bflops_gap",
            ),
        )
        if n == "resnet50.cfg"
        else n
        for n in sorted(REFERENCE)
    ],
)
def test_reference_bflops(name):
    _, r = reference_profile(name)
    _, ref_bflops = REFERENCE[name]
    assert r["bflops"] == pytest.approx(2 * expected_cfg_conv_macs(name) / 1e9, rel=1e-12)
    assert rel(r["bflops"], ref_bflops) < TOLERANCE


def test_resnet50_bflops_gap():
    """The published 9.74 is this cfg with its classifier conv counted at 1x1 (or not at all)."""
    _, r = reference_profile("resnet50.cfg")
    last = [row for row in r["rows"] if row.is_conv][-1]
    assert last.out_shape == (1000, 8, 8) and last.in_shape[0] == 2048
    at_1x1 = r["bflops"] - 2 * last.macs / 1e9 + 2 * 2048 * 1000 / 1e9
    assert rel(at_1x1, 9.74) < TOLERANCE


@pytest.mark.parametrize("name,ref", [("resnext50.cfg", 34.4), ("csresnext50.cfg", 32.6)])
def test_paper_cio(name, ref):
    """The paper's Figure 8 CIO counts pooling layers' maps too; convolutions alone are ~1.4M lower."""
    _, r = reference_profile(name)
    assert rel(r["cio_with_pooling"] / 1e6, ref) < TOLERANCE
    assert r["cio"] < r["cio_with_pooling"]
