"""A Darknet cfg + .weights + .names through every command: loading, checkpoints, training,
export, compile (CPU targets and the Jetson bundle), load and evaluation.

A small two-level cfg keeps it fast; the published cfgs are covered by test_darknet*.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgecsp.darknet import DarknetModel, parse_cfg_text
from edgecsp.data.preprocess import letterbox
from edgecsp.errors import EdgeCSPError
from edgecsp.models.checkpoint import ModelSource, load_checkpoint, resolve_model, save_checkpoint
from edgecsp.models.darknet_detector import DarknetDetector, config_from_cfg_text, read_names

# Two [yolo] levels (strides 8 and 16), 3 classes, YOLOv4-tiny style: route/groups, maxpool, upsample.
TINY_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-1,-3

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=32
size=3
stride=1
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask=0,1,2
anchors=6,8, 10,12, 14,20, 20,26, 30,34, 44,50
classes=3
num=6
scale_x_y=1.05

[route]
layers=-3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=2
pad=1
activation=leaky

[convolutional]
size=1
stride=1
pad=1
filters=24
activation=linear

[yolo]
mask=3,4,5
anchors=6,8, 10,12, 14,20, 20,26, 30,34, 44,50
classes=3
num=6
scale_x_y=1.05
"""


@pytest.fixture(scope="module")
def darknet_files(tmp_path_factory):
    """tiny.cfg, tiny.weights (random but fixed), tiny.names."""
    root = tmp_path_factory.mktemp("darknet")
    (root / "tiny.cfg").write_text(TINY_CFG)
    torch.manual_seed(1)
    net = DarknetModel(parse_cfg_text(TINY_CFG), input_size=64)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics, as trained weights have
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    net.save_weights(root / "tiny.weights")
    (root / "tiny.names").write_text("circle\nsquare\ntriangle\n")
    return root


def _darknet_decode(net: DarknetModel, x: torch.Tensor) -> torch.Tensor:
    """Darknet's get_yolo_box/forward_yolo_layer for new_coords=0, written out independently."""
    rows = []
    for layer, raw in zip(net.yolo_layers, net(x)):
        n, _, h, w = raw.shape
        a = len(layer.anchors)
        p = raw.view(n, a, -1, h, w)
        s = layer.scale_x_y
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        bx = (torch.sigmoid(p[:, :, 0]) * s - (s - 1) / 2 + gx) * layer.stride
        by = (torch.sigmoid(p[:, :, 1]) * s - (s - 1) / 2 + gy) * layer.stride
        aw = torch.tensor([an[0] for an in layer.anchors]).view(1, a, 1, 1)
        ah = torch.tensor([an[1] for an in layer.anchors]).view(1, a, 1, 1)
        bw, bh = torch.exp(p[:, :, 2]) * aw, torch.exp(p[:, :, 3]) * ah
        box = torch.stack([bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2], -1)
        scores = torch.sigmoid(p[:, :, 4:]).permute(0, 1, 3, 4, 2)
        rows.append((layer.stride, torch.cat([box, scores], -1).reshape(n, -1, 5 + layer.classes)))
    return torch.cat([r for _, r in sorted(rows, key=lambda t: t[0])], 1)


def test_cfg_weights_names_is_a_detector_with_darknets_decode(darknet_files):
    model, description = resolve_model(ModelSource(str(darknet_files / "tiny.cfg"), str(darknet_files / "tiny.weights"),
                                                    str(darknet_files / "tiny.names")))
    assert description["class_names"] == ["circle", "square", "triangle"]
    assert description["architecture"]["darknet_config"]["source"] == "tiny.cfg"
    assert description["preprocessing"]["resize"] == "stretch"  # no letter_box=1: Darknet stretches
    assert model.config.strides == (8, 16) and model.config.num_classes == 3
    net = DarknetModel(parse_cfg_text(TINY_CFG), input_size=64).eval()
    net.load_weights(darknet_files / "tiny.weights")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, ref = model.predict(x), _darknet_decode(net, x)
    assert ours.shape == (2, 3 * (8 * 8 + 4 * 4), 8)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-5)


