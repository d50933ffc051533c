"""Darknet .weights: the file layout, old headers, round trips, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from darknet_files import assert_one_line, randomize, shared_cfg, write_cfg
from torch import nn

from edgecsp.darknet import (
    DarknetModel,
    WeightsHeader,
    darknet_param_count,
    load_darknet_weights_into,
    parse_cfg,
    read_weights,
    save_darknet_weights_from,
    write_weights,
)
from edgecsp.errors import EdgeCSPError

# --------------------------------------------------------------------------- weights

TINY = (
    "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
    "[convolutional]\nfilters=6\nsize=3\ngroups=2\npad=1\nactivation=mish\n"
    "[connected]\noutput=5\nbatch_normalize=1\nactivation=linear\n"
    "[connected]\noutput=3\nactivation=logistic\n"
)


class HandBuilt(nn.Module):
    """A module written by hand in the cfg's order, as the native model zoo does."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1, bias=False), nn.BatchNorm2d(4), nn.LeakyReLU(0.1))
        self.conv = nn.Conv2d(4, 6, 3, 1, 1, groups=2)
        self.fc_bn = nn.Sequential(nn.Linear(96, 5, bias=False), nn.BatchNorm1d(5))
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = self.conv(self.stem(x))
        x = x * torch.tanh(nn.functional.softplus(x))
        return torch.sigmoid(self.fc(self.fc_bn(x.flatten(1))))


def test_weights_file_layout_is_darknets(tmp_path):
    """Values written in Darknet's documented order land in the right tensors."""
    model = DarknetModel(write_cfg(tmp_path, TINY))
    conv_bn, conv, fc_bn, fc = model.layers
    sizes = []  # (target, count) in Darknet order
    sizes += [(conv_bn.bn.bias, 4), (conv_bn.bn.weight, 4), (conv_bn.bn.running_mean, 4),
              (conv_bn.bn.running_var, 4), (conv_bn.conv.weight, 4 * 3 * 9)]
    sizes += [(conv.conv.bias, 6), (conv.conv.weight, 6 * 2 * 9)]
    sizes += [(fc_bn.bn.bias, 5), (fc_bn.linear.weight, 5 * 6 * 4 * 4), (fc_bn.bn.weight, 5),
              (fc_bn.bn.running_mean, 5), (fc_bn.bn.running_var, 5)]
    sizes += [(fc.linear.bias, 3), (fc.linear.weight, 3 * 5)]
    total = sum(n for _, n in sizes)
    assert darknet_param_count(model) == total
    values = np.arange(total, dtype=np.float32) + 1
    path = tmp_path / "t.weights"
    write_weights(path, values, WeightsHeader(0, 2, 5, seen=123456789012))
    header = load_darknet_weights_into(model, path)
    assert header.seen == 123456789012
    pos = 0
    for target, n in sizes:
        np.testing.assert_array_equal(target.detach().numpy().reshape(-1), values[pos:pos + n])
        pos += n


def test_old_header_has_32bit_seen(tmp_path):
    path = tmp_path / "old.weights"
    with open(path, "wb") as f:
        f.write(np.array([0, 1, 0, 4242], "<i4").tobytes())
        f.write(np.array([1.5, 2.5], "<f4").tobytes())
    header, params = read_weights(path)
    assert (header.major, header.minor, header.seen) == (0, 1, 4242)
    np.testing.assert_array_equal(params, [1.5, 2.5])


def test_transposed_connected_weights(tmp_path):
    model = DarknetModel(write_cfg(tmp_path, "[connected]\noutput=2\nactivation=linear\n", size=1, channels=3))
    values = np.array([10, 20] + [1, 2, 3, 4, 5, 6], np.float32)  # biases, then 3x2 (in x out)
    path = tmp_path / "t.weights"
    write_weights(path, values, WeightsHeader(major=1001, minor=0))
    load_darknet_weights_into(model, path)
    np.testing.assert_array_equal(model.layers[0].linear.weight.detach().numpy(), [[1, 3, 5], [2, 4, 6]])


