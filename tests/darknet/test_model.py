"""The Darknet graph in PyTorch: the shared cfgs build, each layer computes what Darknet computes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from darknet_files import ALL_CFGS, CLASSIFIERS, DETECTORS, assert_one_line, randomize, shared_cfg, write_cfg
from torch import nn

from edgecsp.darknet import (
    DarknetModel,
    parse_cfg,
    save_darknet_weights_from,
)
from edgecsp.errors import EdgeCSPError

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


@pytest.mark.parametrize("reverse", [0, 1])
def test_reorg_matches_darknet(tmp_path, reverse):
    path = write_cfg(tmp_path, f"[reorg]\nstride=2\nreverse={reverse}\n", size=4, channels=8)
    model = DarknetModel(path)
    x = torch.randn(1, 8, 4, 4)
    y = model(x)[0]
    assert tuple(y.shape) == model.output_shapes[0]
    np.testing.assert_array_equal(y.numpy().reshape(-1), darknet_reorg(x[0].numpy(), 2, bool(reverse)))


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
