"""Training: anchors, the loss, a tiny run that learns, resume = uninterrupted, checkpoints."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from edgecsp.data.coco import resolve_dataset
from edgecsp.errors import EdgeCSPError
from edgecsp.models.checkpoint import describe, load_checkpoint, read_checkpoint, save_checkpoint
from edgecsp.models.detector import build_detector
from edgecsp.training.anchors import anchor_fitness, fit_anchors
from edgecsp.training.loss import YoloLoss, box_ciou
from edgecsp.training.trainer import TrainSettings, train


def test_fit_anchors_recovers_clusters():
    rng = np.random.default_rng(0)
    centers = np.array([[10, 12], [30, 20], [60, 90]], float)
    wh = np.concatenate([c * rng.uniform(0.9, 1.1, size=(200, 2)) for c in centers])
    anchors = np.array(fit_anchors(wh, k=3, seed=1))
    assert np.allclose(anchors, centers, rtol=0.08)
    assert anchor_fitness(wh, anchors.tolist()) > anchor_fitness(wh, [(5, 5), (6, 6), (7, 7)])


def test_fit_anchors_needs_enough_boxes():
    with pytest.raises(EdgeCSPError, match="at least 9 boxes"):
        fit_anchors(np.ones((3, 2)) * 10)


def test_ciou_is_one_for_identical_and_lower_for_shifted_boxes():
    a = torch.tensor([[50.0, 50.0, 20.0, 30.0]])
    assert torch.allclose(box_ciou(a, a), torch.ones(1), atol=1e-5)
    shifted = a + torch.tensor([[5.0, 0, 0, 0]])
    assert box_ciou(shifted, a) < 0.9


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = build_detector("csp-tiny-efm", num_classes=3, input_size=128)
    loss_fn = YoloLoss(model.head)
    x = torch.rand(2, 3, 128, 128)
    targets = torch.tensor([[0, 1, 40, 50, 30, 30], [1, 2, 90, 70, 50, 40]], dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    first = None
    for _ in range(15):
        loss, _ = loss_fn(model(x), targets)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first


def _tiny(shapes_small, out, epochs, resume=False, stop_after=None):
    dataset = resolve_dataset(shapes_small["train"])
    model = build_detector("csp-tiny-efm", num_classes=6, input_size=128)
    settings = TrainSettings(epochs=epochs, batch=8, lr=3e-3, warmup_iters=4, seed=5, stop_after=stop_after)
    return train(model, dataset, out, settings, name="csp-tiny-efm", resume=resume)


def test_tiny_training_run_lowers_loss_and_resume_equals_straight_run(shapes_small, tmp_path):
    straight = _tiny(shapes_small, tmp_path / "a" / "m.safetensors", epochs=3)
    _, meta = read_checkpoint(straight)
    history = meta["training"]["history"]
    total = [h["box"] + h["obj"] + h["cls"] for h in history]
    assert total[-1] < total[0]

    resumed_path = tmp_path / "b" / "m.safetensors"
    _tiny(shapes_small, resumed_path, epochs=3, stop_after=2)  # an interrupted run
    _tiny(shapes_small, resumed_path, epochs=3, resume=True)  # continues at epoch 3
    a, _ = read_checkpoint(straight)
    b, meta_b = read_checkpoint(resumed_path)
    assert len(meta_b["training"]["history"]) == 3
    assert set(a) == set(b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_checkpoint_round_trip_and_description(tmp_path):
    model = build_detector("csp-tiny-efm", num_classes=4, input_size=160).eval()
    path = save_checkpoint(tmp_path / "m.safetensors", model, describe(model, list("abcd"), {"epochs": 1}, name="x"))
    loaded, desc = load_checkpoint(path)
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        assert torch.equal(model.predict(x), loaded.predict(x))
    assert desc["class_names"] == list("abcd") and desc["input_size"] == [160, 160]
    assert desc["preprocessing"]["resize"] == "letterbox"


def test_a_checkpoint_is_on_disk_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    # fsync before the rename: after a power cut the path holds the old checkpoint or the whole new one.
    import os

    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(len(renamed)), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (renamed.append(str(b)), real_replace(a, b))[1])
    model = build_detector("csp-tiny-efm", num_classes=2, input_size=64)
    path = save_checkpoint(tmp_path / "m.safetensors", model, describe(model, ["a", "b"], {}, name="x"))
    assert renamed == [str(path)] and synced == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_corrupt_and_mismatched_checkpoints_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(EdgeCSPError, match="not a readable safetensors"):
        load_checkpoint(bad)
    with pytest.raises(EdgeCSPError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    model = build_detector("csp-tiny-efm", num_classes=4, input_size=160)
    desc = describe(model, list("abcd"))
    desc["architecture"]["detector_config"]["num_classes"] = 5  # weights are for 4 classes
    desc["class_names"] = list("abcde")
    path = save_checkpoint(tmp_path / "m.safetensors", model, desc)
    with pytest.raises(EdgeCSPError, match="does not match its architecture"):
        load_checkpoint(path)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(EdgeCSPError, match="no edgecsp description"):
        load_checkpoint(tmp_path / "plain.safetensors")


def test_train_cli_rejects_class_mismatch_and_missing_data(tmp_path, shapes_small):
    cmd = [sys.executable, "-m", "edgecsp.train", "--data", str(tmp_path / "nothing"), "--epochs", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
