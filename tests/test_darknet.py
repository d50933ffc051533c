"""Darknet import/export: cfg parsing, Darknet layer semantics, .weights round trips, bad input.

Layer checks compare against straightforward loops written from Darknet's C formulas, not
against outputs of this package.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
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

# The shared test data sit next to the checkout (/work/shared beside /work/main) or, for a
# worktree, a level further up.
CFG_DIR = next((p / "shared" / "darknet-cfg" for p in Path(__file__).resolve().parents[1:4]
                if (p / "shared" / "darknet-cfg").is_dir()), Path("/nonexistent/shared/darknet-cfg"))
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


# --------------------------------------------------------------------------- shared cfgs


def test_shared_cfgs_present():
    shared_cfg("csresnext50.cfg")
    assert len(ALL_CFGS) >= 12 and len(DETECTORS) == 4


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_builds_and_forwards(name):
    cfg = parse_cfg(shared_cfg(name))
    model = DarknetModel(cfg, input_size=64).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1000, 1, 1)
    # Each cfg ends in [softmax]: every image's scores sum to one.
    assert torch.allclose(out.flatten(1).sum(1), torch.ones(2), atol=1e-5)
    assert model.input_shape == (cfg.channels, 64, 64)
    assert len(model.describe().splitlines()) == len(cfg.layers) + 1


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_builds_and_gives_three_yolo_maps(name):
    path = shared_cfg(name)
    cfg = parse_cfg(path)
    yolo = [s for s in cfg.layers if s.type == "yolo"]
    model = DarknetModel(cfg, input_size=128).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, 128, 128))
    assert len(outs) == 3
    for out, section in zip(outs, yolo):
        anchors = len(section.get_ints("mask"))
        assert out.shape[1] == anchors * (section.get_int("classes") + 5) == 255
    assert sorted(o.shape[-1] for o in outs) == [128 // 32, 128 // 16, 128 // 8]
    assert sorted(y.stride for y in model.yolo_layers) == [8, 16, 32]
    # The [net] size is the default for shape inference.
    assert DarknetModel(cfg).input_shape[1:] == (cfg.height, cfg.width)


def test_parser_keeps_file_and_line(tmp_path):
    path = write_cfg(tmp_path, "# a comment\n; another\n[Convolutional]\n FILTERS = 4 \nsize=3 # inline\n")
    cfg = parse_cfg(path)
    conv = cfg.layers[0]
    assert conv.type == "convolutional" and conv.index == 0
    assert conv.line == 8 and conv.options["filters"].line == 9
    assert conv.get_int("filters") == 4 and conv.get_int("size") == 3
    assert conv.where("size") == "t.cfg:10"


# --------------------------------------------------------------------------- layer semantics


def darknet_maxpool(x: np.ndarray, size: int, stride: int, pad: int) -> np.ndarray:
    """forward_maxpool_layer: window origin at -pad/2, out-of-image cells ignored."""
    c, h, w = x.shape
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    off = -(pad // 2)
    out = np.full((c, oh, ow), -np.inf, np.float32)
    for k in range(c):
        for i in range(oh):
            for j in range(ow):
                for n in range(size):
                    for m in range(size):
                        y, xx = off + i * stride + n, off + j * stride + m
                        if 0 <= y < h and 0 <= xx < w:
                            out[k, i, j] = max(out[k, i, j], x[k, y, xx])
    return out


@pytest.mark.parametrize(
    "hw,size,stride,padding", [(7, 2, 2, None), (8, 2, 2, None), (9, 3, 2, None), (6, 5, 1, None), (7, 3, 1, 0)]
)
def test_maxpool_matches_darknet(tmp_path, hw, size, stride, padding):
    pad_line = "" if padding is None else f"padding={padding}\n"
    path = write_cfg(tmp_path, f"[maxpool]\nsize={size}\nstride={stride}\n{pad_line}", size=hw, channels=2)
    model = DarknetModel(path)
    x = torch.randn(1, 2, hw, hw)
    got = model(x)[0].numpy()
    want = darknet_maxpool(x[0].numpy(), size, stride, size - 1 if padding is None else padding)
    assert model.output_shapes[0] == want.shape
    np.testing.assert_array_equal(got, want)


def test_spp_maxpools_keep_size(tmp_path):
    body = "[maxpool]\nsize=5\nstride=1\n[route]\nlayers=-2\n[maxpool]\nsize=13\nstride=1\n[route]\nlayers=-1,-3,-4\n"
    path = write_cfg(tmp_path, "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n" + body, size=13)
    model = DarknetModel(path)
    assert model.output_shapes[1] == (4, 13, 13) and model.output_shapes[-1] == (12, 13, 13)


def test_route_groups_take_a_channel_slice(tmp_path):
    body = (
        "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
        "[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"
        "[route]\nlayers=0,1\ngroups=2\ngroup_id=1\n"
    )
    model = DarknetModel(write_cfg(tmp_path, body)).eval()
    outs = {}
    model.layers[0].register_forward_hook(lambda m, i, o: outs.__setitem__(0, o))
    model.layers[1].register_forward_hook(lambda m, i, o: outs.__setitem__(1, o))
    y = model(torch.randn(1, 3, 8, 8))
    assert model.output_shapes[2] == (5, 8, 8)
    assert torch.equal(y, torch.cat([outs[0][:, 3:6], outs[1][:, 2:4]], 1))


def darknet_shortcut(out: np.ndarray, add: np.ndarray) -> np.ndarray:
    """shortcut_cpu (the rule of CSPNet-era Darknet) for one image."""
    c2, h2, w2 = out.shape
    c1, h1, w1 = add.shape
    stride, sample = max(w1 // w2, 1), max(w2 // w1, 1)
    out = out.copy()
    for k in range(min(c1, c2)):
        for j in range(min(h1, h2)):
            for i in range(min(w1, w2)):
                out[k, j * sample, i * sample] += add[k, j * stride, i * stride]
    return out


C = "activation=linear\n[convolutional]\n"  # joins conv layers in the bodies below
SHORTCUT_CASES = {
    "plain add": ("[convolutional]\nfilters=4\nsize=1\n" + C + "filters=4\nsize=1\n", 0),
    "fewer channels added": ("[convolutional]\nfilters=3\nsize=1\n" + C + "filters=5\nsize=1\n", 0),
    "more channels added": ("[convolutional]\nfilters=6\nsize=1\n" + C + "filters=4\nsize=1\n", 0),
    # ResNet-50's parameter-free downsampling shortcut: every 2nd pixel of the big map.
    "bigger map sampled": ("[convolutional]\nfilters=4\nsize=1\n" + C + "filters=6\nsize=3\nstride=2\npad=1\n", 0),
    "smaller map spread": (
        "[convolutional]\nfilters=4\nsize=1\n" + C + "filters=3\nsize=3\nstride=2\npad=1\n"
        "activation=linear\n[route]\nlayers=-2\n[convolutional]\nfilters=5\nsize=1\n", 1
    ),
}


@pytest.mark.parametrize("case", sorted(SHORTCUT_CASES))
def test_shortcut_matches_darknet(tmp_path, case):
    body, source = SHORTCUT_CASES[case]
    body += f"activation=linear\n[shortcut]\nfrom={source}\nactivation=linear\n"
    model = randomize(DarknetModel(write_cfg(tmp_path, body)))
    outs = {}
    for i in range(len(model.layers) - 1):
        model.layers[i].register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o[0].numpy()))
    with torch.no_grad():
        y = model(torch.randn(1, 3, 8, 8))[0].numpy()
    want = darknet_shortcut(outs[len(model.layers) - 2], outs[source])
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


def darknet_reorg(x: np.ndarray, stride: int, reverse: bool) -> np.ndarray:
    """reorg_cpu(input, w, h, c, ..., forward=reverse) as [reorg] calls it, one image."""
    c, h, w = x.shape
    flat = x.reshape(-1)
    out = np.zeros_like(flat)
    in_c = c // (stride * stride)
    for k in range(c):
        for j in range(h):
            for i in range(w):
                in_index = i + w * (j + h * k)
                c2, offset = k % in_c, k // in_c
                w2, h2 = i * stride + offset % stride, j * stride + offset // stride
                out_index = w2 + w * stride * (h2 + h * stride * c2)
                if reverse:
                    out[out_index] = flat[in_index]
                else:
                    out[in_index] = flat[out_index]
    return out


@pytest.mark.parametrize("reverse", [0, 1])
def test_reorg_matches_darknet(tmp_path, reverse):
    path = write_cfg(tmp_path, f"[reorg]\nstride=2\nreverse={reverse}\n", size=4, channels=8)
    model = DarknetModel(path)
    x = torch.randn(1, 8, 4, 4)
    y = model(x)[0]
    assert tuple(y.shape) == model.output_shapes[0]
    np.testing.assert_array_equal(y.numpy().reshape(-1), darknet_reorg(x[0].numpy(), 2, bool(reverse)))


ACTIVATIONS = {
    "leaky": lambda x: np.where(x > 0, x, 0.1 * x),
    "mish": lambda x: x * np.tanh(np.log1p(np.exp(x))),
    "swish": lambda x: x / (1 + np.exp(-x)),
    "logistic": lambda x: 1 / (1 + np.exp(-x)),
    "relu6": lambda x: np.clip(x, 0, 6),
    "selu": lambda x: np.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * (np.exp(x) - 1)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(0.797885 * x + 0.035677 * x**3)),
    "loggy": lambda x: 2 / (1 + np.exp(-x)) - 1,
    "plse": lambda x: np.where(x < -4, 0.01 * (x + 4), np.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)),
    "hard_mish": lambda x: np.where(x > 0, x, np.where(x > -2, x * x / 2 + x, 0)),
    "stair": lambda x: np.where(np.floor(x) % 2 == 0, np.floor(x / 2), x - np.floor(x) + np.floor(x / 2)),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_follow_darknet_formulas(tmp_path, name):
    path = write_cfg(tmp_path, f"[convolutional]\nfilters=1\nsize=1\nactivation={name}\n", size=1, channels=1)
    model = DarknetModel(path)
    x = torch.linspace(-7, 7, 57)
    with torch.no_grad():
        model.layers[0].conv.weight.fill_(1.0)
        model.layers[0].conv.bias.zero_()
        y = model(x.view(-1, 1, 1, 1)).flatten()
    np.testing.assert_allclose(y.numpy(), ACTIVATIONS[name](x.numpy().astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_conv_batchnorm_uses_darknet_formula(tmp_path):
    path = write_cfg(tmp_path, "[convolutional]\nbatch_normalize=1\nfilters=3\nsize=1\nactivation=linear\n", channels=2)
    model = randomize(DarknetModel(path))
    layer = model.layers[0]
    assert layer.conv.bias is None  # Darknet: BN's beta is the only bias
    x = torch.randn(1, 2, 8, 8)
    with torch.no_grad():
        y = model(x)[0].numpy()
    w = layer.conv.weight.detach().numpy()[:, :, 0, 0]
    bn = layer.bn
    conv = np.einsum("oc,chw->ohw", w, x[0].numpy())
    mean, var = bn.running_mean.numpy()[:, None, None], bn.running_var.numpy()[:, None, None]
    gamma, beta = bn.weight.detach().numpy()[:, None, None], bn.bias.detach().numpy()[:, None, None]
    want = (conv - mean) / np.sqrt(var + 1e-5) * gamma + beta  # fuse_conv_batchnorm's eps
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_small_layers(tmp_path):
    body = (
        "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"  # 0
        "[upsample]\nstride=2\n"  # 1: 4x16x16
        "[convolutional]\nfilters=4\nsize=1\nactivation=logistic\n"  # 2
        "[sam]\nfrom=-2\n"  # 3: layer2 * layer1
        "[avgpool]\n"  # 4: 4x1x1
        "[scale_channels]\nfrom=-2\n"  # 5: layer3 scaled by layer4
        "[dropout]\nprobability=.5\n"  # 6
        "[connected]\noutput=6\nactivation=linear\n"  # 7
        "[softmax]\ngroups=2\n"  # 8
        "[cost]\ntype=sse\n"  # 9
    )
    model = randomize(DarknetModel(write_cfg(tmp_path, body)))
    outs = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
    with torch.no_grad():
        y = model(torch.randn(2, 3, 8, 8))
    assert model.output_shapes[1] == (4, 16, 16)
    assert torch.equal(outs[1], outs[0].repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert torch.allclose(outs[3], outs[2] * outs[1])
    assert torch.allclose(outs[4], outs[3].mean((2, 3), keepdim=True), atol=1e-6)
    assert torch.allclose(outs[5], outs[3] * outs[4])
    assert torch.equal(outs[6], outs[5])
    lin = model.layers[7].linear
    assert torch.allclose(outs[7].flatten(1), outs[6].flatten(1) @ lin.weight.T + lin.bias, atol=1e-6)
    groups = outs[7].reshape(2, 2, 3)
    assert torch.allclose(y.reshape(2, 2, 3), torch.softmax(groups, -1))
    assert y.shape == (2, 6, 1, 1)


# --------------------------------------------------------------------------- weights

TINY = (
    "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=2\npad=1\nactivation=leaky\n"
    "[convolutional]\nfilters=6\nsize=3\ngroups=2\npad=1\nactivation=mish\n"
    "[connected]\noutput=5\nbatch_normalize=1\nactivation=linear\n"
    "[connected]\noutput=3\nactivation=logistic\n"
)


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


def test_unknown_section(tmp_path):
    path = write_cfg(tmp_path, "[convolutional]\nfilters=2\n\n[frobnicate]\nx=1\n")
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(path)
    assert_one_line(err, "t.cfg:9:", "[frobnicate]")


def test_unsupported_darknet_section(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, "[lstm]\noutput=2\n"))
    assert_one_line(err, "t.cfg:6:", "[lstm]", "not supported")


def test_unknown_option(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, "[convolutional]\nfilters=2\nfilterz=3\n"))
    assert_one_line(err, "t.cfg:8:", "filterz", "[convolutional]")


def test_duplicate_option(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, "[convolutional]\nfilters=2\nFilters=3\n"))
    assert_one_line(err, "t.cfg:8:", "filters", "line 7")


def test_duplicate_net_option_takes_the_first_as_darknet(tmp_path):
    # Darknet's option_find returns the first match; cfgs rely on it ("# Testing" batch=1 before
    # "# Training" batch=64, e.g. yolov3-openimages.cfg).
    path = tmp_path / "n.cfg"
    path.write_text("[net]\nbatch=1\nheight=16\nwidth=16\nchannels=3\nbatch=64\nheight=32\n\n"
                    "[convolutional]\nfilters=2\nsize=1\n")
    cfg = parse_cfg(path)
    assert cfg.net.get_int("batch") == 1 and cfg.height == 16 and cfg.net.options["batch"].line == 2


def test_blank_between_numbers_is_refused(tmp_path):
    body = "[convolutional]\nfilters=18\nsize=1\n\n[yolo]\nmask=0,1,2\nanchors=1,2, 3,4    5,6\nnum=3\nclasses=1\n"
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(write_cfg(tmp_path, body))
    assert_one_line(err, "t.cfg:12:", "anchors=", "'4    5'", "comma is missing", "45")


@pytest.mark.parametrize("layers,words", [("-99", "points before the first layer"), ("1", "not an earlier one"),
                                          ("-1,5", "not an earlier one")])
def test_dangling_route(tmp_path, layers, words):
    body = "[convolutional]\nfilters=2\nsize=1\n\n[route]\nlayers = " + layers + "\n"
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(write_cfg(tmp_path, body))
    assert_one_line(err, "t.cfg:11:", "[route]", f"layers={layers}", words, "layer 1")


@pytest.mark.parametrize(
    "body,words",
    [
        ("[shortcut]\nfrom=-1\nweights_type=per_channel\n", ["t.cfg:8:", "weights_type=per_channel", "not supported"]),
        ("[maxpool]\nsize=2\nstride=2\nantialiasing=1\n", ["t.cfg:9:", "antialiasing", "not supported"]),
        ("[maxpool]\nmaxpool_depth=1\nout_channels=2\n", ["t.cfg:8:", "out_channels=2", "divide the 3"]),
        ("[convolutional]\nfilters=2\nactivation=sparkle\n", ["t.cfg:8:", "unknown activation=sparkle"]),
        ("[convolutional]\nfilters=two\n", ["t.cfg:7:", "filters=two", "not an integer"]),
        ("[convolutional]\nfilters=254\nsize=1\n[yolo]\nmask=0,1,2\nnum=3\nanchors=1,2,3,4,5,6\nclasses=80\n",
         ["t.cfg:9:", "[yolo]", "filters=255"]),
        ("[convolutional]\nfilters=4\nsize=1\n[route]\nlayers=-1\n[route]\nlayers=-2,-1\ngroups=3\n",
         ["t.cfg:13:", "groups=3"]),
    ],
)
def test_bad_layers_name_the_line(tmp_path, body, words):
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(write_cfg(tmp_path, body))
    assert_one_line(err, *words)


def test_missing_files(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(tmp_path / "nope.cfg")
    assert_one_line(err, "nope.cfg", "not found")
    with pytest.raises(EdgeCSPError) as err:
        read_weights(tmp_path / "nope.weights")
    assert_one_line(err, "nope.weights", "not found")


def test_module_darknet_cannot_hold(tmp_path):
    with pytest.raises(EdgeCSPError) as err:
        save_darknet_weights_from(nn.Sequential(nn.Conv2d(1, 1, 1), nn.LayerNorm(4)), tmp_path / "x.weights")
    assert_one_line(err, "LayerNorm")
    with pytest.raises(EdgeCSPError) as err:
        save_darknet_weights_from(nn.Sequential(nn.BatchNorm2d(1), nn.Conv2d(1, 1, 1)), tmp_path / "x.weights")
    assert_one_line(err, "BatchNorm '0'", "does not directly follow")


def test_input_too_small_is_reported(tmp_path):
    path = write_cfg(tmp_path, "[convolutional]\nfilters=2\nsize=5\nstride=1\n", size=3)
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(path)
    assert_one_line(err, "t.cfg:6:", "too small")
    assert math.isfinite(DarknetModel(path, input_size=5)(torch.rand(1, 3, 5, 5)).sum().item())


def test_darknet_defaults(tmp_path):
    """Missing activation= means logistic for conv/connected, linear for shortcut (Darknet's parser)."""
    path = tmp_path / "d.cfg"
    path.write_text(
        "[network]\nheight=4\nwidth=4\nchannels=2\n[conv]\nfilters=2\nsize=1\n"
        "[shortcut]\nfrom=-1\n[conn]\noutput=3\n"
    )
    model = randomize(DarknetModel(path))
    outs = {}
    for i, layer in enumerate(model.layers):
        layer.register_forward_hook(lambda m, a, o, i=i: outs.__setitem__(i, o))
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        y = model(x)
        conv = model.layers[0].conv
        assert torch.allclose(outs[0], torch.sigmoid(conv(x)))
        assert torch.allclose(outs[1], 2 * outs[0])
        lin = model.layers[2].linear
        assert torch.allclose(y.flatten(1), torch.sigmoid(outs[1].flatten(1) @ lin.weight.T + lin.bias))
