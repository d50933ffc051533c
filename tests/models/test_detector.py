"""The zoo detectors: the same networks as the published detector cfgs, Darknet's YOLO decoding, ONNX export.

For each published cfg the native detector must have the same params and BFLOPs as the imported
``DarknetModel``, give the same raw maps with the same weights (written by one, read by the
other, which also proves the module order is Darknet's layer order), and decode them as Darknet's
[yolo] layer does. The decode reference below is written from Darknet's formulas, per level with
the cfg's masked anchors and scale_x_y, and shares no code with ``edgecsp.models.head``.
"""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from testpaths import CFG_DIR

from edgecsp.complexity import profile
from edgecsp.darknet import DarknetModel, load_darknet_weights_into, save_darknet_weights_from
from edgecsp.models.detector import DETECTORS, build_detector

# published cfg -> the zoo detector that claims to be the same network
PUBLISHED = {
    "csresnet50-panet-spp": "cspresnet50-panet-spp",
    "csresnext50-panet-spp": "cspresnext50-panet-spp",
    "csdarknet53-panet-spp": "cspdarknet53-panet-spp",
    "csresnext50-panet-spp-original-optimal": "cspresnext50-panet-spp-optimal",
}
SIZE = 128  # small input for the numeric checks; the complexity check uses the cfg's own size

needs_cfgs = pytest.mark.skipif(not CFG_DIR.is_dir(), reason=f"published Darknet cfgs not found at {CFG_DIR}")



def trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --- same network as the cfg ------------------------------------------------------------------


@needs_cfgs
@pytest.mark.parametrize("cfg", list(PUBLISHED))
def test_same_params_and_bflops_as_the_cfg(cfg):
    with torch.device("meta"):  # shapes only
        imported = DarknetModel(CFG_DIR / f"{cfg}.cfg")
        native = build_detector(PUBLISHED[cfg])
    _, h, w = imported.input_shape
    assert (h, w) == (native.config.input_size,) * 2  # the zoo config keeps the cfg's input size
    assert trainable(native) == trainable(imported)
    ours, theirs = profile(native, (h, w)), profile(imported, (h, w))
    assert ours["bflops"] == theirs["bflops"]
    assert ours["cio"] == theirs["cio"]


@pytest.fixture(scope="module", params=list(PUBLISHED))
def pair(request, tmp_path_factory):
    """Imported cfg with random weights, the native detector loaded with them, both run on one image."""
    if not CFG_DIR.is_dir():
        pytest.skip(f"published Darknet cfgs not found at {CFG_DIR}")
    cfg = request.param
    torch.manual_seed(0)
    imported = DarknetModel(CFG_DIR / f"{cfg}.cfg", input_size=SIZE).eval()
    yolo = [i for i, s in enumerate(imported.cfg.layers) if s.type == "yolo"]
    with torch.no_grad():
        # Non-trivial BatchNorm, so a conv paired with the wrong BN shows.
        for m in imported.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
        # Random nets give raw maps near 0, where sigmoid is ~0.5 and scale_x_y has no effect;
        # spread the prediction convs' outputs to a few units so every decode term matters.
        x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
        for i, raw in zip(yolo, imported(x)):
            pred = imported.layers[i - 1].conv
            pred.weight.mul_(1.5 / raw.std())
            pred.bias.uniform_(-1.5, 1.5)
        want = imported(x)
    path = tmp_path_factory.mktemp("weights") / f"{cfg}.weights"
    save_darknet_weights_from(imported, path)
    native = build_detector(PUBLISHED[cfg]).eval()
    load_darknet_weights_into(native, path)
    path.unlink()  # up to 260 MB each
    with torch.no_grad():
        got = native(x)
        decoded = native.head(got)
    yield SimpleNamespace(cfg=cfg, imported=imported, native=native, yolo=yolo, want=want, got=got,
                          decoded=decoded)