def test_round_trip_tiny_gives_identical_outputs(tmp_path):
    path = write_cfg(tmp_path, TINY)
    a = randomize(DarknetModel(path), seed=1)
    a.save_weights(tmp_path / "a.weights", seen=64)
    b = randomize(DarknetModel(path), seed=2)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
        assert b.load_weights(tmp_path / "a.weights").seen == 64
        assert torch.equal(a(x), b(x))
    # Writing again reproduces the same bytes.
    b.save_weights(tmp_path / "b.weights", seen=64)
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()


@pytest.mark.parametrize("name", ["csresnext50-panet-spp.cfg", "csmobilenet-v2.cfg"])
def test_round_trip_shared_cfg(tmp_path, name):
    cfg = parse_cfg(shared_cfg(name))
    a = randomize(DarknetModel(cfg, input_size=96), seed=3)
    save_darknet_weights_from(a, tmp_path / "m.weights")
    b = DarknetModel(cfg, input_size=96).eval()
    load_darknet_weights_into(b, tmp_path / "m.weights")
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    ya, yb = (ya, yb) if isinstance(ya, list) else ([ya], [yb])
    assert all(torch.equal(p, q) for p, q in zip(ya, yb))


def test_weights_load_into_any_module_in_cfg_order(tmp_path):
    darknet = randomize(DarknetModel(write_cfg(tmp_path, TINY)), seed=4)
    darknet.save_weights(tmp_path / "t.weights")
    hand = HandBuilt().eval()
    load_darknet_weights_into(hand, tmp_path / "t.weights")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(hand(x), darknet(x).flatten(1), rtol=1e-5, atol=1e-6)
    save_darknet_weights_from(hand, tmp_path / "h.weights")
    assert (tmp_path / "h.weights").read_bytes() == (tmp_path / "t.weights").read_bytes()


def test_conv_bias_before_bn_is_folded_on_save(tmp_path):
    module = randomize(nn.Sequential(nn.Conv2d(2, 3, 1, bias=True), nn.BatchNorm2d(3)))
    save_darknet_weights_from(module, tmp_path / "m.weights")
    other = randomize(nn.Sequential(nn.Conv2d(2, 3, 1, bias=True), nn.BatchNorm2d(3)), seed=9)
    load_darknet_weights_into(other, tmp_path / "m.weights")
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(other(x), module(x))


# --------------------------------------------------------------------------- bad input


def test_truncated_weights(tmp_path):
    path = write_cfg(tmp_path, TINY)
    model = DarknetModel(path)
    model.save_weights(tmp_path / "t.weights")
    data = (tmp_path / "t.weights").read_bytes()
    (tmp_path / "cut.weights").write_bytes(data[:-40])
    need = darknet_param_count(model)
    with pytest.raises(EdgeCSPError) as err:
        model.load_weights(tmp_path / "cut.weights")
    assert_one_line(err, "cut.weights", f"expected {need} floats", f"found {need - 10}")
    (tmp_path / "odd.weights").write_bytes(data[:-2])
    with pytest.raises(EdgeCSPError) as err:
        model.load_weights(tmp_path / "odd.weights")
    assert_one_line(err, "odd.weights", "whole number of float32")
    (tmp_path / "head.weights").write_bytes(data[:10])
    with pytest.raises(EdgeCSPError) as err:
        read_weights(tmp_path / "head.weights")
    assert_one_line(err, "too short")


def test_weights_for_another_cfg(tmp_path):
    big = DarknetModel(write_cfg(tmp_path, TINY.replace("filters=6", "filters=8"), name="big.cfg"))
    big.save_weights(tmp_path / "big.weights")
    small = DarknetModel(write_cfg(tmp_path, TINY))
    with pytest.raises(EdgeCSPError) as err:
        small.load_weights(tmp_path / "big.weights")
    assert_one_line(err, "big.weights", "do not fit the cfg", str(darknet_param_count(big)),
                    str(darknet_param_count(small)))
