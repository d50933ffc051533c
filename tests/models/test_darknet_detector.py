"""Darknet [yolo] cfgs as detectors: every published cfg builds with Darknet's parameter count, the
decode equals Darknet's get_yolo_box formulas, .weights round trips, and the layers added for
them (share_index, xnor, reorg3d, local_avgpool, channel maxout) follow Darknet's C loops.

References are written here from Darknet's formulas (src/yolo_layer.c, blas.c reorg_cpu,
maxpool_layer.c, local_avgpool in maxpool_layer.c, the xnor GEMM in gemm.c), not taken from
this package's outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from darknet_files import randomize
from testpaths import CFG_DIR as SHARED_CFGS
from torch import nn

from edgecsp.darknet import DarknetModel, darknet_param_count, parse_cfg
from edgecsp.errors import EdgeCSPError
from edgecsp.models.darknet_detector import DarknetDetector, config_from_cfg_text, load_darknet_detector

CFG_DIR = SHARED_CFGS if SHARED_CFGS.is_dir() else None
# The two [yolo] cfgs outside what edgecsp deploys (issue 11), and the one with a typo in its anchors.
OUT_OF_SCOPE = {"yolov3-tiny_occlusion_track.cfg": "[crnn]", "yolov4-tiny_contrastive.cfg": "[contrastive]"}
TYPO = {"cspx-p7-mish_hp.cfg"}


def yolo_cfgs() -> list[str]:
    if CFG_DIR is None:
        return []
    return sorted(str(p.relative_to(CFG_DIR)) for p in CFG_DIR.rglob("*.cfg") if "[yolo]" in p.read_text())


def shared(name: str) -> Path:
    if CFG_DIR is None:
        pytest.skip("shared Darknet cfgs (shared/darknet-cfg) not found beside the checkout")
    return CFG_DIR / name


def write_cfg(tmp_path: Path, body: str, size: int = 16, channels: int = 3, name: str = "t.cfg") -> Path:
    path = tmp_path / name
    path.write_text(f"[net]\nheight={size}\nwidth={size}\nchannels={channels}\n\n{body}")
    return path


def darknet_count(model: DarknetModel) -> int:
    """The float count of Darknet's .weights for the cfg, from parser.c's load_weights: per conv
    without share_index, n*(c/groups)*k*k (groups=1 on xnor layers) + n biases (+3n with BN);
    per connected, in*out + out (+3 out with BN)."""
    total = 0
    shapes = [model.input_shape] + [info.out_shape for info in model.layer_info]
    for section, c_in in zip(model.cfg.layers, shapes):
        bn = section.get_int("batch_normalize", 0) or section.get_int("cbn", 0)
        if section.type == "convolutional" and not section.has("share_index"):
            n, k = section.get_int("filters", 1), section.get_int("size", 1)
            groups = 1 if section.get_int("xnor", 0) else section.get_int("groups", 1)
            total += n * (c_in[0] // groups) * k * k + (4 * n if bn else n)
        elif section.type == "connected":
            out = section.get_int("output", 1)
            total += c_in[0] * c_in[1] * c_in[2] * out + (4 * out if bn else out)
    return total


# --------------------------------------------------------------------- every published cfg


@pytest.mark.parametrize("name", yolo_cfgs() or ["(none)"])
def test_every_yolo_cfg_builds_with_darknets_parameter_count(name):
    path = shared(name)
    text = path.read_text()
    base = Path(name).name
    if base in OUT_OF_SCOPE:
        with pytest.raises(EdgeCSPError) as err:
            config_from_cfg_text(text, str(path))
        message = str(err.value)
        assert "\n" not in message and OUT_OF_SCOPE[base] in message and f"{base}:" in message
        assert "outside what edgecsp deploys" in message
        return
    if base in TYPO:
        with pytest.raises(EdgeCSPError) as err:
            config_from_cfg_text(text, str(path))
        message = str(err.value)
        line = next(i for i, t in enumerate(text.splitlines(), 1) if t.startswith("anchors"))
        assert "\n" not in message and f"{base}:{line}:" in message and "anchors=" in message
        assert "comma is missing" in message and "4561" in message
        return
    config = config_from_cfg_text(text, str(path))
    with torch.device("meta"):
        model = DarknetDetector(config)
    assert darknet_param_count(model.body) == darknet_count(model.body)
    # Trainable parameters are the .weights floats less BN running statistics (2 per BN channel).
    stats = sum(m.running_mean.numel() * 2 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert sum(p.numel() for p in model.parameters()) + stats == darknet_count(model.body)
    yolo = [s for s in model.body.cfg.layers if s.type == "yolo"]
    assert len(config.levels) == len(yolo) and list(config.strides) == sorted(config.strides)


def test_shared_data_present():
    names = yolo_cfgs()
    if not names:
        pytest.skip("shared Darknet cfgs not found")
    assert len([n for n in names if n.startswith("alexeyab/")]) == 41


# --------------------------------------------------------------------- decode = Darknet's


def darknet_decode(raws: list[torch.Tensor], body: DarknetModel, size: int) -> np.ndarray:
    """forward_yolo_layer + get_yolo_box on DarknetModel's raw [yolo] inputs, rows ordered as the
    head's (levels finest first, then anchor, row, column): x1, y1, x2, y2, obj, classes in pixels.

    new_coords=0: logistic on x, y, obj, classes; w = exp(tw) * anchor.
    new_coords=1: the conv already applied the logistic; w = (2 tw)^2 * anchor.
    Both: x = (i + tx * scale_x_y - (scale_x_y - 1) / 2) / lw (times the network width for pixels).
    """
    levels = []
    for raw, layer in zip(raws, body.yolo_layers):
        out = raw[0].double().numpy()
        a, k = len(layer.mask), 5 + layer.classes
        lh, lw = out.shape[1:]
        out = out.reshape(a, k, lh, lw)
        if not layer.new_coords:
            out = out.copy()
            for ch in [0, 1, *range(4, k)]:
                out[:, ch] = 1 / (1 + np.exp(-out[:, ch]))
        s = layer.scale_x_y
        rows = []
        for n in range(a):
            aw, ah = layer.anchors[n]
            for j in range(lh):
                for i in range(lw):
                    p = out[n, :, j, i]
                    x = (i + p[0] * s - 0.5 * (s - 1)) / lw * size
                    y = (j + p[1] * s - 0.5 * (s - 1)) / lh * size
                    if layer.new_coords:
                        w, h = p[2] * p[2] * 4 * aw, p[3] * p[3] * 4 * ah
                    else:
                        w, h = np.exp(p[2]) * aw, np.exp(p[3]) * ah
                    rows.append([x - w / 2, y - h / 2, x + w / 2, y + h / 2, *p[4:]])
        levels.append((size // lw, rows))
    return np.array([r for _, rows in sorted(levels, key=lambda t: t[0]) for r in rows])


DECODE_CFGS = ["alexeyab/yolov4-tiny.cfg", "alexeyab/yolov3-tiny.cfg", "alexeyab/yolov4-csp-s-mish.cfg",
               "alexeyab/yolov7-tiny.cfg", "alexeyab/yolov3-tiny_xnor.cfg"]


@pytest.mark.parametrize("name", DECODE_CFGS)
def test_decoded_output_is_darknets_formula(name):
    path = shared(name)
    size = 128
    config = config_from_cfg_text(path.read_text(), str(path), input_size=size)
    torch.manual_seed(0)
    detector = randomize(DarknetDetector(config))
    body = DarknetModel(parse_cfg(path), input_size=size).eval()
    body.load_state_dict(detector.body.state_dict())  # same weights, Darknet's own activations
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        got = detector.predict(x)[0].double().numpy()
        want = darknet_decode(body(x), body, size)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_five_level_decode_is_darknets_formula(tmp_path):
    # yolov3_5l.cfg's five levels (strides 2..32) on a small cfg with the same head layout.
    body = ["[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=2\npad=1\nactivation=leaky\n"]
    for level in range(5):
        if level:
            body.append("[route]\nlayers=-3\n\n[convolutional]\nfilters=8\nsize=3\nstride=2\npad=1\n"
                        "activation=leaky\n")
        body.append(f"[convolutional]\nfilters=7\nsize=1\nactivation=linear\n\n[yolo]\nmask={level}\n"
                    "anchors=4,5, 8,9, 16,12, 30,40, 60,50\nclasses=2\nnum=5\nscale_x_y=1.1\n")
    path = write_cfg(tmp_path, "\n".join(body), size=64)
    config = config_from_cfg_text(path.read_text(), str(path))
    assert config.strides == (2, 4, 8, 16, 32)
    torch.manual_seed(1)
    detector = randomize(DarknetDetector(config), seed=1)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = detector.predict(x)[1].double().numpy()
        want = darknet_decode([r[1:] for r in detector.body(x)], detector.body, 64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


# --------------------------------------------------------------------- .weights round trip


def test_weights_round_trip_through_the_detector_is_bit_exact(tmp_path):
    path = shared("alexeyab/yolov4-tiny.cfg")
    config = config_from_cfg_text(path.read_text(), str(path), input_size=128)
    model = randomize(DarknetDetector(config), seed=3)
    model.save_darknet(tmp_path / "m.cfg", tmp_path / "m.weights")
    again, _ = load_darknet_detector(tmp_path / "m.cfg", tmp_path / "m.weights")
    assert again.config.input_size == 128
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model.predict(x), again.predict(x))
    assert (tmp_path / "m.weights").stat().st_size == 20 + 4 * darknet_count(model.body)


# --------------------------------------------------------------------- share_index

SHARED = """[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=4
size=3
pad=1
activation=mish

[route]
layers=-2

[convolutional]
share_index=1
batch_normalize=1
filters=4
size=3
dilation=2
pad=1
activation=linear

[convolutional]
share_index=-3
batch_normalize=1
filters=4
size=3
stride=2
pad=1
activation=leaky
"""


def test_share_index_reuses_the_layers_kernel_bias_and_bn(tmp_path):
    model = randomize(DarknetModel(write_cfg(tmp_path, SHARED)), seed=4)
    source = model.layers[1]
    # Registered once: no parameters, buffers or state_dict entries of their own.
    assert not list(model.layers[3].parameters()) and not list(model.layers[3].state_dict())
    # conv 3->4 and 4->4, 3x3 with BN: kernels + gamma/beta (+ running stats in .weights), once each
    assert sum(p.numel() for p in model.parameters()) == (108 + 8) + (144 + 8)
    assert darknet_param_count(model) == darknet_count(model) == (108 + 16) + (144 + 16)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        feats = model.layers[0](x)
        bn = source.bn

        def norm(t):
            std = torch.sqrt(bn.running_var[:, None, None] + 1e-5)
            return (t - bn.running_mean[:, None, None]) / std * bn.weight[:, None, None] + bn.bias[:, None, None]

        dilated = norm(torch.nn.functional.conv2d(feats, source.conv.weight, None, 1, 2, 2))
        saved = {}

        def keep(i):
            return lambda m, a, out: saved.__setitem__(i, out)

        hooks = [model.layers[i].register_forward_hook(keep(i)) for i in (3, 4)]
        model(x)
        for h in hooks:
            h.remove()
        # layer 4 (share_index=-3 -> layer 1) reads layer 3's output, with stride 2
        strided = torch.nn.functional.leaky_relu(
            norm(torch.nn.functional.conv2d(saved[3], source.conv.weight, None, 2, 1)), 0.1)
    torch.testing.assert_close(saved[3], dilated, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saved[4], strided, rtol=1e-5, atol=1e-5)
    # Changing the source changes the sharing layers (one set of arrays, as in Darknet).
    with torch.no_grad():
        source.conv.weight.mul_(2)
    assert model.layers[3].conv.weight is source.conv.weight


def test_share_index_weights_round_trip_and_onnx(tmp_path):
    import onnxruntime as ort

    path = write_cfg(tmp_path, SHARED)
    model = randomize(DarknetModel(path), seed=5)
    model.save_weights(tmp_path / "s.weights")
    again = DarknetModel(path).eval()
    again.load_weights(tmp_path / "s.weights")
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
        assert torch.equal(want, again(x))
    torch.onnx.export(model, (x,), tmp_path / "s.onnx", opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("body,words", [
    ("[convolutional]\nfilters=4\nsize=3\n\n[convolutional]\nshare_index=0\nfilters=8\nsize=3\n",
     ["t.cfg:11:", "share_index=0", "filters 8 vs 4"]),
    ("[convolutional]\nfilters=4\nsize=1\n\n[convolutional]\nshare_index=5\nfilters=4\nsize=1\n",
     ["t.cfg:11:", "share_index=5", "earlier layer"]),
    ("[maxpool]\nsize=2\nstride=1\n\n[convolutional]\nshare_index=-1\nfilters=3\nsize=1\n",
     ["t.cfg:11:", "share_index=-1", "not a [convolutional]"]),
])
def test_bad_share_index_names_the_line(tmp_path, body, words):
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(write_cfg(tmp_path, body))
    text = str(err.value)
    assert "\n" not in text and all(w in text for w in words), text


# --------------------------------------------------------------------- xnor


def darknet_xnor(x: np.ndarray, weight: np.ndarray, pad: int, stride: int) -> np.ndarray:
    """gemm_nn_custom_bin_mean_transposed on im2col bits: (2 * matching bits - K) * mean|W_f|,
    the input's padding packed as 0 bits (sign -1); bit = value > 0."""
    n, c, size, _ = weight.shape
    xbits = np.pad(x > 0, ((0, 0), (pad, pad), (pad, pad)), constant_values=False)
    wbits = weight > 0
    mean = np.abs(weight).reshape(n, -1).mean(1)
    oh = (xbits.shape[1] - size) // stride + 1
    ow = (xbits.shape[2] - size) // stride + 1
    out = np.zeros((n, oh, ow))
    big_k = c * size * size
    for f in range(n):
        for j in range(oh):
            for i in range(ow):
                patch = xbits[:, j * stride:j * stride + size, i * stride:i * stride + size]
                count = np.count_nonzero(patch == wbits[f])
                out[f, j, i] = (2 * count - big_k) * mean[f]
    return out


XNOR = """[convolutional]
filters=8
size=3
pad=1
activation=leaky

[convolutional]
xnor=1
bin_output=1
batch_normalize=1
filters=6
size=3
stride={stride}
pad=1
activation=leaky
"""


@pytest.mark.parametrize("stride", [1, 2])
def test_xnor_conv_is_darknets_bit_gemm(tmp_path, stride):
    model = randomize(DarknetModel(write_cfg(tmp_path, XNOR.format(stride=stride), size=10)), seed=6)
    x = torch.randn(1, 3, 10, 10)
    with torch.no_grad():
        feats = model.layers[0](x)
        got = model(x)[0].numpy()
    layer = model.layers[1]
    bn = layer.bn
    raw = darknet_xnor(feats[0].numpy(), layer.conv.weight.detach().numpy(), 1, stride)
    with torch.no_grad():
        scale = (bn.weight / torch.sqrt(bn.running_var + 1e-5)).numpy()[:, None, None]
        want = (raw - bn.running_mean.numpy()[:, None, None]) * scale + bn.bias.numpy()[:, None, None]
    # bin_output=1: Darknet makes the activation linear (calculate_binary_weights).
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert model.layers[1].act.name == "linear"
    # The +-1 sums are whole numbers (exact like Darknet's popcount), so a sum of 0 is exactly 0.
    with torch.no_grad():
        scale = layer.conv.weight.abs().mean(dim=(1, 2, 3))[:, None, None]
        conv_out = layer.conv(feats)[0].numpy()
    ties = np.round(raw / scale.numpy()) == 0
    assert ties.any() and (conv_out[ties] == 0).all()


def test_xnor_ignores_groups_and_exports(tmp_path):
    import onnxruntime as ort

    body = XNOR.format(stride=1).replace("bin_output=1\n", "groups=2\n")
    model = randomize(DarknetModel(write_cfg(tmp_path, body, size=10)), seed=7)
    assert model.layers[1].conv.groups == 1 and darknet_param_count(model) == darknet_count(model)
    x = torch.randn(1, 3, 10, 10)
    torch.onnx.export(model, (x,), tmp_path / "x.onnx", opset_version=17, dynamo=False)
    session = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------- layers vs Darknet's loops


def test_reorg3d_is_darknets_reorg_cpu(tmp_path):
    model = DarknetModel(write_cfg(tmp_path, "[reorg3d]\nstride=2\n", size=8, channels=3))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        got = model(x).numpy()
    # reorg_layer.c forward (reverse=0): reorg_cpu(input, out_w, out_h, out_c, batch, stride, 0, output)
    s, (b_, c_, h_, w_) = 2, x.shape
    out_w, out_h, out_c = w_ // s, h_ // s, c_ * s * s
    src, dst = x.numpy().reshape(-1), np.zeros(got.size, np.float32)
    in_c = out_c // (s * s)
    for b in range(b_):
        for k in range(out_c):
            for j in range(out_h):
                for i in range(out_w):
                    in_index = i + out_w * (j + out_h * (k + out_c * b))
                    c2, offset = k % in_c, k // in_c
                    w2, h2 = i * s + offset % s, j * s + offset // s
                    out_index = w2 + out_w * s * (h2 + out_h * s * (c2 + in_c * b))
                    dst[in_index] = src[out_index]  # forward=0 branch
    np.testing.assert_array_equal(got.reshape(-1), dst)


@pytest.mark.parametrize("size,stride,padding", [(3, 1, None), (2, 2, None), (3, 2, 1), (5, 1, 4)])
def test_local_avgpool_is_darknets_loop(tmp_path, size, stride, padding):
    extra = f"padding={padding}\n" if padding is not None else ""
    model = DarknetModel(write_cfg(tmp_path, f"[local_avgpool]\nsize={size}\nstride={stride}\n{extra}", size=7))
    x = torch.randn(1, 3, 7, 7)
    with torch.no_grad():
        got = model(x)[0].numpy()
    pad = size - 1 if padding is None else padding
    h = w = 7
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    want = np.zeros((3, oh, ow))
    for k in range(3):
        for i in range(oh):
            for j in range(ow):
                total, counter = 0.0, 0
                for n in range(size):
                    for m in range(size):
                        cur_h, cur_w = -(pad // 2) + i * stride + n, -(pad // 2) + j * stride + m  # C: -pad/2
                        if 0 <= cur_h < h and 0 <= cur_w < w:
                            counter += 1
                            total += float(x[0, k, cur_h, cur_w])
                want[k, i, j] = total / counter
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_channel_maxout_is_darknets_loop(tmp_path):
    model = DarknetModel(write_cfg(tmp_path, "[maxpool]\nmaxpool_depth=1\nout_channels=3\n", size=5, channels=12))
    x = torch.randn(1, 12, 5, 5)
    with torch.no_grad():
        got = model(x)[0].numpy()
    want = np.full((3, 5, 5), -np.inf)
    for g in range(3):
        for k in range(g, 12, 3):  # forward_maxpool_layer, maxpool_depth: k = g, g + out_c, ...
            want[g] = np.maximum(want[g], x[0, k].numpy())
    np.testing.assert_array_equal(got, want.astype(np.float32))


# --------------------------------------------------------------------- refusals


@pytest.mark.parametrize("section,what", [("crnn", "recurrent"), ("contrastive", "embedding"),
                                          ("region", "YOLOv2"), ("detection", "YOLOv1"),
                                          ("Gaussian_yolo", "Gaussian")])
def test_out_of_scope_layers_are_refused_in_one_line(tmp_path, section, what):
    path = write_cfg(tmp_path, f"[convolutional]\nfilters=4\nsize=1\n\n[{section}]\nclasses=1\n")
    with pytest.raises(EdgeCSPError) as err:
        parse_cfg(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith("t.cfg:10:") and f"[{section.lower()}]" in text.lower()
    assert what in text


def test_listed_anchors_beyond_num_are_used(tmp_path):
    # cspx-p7-mish.cfg: num=16, 20 anchors listed, masks up to 19; Darknet would read past its
    # 16-pair buffer, the listed anchors are explicit.
    body = ("[convolutional]\nfilters=12\nsize=1\n\n[yolo]\nmask=2,3\nanchors=1,2, 3,4, 5,6, 7,8\n"
            "num=2\nclasses=1\n")
    model = DarknetModel(write_cfg(tmp_path, body))
    assert model.yolo_layers[0].anchors == [(5.0, 6.0), (7.0, 8.0)]
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(write_cfg(tmp_path, body.replace("mask=2,3", "mask=3,4")))
    assert "t.cfg:11:" in str(err.value) and "anchor 4" in str(err.value) and "lists 4" in str(err.value)
    with pytest.raises(EdgeCSPError) as err:
        DarknetModel(write_cfg(tmp_path, body.replace("7,8", "7")))
    assert "odd count" in str(err.value) and "t.cfg:12:" in str(err.value)
