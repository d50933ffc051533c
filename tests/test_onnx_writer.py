"""ONNX export: parity with PyTorch on real images, dynamic batch, in-graph NMS, metadata,
failures that leave nothing behind, and the CLI.

The demo detector is exported twice per module (dynamic batch with onnxslim; dynamic batch
with NMS, unsimplified); the other checks reuse those files or build tiny graphs.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from testpaths import REPO as ROOT

from edgecsp import __version__
from edgecsp.data import shapes
from edgecsp.data.coco import resolve_dataset
from edgecsp.data.preprocess import letterbox, to_tensor_batch
from edgecsp.data.shapes import ensure_shapes_val
from edgecsp.errors import EdgeCSPError
from edgecsp.models.checkpoint import resolve_model
from edgecsp.models.detector import Detector
from edgecsp.onnx_graph import head_nodes
from edgecsp.onnx_writer import (
    BOX_TOLERANCE_PX,
    SCORE_TOLERANCE,
    NMSOptions,
    _match_detections,
    append_nms,
    export_onnx,
    read_metadata,
)
from edgecsp.postprocess import postprocess


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory):
    # The default validation set's first images (same seed), without generating all 200.
    return ensure_shapes_val(tmp_path_factory.mktemp("val"), n=4, seed=shapes.DEFAULT_VAL_SEED, workers=1)


@pytest.fixture(scope="module")
def images(val_dir):
    ds = resolve_dataset(val_dir)
    return [ds[i][0] for i in range(len(ds))]


@pytest.fixture(scope="module")
def demo():
    return resolve_model("demo")


@pytest.fixture(scope="module")
def dynamic_export(demo, images, tmp_path_factory):
    model, description = demo
    out = tmp_path_factory.mktemp("dyn") / "model.onnx"
    return export_onnx(model, out, batch="dynamic", parity_images=images, description=description)


@pytest.fixture(scope="module")
def nms_export(demo, images, tmp_path_factory):
    model, description = demo
    out = tmp_path_factory.mktemp("nms") / "model.onnx"
    return export_onnx(model, out, batch="dynamic", nms=True, simplify=False, parity_images=images,
                       description=description)


def _batch(images, idx, size=320):
    return to_tensor_batch([letterbox(images[i], size)[0] for i in idx])


def _torch(model, x):
    with torch.inference_mode():
        return model.predict(torch.from_numpy(x)).numpy()


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------- plain export


def test_dynamic_export_matches_torch_at_batch_1_2_3(dynamic_export, demo, images):
    model, _ = demo
    r = dynamic_export
    onnx.checker.check_model(onnx.load(str(r.path)), full_check=True)
    assert [s.name for s in r.inputs] == ["images"] and r.inputs[0].shape == ("batch", 3, 320, 320)
    assert [s.name for s in r.outputs] == ["predictions"]
    assert r.outputs[0].shape == ("batch", 3 * (40 * 40 + 20 * 20 + 10 * 10), 11)
    session = _session(r.path)
    for idx in ([0], [1, 2], [3, 0, 2]):
        x = _batch(images, idx)
        out = session.run(None, {"images": x})[0]
        ref = _torch(model, x)
        assert out.shape == ref.shape == (len(idx), 6300, 11)
        assert np.abs(out[..., :4] - ref[..., :4]).max() <= BOX_TOLERANCE_PX
        assert np.abs(out[..., 4:] - ref[..., 4:]).max() <= SCORE_TOLERANCE
    # the report's figures are real: the parity ran at batch 1 and 2, onnxslim shrank the graph
    assert r.parity_batches == [1, 2, 1] and r.parity_images == 4
    assert 0 < r.max_abs_diff <= BOX_TOLERANCE_PX
    assert r.simplified and r.nodes_after < r.nodes_before
    data = r.path.read_bytes()
    assert r.sha256 == hashlib.sha256(data).hexdigest() and r.size_bytes == len(data)
    assert not [p for p in r.path.parent.iterdir() if p.name != "model.onnx"]  # no temp file left


def test_metadata(dynamic_export, demo):
    model, description = demo
    meta = read_metadata(dynamic_export.path)
    assert meta["edgecsp_version"] == __version__
    assert meta["output_contract"] == "edgecsp-onnx/1" and meta["output_format"] == "predictions"
    assert json.loads(meta["class_names"]) == description["class_names"]
    assert json.loads(meta["input_size"]) == [320, 320]
    assert json.loads(meta["anchors"]) == [list(a) for a in model.config.anchors]
    assert json.loads(meta["strides"]) == [8, 16, 32]
    assert json.loads(meta["preprocessing"])["pad_value"] == 114
    assert meta["batch"] == "dynamic"


def test_head_nodes_find_prediction_convs_and_nms(dynamic_export, nms_export):
    for path in (dynamic_export.path, nms_export.path):
        proto = onnx.load(str(path))
        by_name = {n.name: n for n in proto.graph.node}
        head = head_nodes(proto)
        assert sum(by_name[n].op_type == "Conv" for n in head) == 3  # one prediction conv per level
        assert not any(n.startswith("/backbone/") for n in head)
    assert "/nms/NonMaxSuppression" in head_nodes(nms_export.path)


def test_fixed_batch_default_parity_images(demo, val_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "default_val_dir", lambda progress=None: val_dir)
    model, _ = demo
    r = export_onnx(model, tmp_path / "sub" / "fixed.onnx", opset=13, simplify=False)
    assert r.parity_images == 4 and r.parity_batches == [1, 1, 1, 1]
    proto = onnx.load(str(r.path))
    assert proto.opset_import[0].version == 13
    assert r.inputs[0].shape == (1, 3, 320, 320)
    meta = read_metadata(r.path)
    assert json.loads(meta["class_names"]) == [f"class{i}" for i in range(6)]  # no description given
    with pytest.raises(Exception, match="images"):
        _session(r.path).run(None, {"images": np.zeros((2, 3, 320, 320), np.float32)})


def test_onnxslim_failure_keeps_unsimplified_graph(demo, images, tmp_path, monkeypatch):
    import onnxslim

    def broken(*args, **kwargs):
        raise RuntimeError("simulated onnxslim crash")

    monkeypatch.setattr(onnxslim, "slim", broken)
    model, _ = demo
    r = export_onnx(model, tmp_path / "m.onnx", parity_images=images[:1])
    assert not r.simplified and "simulated onnxslim crash" in r.simplify_note
    assert r.nodes_after == r.nodes_before and r.path.is_file()


# ----------------------------------------------------------------------------- in-graph NMS


def test_nms_two_different_images_in_one_batch(nms_export, demo, images):
    model, _ = demo
    opts = NMSOptions()
    assert [s.name for s in nms_export.outputs] == ["detections", "num_detections"]
    assert nms_export.outputs[0].shape == ("batch", 100, 6) and nms_export.outputs[1].dtype == "int64"
    session = _session(nms_export.path)
    x = _batch(images, [1, 2])
    dets, nums = session.run(None, {"images": x})
    assert dets.shape == (2, 100, 6) and nums.shape == (2,) and nums.dtype == np.int64
    preds = _torch(model, x)
    for b in range(2):
        ref = postprocess(preds[b], None, opts.score, opts.iou, opts.max_det, pre_nms_top_k=6300)
        n = int(nums[b])
        assert n == len(ref) > 0
        np.testing.assert_allclose(dets[b, :n, :4], ref.boxes, atol=1e-3)
        np.testing.assert_allclose(dets[b, :n, 4], ref.scores, atol=1e-4)
        np.testing.assert_array_equal(dets[b, :n, 5], ref.labels)
        assert np.all(dets[b, n:, :5] == 0) and np.all(dets[b, n:, 5] == -1)
    # the second image's detections are its own, not a copy of the first's
    assert nums[0] != nums[1] or not np.allclose(dets[0], dets[1])
    # and do not depend on what else is in the batch
    single, _ = session.run(None, {"images": x[1:]})
    np.testing.assert_allclose(single[0], dets[1], atol=1e-4)
    assert nms_export.nms == opts and nms_export.nms_max_abs_diff is not None
    assert json.loads(read_metadata(nms_export.path)["nms"]) == {"iou": 0.5, "score": 0.25, "max_det": 100}


def _predictions_graph(num_boxes: int, num_classes: int, opset: int) -> onnx.ModelProto:
    shape = ["batch", num_boxes, 5 + num_classes]
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["predictions"], name="/head/Identity")], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("predictions", TensorProto.FLOAT, shape)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _synthetic_predictions(rng, k: int, c: int, clusters: int) -> np.ndarray:
    # Boxes jittered around a few objects: within a cluster they overlap well above the IoU limit.
    pick = rng.integers(0, clusters, k)
    centres = rng.uniform(40, 280, size=(clusters, 2))[pick] + rng.normal(0, 1.5, (k, 2))
    wh = rng.uniform(20, 60, size=(clusters, 2))[pick] * rng.uniform(0.93, 1.07, (k, 1))
    boxes = np.concatenate([centres - wh / 2, centres + wh / 2], axis=1)
    return np.concatenate([boxes, rng.uniform(0, 1, (k, 1)), rng.uniform(0, 1, (k, c))], axis=1).astype(np.float32)


@pytest.mark.parametrize("opset", [11, 17])
def test_append_nms_equals_numpy_postprocess_per_image(opset):
    k, c, opts = 300, 4, NMSOptions(iou=0.45, score=0.2, max_det=15)
    rng = np.random.default_rng(opset)
    batch = np.stack([
        _synthetic_predictions(rng, k, c, clusters=2),  # fewer than max_det survive NMS
        _synthetic_predictions(rng, k, c, clusters=200),  # many survive: the max_det cut applies
        _synthetic_predictions(rng, k, c, clusters=3) * np.array([1, 1, 1, 1, 0] + [1] * c, np.float32),  # empty
        _synthetic_predictions(rng, k, c, clusters=3),
    ])
    proto = append_nms(_predictions_graph(k, c, opset), c, opts, opset)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    dets, nums = session.run(None, {"images": batch})
    assert dets.shape == (4, 15, 6)
    counts = []
    for b in range(4):
        ref = postprocess(batch[b], None, opts.score, opts.iou, opts.max_det, pre_nms_top_k=k)
        n = int(nums[b])
        counts.append(n)
        assert n == len(ref)
        np.testing.assert_allclose(dets[b, :n, :4], ref.boxes, atol=1e-5)
        np.testing.assert_allclose(dets[b, :n, 4], ref.scores, atol=1e-6)
        np.testing.assert_array_equal(dets[b, :n, 5], ref.labels)
        assert np.all(dets[b, n:] == np.array([0, 0, 0, 0, 0, -1], np.float32))
    assert 0 < counts[0] < 15 and counts[1] == 15 and counts[2] == 0 and counts[3] > 0


def test_match_detections_accepts_ties_only():
    opts = NMSOptions()
    a = np.array([[10, 10, 50, 50, 0.9, 0], [100, 100, 150, 150, 0.8, 1]], np.float32)
    tied = a.copy()
    tied[1, :4] += 7  # NMS kept the other of two equally scored boxes
    assert _match_detections(a, a, opts) == 0.0
    assert _match_detections(tied, a, opts) == 0.0
    other = tied.copy()
    other[1, 4] = 0.7  # not a tie: a real disagreement
    assert _match_detections(other, a, opts) is None
    assert _match_detections(a[:1], a, opts) is None
    relabelled = a.copy()
    relabelled[0, 5] = 2
    assert _match_detections(relabelled, a, opts) is None


# ----------------------------------------------------------------------------- failures


class _Unexportable(Detector):
    def predict(self, x):
        return torch.special.i0(super().predict(x))  # no ONNX symbolic for aten::i0


class _TraceFrozen(Detector):
    def predict(self, x):
        # A Python float from the data: tracing freezes the dummy input's value into the graph.
        return super().predict(x) * float(x.mean() + 1)


def _variant(cls, demo):
    model, _ = demo
    net = cls(model.config)
    net.load_state_dict(model.state_dict())
    return net.eval()


@pytest.mark.parametrize("cls, message", [(_Unexportable, "export failed: "), (_TraceFrozen, "differs from PyTorch")])
def test_failing_export_leaves_nothing(cls, message, demo, images, tmp_path, capfd):
    out = tmp_path / "new" / "model.onnx"
    with pytest.raises(EdgeCSPError, match=message) as err:
        export_onnx(_variant(cls, demo), out, parity_images=images[:2], simplify=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "new").exists()  # neither the file, a temp file, nor the made directory
    captured = capfd.readouterr()
    assert "Torch IR graph" not in captured.out + captured.err  # the exporter's native dump is silenced


def test_unwritable_destination(demo, images, tmp_path):
    model, _ = demo
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(EdgeCSPError, match="cannot write"):
        export_onnx(model, blocker / "model.onnx", parity_images=images[:1])
    with pytest.raises(EdgeCSPError, match="is a directory"):
        export_onnx(model, tmp_path, parity_images=images[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 9}, "opset must be"),
    ({"batch": 0}, "batch must be"),
    ({"batch": "auto"}, "batch must be"),
    ({"input_size": 300}, "multiple of the model's largest stride"),
    ({"nms": True, "nms_options": {"iou": 2.0}}, "iou threshold"),
    ({"nms": True, "nms_options": {"topk": 3}}, "unknown NMS option"),
    ({"parity_images": []}, "parity_images is empty"),
])
def test_bad_arguments(kwargs, message, demo, tmp_path):
    model, _ = demo
    with pytest.raises(EdgeCSPError, match=message):
        export_onnx(model, tmp_path / "m.onnx", **kwargs)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- CLI


def test_cli_bad_model_path_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "edgecsp.export", "--model", str(tmp_path / "missing.safetensors"),
                           "--out", str(tmp_path / "m.onnx")], check=False, cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_cli_prints_report(val_dir, tmp_path, monkeypatch, capsys):
    from edgecsp import cli
    from edgecsp.export import main

    monkeypatch.setattr(shapes, "default_val_dir", lambda progress=None: val_dir)
    out = tmp_path / "cli.onnx"
    assert cli.run(main, ["--out", str(out), "--no-simplify", "--batch", "dynamic", "--nms", "--max-det", "20"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "parity vs PyTorch" in text and "in-graph NMS" in text
    assert "detections float32 [batch, 20, 6]" in text
    with pytest.raises(SystemExit) as exit_:  # refused by the option's type, before any export
        cli.run(main, ["--out", str(tmp_path / "x.onnx"), "--opset", "5"])
    assert exit_.value.code == 2 and "--opset: expected an integer from 11 to 20" in capsys.readouterr().err