def test_new_coords_logistic_moves_into_the_head():
    """Scaled-YOLOv4: logistic in the conv before [yolo], then xy*scale, (2p)^2 * anchor, scores as is."""
    text = TINY_CFG.replace("activation=linear", "activation=logistic").replace("scale_x_y=1.05", "scale_x_y=2.0\nnew_coords=1")
    config = config_from_cfg_text(text, "nc.cfg")
    torch.manual_seed(0)
    model = DarknetDetector(config).eval()
    net = DarknetModel(parse_cfg_text(text), input_size=64).eval()
    net.load_state_dict(model.body.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, raws = model.predict(x), net(x)  # net keeps Darknet's logistic in the conv
    layer, p = net.yolo_layers[0], raws[0].view(1, 3, 8, 8, 8)
    _, gx = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    bx = (p[:, :, 0] * 2.0 - 0.5 + gx) * 8
    bw = (2 * p[:, :, 2]) ** 2 * torch.tensor([a[0] for a in layer.anchors]).view(1, 3, 1, 1)
    first = ours[:, : 3 * 64].view(1, 3, 8, 8, 8)
    torch.testing.assert_close((first[..., 0] + first[..., 2]) / 2, bx, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(first[..., 2] - first[..., 0], bw, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(first[..., 4:], p[:, :, 4:].permute(0, 1, 3, 4, 2), atol=1e-6, rtol=1e-5)


def test_stretch_maps_boxes_both_ways():
    image = np.zeros((100, 200, 3), np.uint8)
    out, info = letterbox(image, 64, mode="stretch")
    assert out.shape == (64, 64, 3) and info.pad_x == info.pad_y == 0
    box = np.array([[20.0, 10.0, 120.0, 90.0]])
    np.testing.assert_allclose(info.to_letterbox(box), [[6.4, 6.4, 38.4, 57.6]], rtol=1e-6)
    np.testing.assert_allclose(info.to_original(info.to_letterbox(box)), box, rtol=1e-5)


def test_checkpoint_keeps_the_cfg_and_writes_back(darknet_files, tmp_path):
    model, description = resolve_model(ModelSource(str(darknet_files / "tiny.cfg"), str(darknet_files / "tiny.weights")))
    path = save_checkpoint(tmp_path / "tiny.safetensors", model, description)
    again, desc2 = load_checkpoint(path)
    assert isinstance(again, DarknetDetector) and desc2["architecture"] == description["architecture"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.predict(x), model.predict(x))
    again.save_darknet(tmp_path / "back.cfg", tmp_path / "back.weights")
    assert (tmp_path / "back.weights").read_bytes() == (darknet_files / "tiny.weights").read_bytes()
    assert parse_cfg_text((tmp_path / "back.cfg").read_text()).height == 64


def test_new_class_count_keeps_all_but_the_prediction_convs(darknet_files):
    model, _ = resolve_model(ModelSource(str(darknet_files / "tiny.cfg"), str(darknet_files / "tiny.weights")))
    from edgecsp.models.darknet_detector import load_darknet_detector

    tuned, desc = load_darknet_detector(darknet_files / "tiny.cfg", darknet_files / "tiny.weights", num_classes=5)
    assert tuned.config.num_classes == 5 and len(desc["class_names"]) == 5
    pred = {id(c) for c in tuned.prediction_convs()}
    names = {n for n, m in tuned.named_modules() if id(m) in pred}
    old = model.state_dict()
    for key, value in tuned.state_dict().items():
        if key.rsplit(".", 1)[0] in names:
            assert value.shape[0] == 3 * (5 + 5)
        elif key in old:
            assert torch.equal(value, old[key]), key


@pytest.mark.parametrize("make, expect", [
    (lambda d: ModelSource(str(d / "tiny.weights")), "is a Darknet .weights file; pass its .cfg as --model"),
    (lambda d: ModelSource(str(d / "tiny.cfg"), str(d / "tiny.cfg")), "is a text file, not Darknet .weights"),
    (lambda d: ModelSource(str(d / "tiny.cfg"), str(d / "tiny.weights"), str(d / "tiny.weights")), "not a .names file"),
    (lambda d: ModelSource("demo", str(d / "tiny.weights")), "goes with a Darknet .cfg"),
    (lambda d: ModelSource(str(d / "tiny.names")), "is a Darknet .names file"),
])
def test_wrong_file_types_say_which_file_goes_where(darknet_files, make, expect):
    with pytest.raises(EdgeCSPError, match=expect) as info:
        resolve_model(make(darknet_files))
    assert "\n" not in str(info.value)


def test_names_that_do_not_match_the_cfg_are_refused_by_name(darknet_files, tmp_path):
    (tmp_path / "four.names").write_text("a\nb\nc\nd\n")
    with pytest.raises(EdgeCSPError, match="four.names has 4 class names but tiny.cfg has classes=3"):
        resolve_model(ModelSource(str(darknet_files / "tiny.cfg"), str(darknet_files / "tiny.weights"),
                                  str(tmp_path / "four.names")))
    assert read_names(darknet_files / "tiny.names") == ["circle", "square", "triangle"]


def test_truncated_weights_are_refused(darknet_files, tmp_path):
    data = (darknet_files / "tiny.weights").read_bytes()
    (tmp_path / "cut.weights").write_bytes(data[: 20 + 4 * ((len(data) - 20) // 8)])  # half the floats
    with pytest.raises(EdgeCSPError, match="truncated or made for another cfg"):
        resolve_model(ModelSource(str(darknet_files / "tiny.cfg"), str(tmp_path / "cut.weights")))


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, timeout=600, check=False)


@pytest.fixture(scope="module")
def shapes_small(tmp_path_factory):
    """A small shapes set with 3 classes is not available, so the cfg gets the shapes task's 6."""
    from edgecsp.data.shapes import generate_shapes

    root = tmp_path_factory.mktemp("shapes")
    generate_shapes(root, n_train=24, n_val=12, seed=5)
    return root


def test_train_export_compile_load_from_a_cfg(darknet_files, shapes_small, tmp_path):
    """The whole path for a cfg: train (fine-tune to 6 classes), compile for ONNX Runtime INT8 and the
    Jetson bundle, load the artifact, evaluate it: every command takes --model X.cfg --weights."""
    cfg, weights = str(darknet_files / "tiny.cfg"), str(darknet_files / "tiny.weights")
    out = tmp_path / "tuned.safetensors"
    r = _run("edgecsp.train", "--model", cfg, "--weights", weights, "--data", str(shapes_small / "train"),
             "--epochs", "1", "--batch", "8", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    tuned, desc = load_checkpoint(out)
    assert isinstance(tuned, DarknetDetector) and tuned.config.num_classes == 6
    from edgecsp.data.shapes import CLASS_NAMES

    assert desc["class_names"] == list(CLASS_NAMES)  # the data set's names: tiny.names is not given

    # A cfg trained with 3 classes does not silently get a fresh head for 6-class data.
    r = _run("edgecsp.evaluate", "--model", cfg, "--weights", weights, "--data", str(shapes_small / "val"))
    assert r.returncode == 2 and "3 classes" in r.stderr and r.stderr.count("\n") == 1, r.stderr

    for target, extra in (("onnxruntime", ["--precision", "int8"]), ("jetson", [])):
        art = tmp_path / f"art-{target}"
        r = _run("edgecsp.compile", "--target", target, "--model", str(out), "--data", str(shapes_small / "val"),
                 "--verify-images", "6", "--allow-accuracy-drop", "--out", str(art), *extra, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
        manifest = json.loads((art / "manifest.json").read_text())
        assert manifest["preprocessing"]["resize"] == "stretch"
        assert manifest["model"]["config"]["source"] == "tiny.cfg"
        assert manifest["outputs"][0]["shape"][1] == 3 * (8 * 8 + 4 * 4)

    import edgecsp

    image = np.random.default_rng(0).integers(0, 255, (50, 90, 3), dtype=np.uint8)
    with edgecsp.load(tmp_path / "art-onnxruntime") as detector:
        assert detector.resize == "stretch"
        dets = detector([image], score_threshold=0.0)
    assert len(dets) == 1 and (dets[0].boxes[:, 2] <= 90 + 1e-3).all() and (dets[0].boxes[:, 3] <= 50 + 1e-3).all()
    r = _run("edgecsp.evaluate", "--artifact", str(tmp_path / "art-onnxruntime"), "--data", str(shapes_small / "val"),
             "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    assert 0.0 <= json.loads(r.stdout)["AP50"] <= 1.0


def test_nightly_suite_takes_darknet_models(darknet_files, tmp_path):
    from edgecsp.bench.suite import load_suite

    suite = tmp_path / "s.toml"
    suite.write_text(f'[suite]\nmodels = ["demo", {{cfg = "{darknet_files}/tiny.cfg", weights = "{darknet_files}/tiny.weights"}}]\n'
                     'targets = ["onnxruntime"]\nprecisions = ["int8"]\n')
    jobs = load_suite(suite).matrix()
    assert [j.name for j in jobs] == ["demo/onnxruntime/int8", "tiny/onnxruntime/int8"]
    assert isinstance(jobs[1].model, ModelSource) and jobs[1].model.weights.endswith("tiny.weights")
    (tmp_path / "bad.toml").write_text('[suite]\nmodels = [{weights = "x.weights"}]\ntargets = ["onnxruntime"]\n')
    with pytest.raises(EdgeCSPError, match="must be a name or path, or a table"):
        load_suite(tmp_path / "bad.toml")


def test_size_limits_follow_the_machines_memory(monkeypatch):
    """A model is refused only when the memory it needs is not there, and the message says so."""
    from edgecsp.resources import available_memory

    monkeypatch.setenv("EDGECSP_MAX_MEMORY_MB", "16")
    assert available_memory() == 16 * 2**20
    wide = TINY_CFG.replace("filters=32\nsize=3", "filters=1024\nsize=3")  # ~300k params: 3.5 MB at 12 B each
    config_from_cfg_text(wide, "wide.cfg")  # fits in 16 MB
    wider = TINY_CFG.replace("filters=32\nsize=3", "filters=20000\nsize=3")  # ~5.8 M params: 69 MB
    with pytest.raises(EdgeCSPError, match=r"wider.cfg:\d+: .*parameters, which need about \d+ MiB of memory; "
                                           r"this machine has 16 MiB available"):
        config_from_cfg_text(wider, "wider.cfg")
    monkeypatch.delenv("EDGECSP_MAX_MEMORY_MB")
    config_from_cfg_text(wider, "wider.cfg")  # the same cfg where the memory is there