@needs_cfgs
def test_same_raw_outputs_with_the_same_weights(pair):
    assert len(pair.got) == len(pair.want) == 3
    for got, want in zip(pair.got, pair.want):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def darknet_decode(raw: np.ndarray, section, input_hw: tuple[int, int]) -> np.ndarray:
    """Darknet's [yolo] decoding of one raw map (C, H, W), in float64, as (A*H*W, 5 + classes) rows.

    x = (sigmoid(tx) * s - (s - 1) / 2 + cx) * stride_x, w = exp(tw) * anchor_w (pixels), objectness
    and classes through the logistic; rows ordered anchor, y, x (Darknet's entry order); boxes as corners.
    """
    mask = section.get_ints("mask")
    anchors = section.get_floats("anchors")
    classes = section.get_int("classes")
    s = section.get_float("scale_x_y", 1.0)
    _, h, w = raw.shape
    stride_y, stride_x = input_hw[0] / h, input_hw[1] / w
    p = raw.astype(np.float64).reshape(len(mask), 5 + classes, h, w)
    sig = lambda v: 1 / (1 + np.exp(-v))
    cy, cx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    rows = []
    for a, m in enumerate(mask):
        x = (sig(p[a, 0]) * s - (s - 1) / 2 + cx) * stride_x
        y = (sig(p[a, 1]) * s - (s - 1) / 2 + cy) * stride_y
        bw = np.exp(p[a, 2]) * anchors[2 * m]
        bh = np.exp(p[a, 3]) * anchors[2 * m + 1]
        fields = [x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2, sig(p[a, 4]), *sig(p[a, 5:])]
        rows.append(np.stack(fields, axis=-1).reshape(h * w, 5 + classes))
    return np.concatenate(rows)


@needs_cfgs
def test_decode_matches_darknet_yolo_layers(pair):
    sections = [pair.imported.cfg.layers[i] for i in pair.yolo]
    raws = [r[0].numpy() for r in pair.want]
    for raw, section in zip(raws, sections):
        tw_th = raw.reshape(len(section.get_ints("mask")), -1, *raw.shape[1:])[:, 2:4]
        assert tw_th.max() < 10  # the native head clamps exp's argument at 10; Darknet does not
        assert raw.std() > 0.5  # the decode terms are exercised, not just sigmoid(0)
    expected = np.concatenate([darknet_decode(r, s, (SIZE, SIZE)) for r, s in zip(raws, sections)])
    got = pair.decoded[0].numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    scales = [s.get_float("scale_x_y", 1.0) for s in sections]
    if pair.cfg.endswith("optimal"):
        assert scales == [1.2, 1.1, 1.05]  # per level in the cfg, and the decode above used them
        # ... and they matter at this precision: decoding with s = 1 is visibly different.
        plain = np.concatenate([darknet_decode(r, _Unscaled(s), (SIZE, SIZE)) for r, s in zip(raws, sections)])
        assert np.abs(plain[:, :4] - expected[:, :4]).max() > 0.1


class _Unscaled:
    """A cfg section seen without its scale_x_y."""

    def __init__(self, section):
        self.section = section

    def __getattr__(self, name):
        return getattr(self.section, name)

    def get_float(self, key, default=None):
        return default if key == "scale_x_y" else self.section.get_float(key, default)


# --- every named detector exports to ONNX and runs the same in ONNX Runtime -------------------


class Predict(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.predict(x)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("name", list(DETECTORS))
def test_onnx_export_matches_pytorch(name):
    onnx = pytest.importorskip("onnx", reason="onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    torch.manual_seed(0)
    # eval() on the wrapper too: export restores the wrapper's mode recursively, and a fresh
    # module is in training mode, which would switch the detector's BatchNorm to batch statistics.
    model = Predict(build_detector(name)).eval()
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(x).numpy()
    buf = io.BytesIO()
    torch.onnx.export(model, x, buf, dynamo=False, opset_version=17, input_names=["images"],
                      output_names=["detections"])
    data = buf.getvalue()
    onnx.checker.check_model(data)  # the serialized model: no second copy of up to 260 MB
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"images": x.numpy()})
    levels = DETECTORS[name].strides
    per_level = len(DETECTORS[name].anchors) // len(levels)
    assert got.shape == expected.shape == (1, per_level * sum((SIZE // s) ** 2 for s in levels), 85)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
