"""COCO evaluation, postprocessing, the demo detector's card numbers, detect/evaluate CLIs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgecsp.coco_eval import coco_metrics, evaluate, torch_predict_fn
from edgecsp.data.coco import resolve_dataset
from edgecsp.postprocess import nms, postprocess


def _ground_truth_results(dataset, jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    results = []
    for i, rec in enumerate(dataset.images):
        boxes, labels = dataset.targets(i)
        for box, label in zip(boxes, labels):
            x1, y1, x2, y2 = box + rng.normal(0, jitter, 4) * (box[2:] - box[:2]).repeat(2)
            results.append({"image_id": rec.id, "category_id": int(dataset.label_to_category_id(label)),
                            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": 0.9})
    return results


def test_ground_truth_as_predictions_scores_ap_one_and_perturbed_scores_lower(shapes_small):
    ds = resolve_dataset(shapes_small["val"])
    perfect = coco_metrics(ds, _ground_truth_results(ds))
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in perfect["per_class"].values())
    noisy = coco_metrics(ds, _ground_truth_results(ds, jitter=0.08))
    assert noisy["AP"] < 0.9 * perfect["AP"]
    assert noisy["AP75"] < noisy["AP50"]
    assert coco_metrics(ds, [])["AP"] == 0.0


def test_nms_keeps_the_best_of_overlapping_boxes_per_class():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]
    # postprocess is class-wise: the same overlapping boxes of two classes both survive.
    rows = np.zeros((2, 7), np.float32)
    rows[:, :4] = [[0, 0, 10, 10], [1, 1, 11, 11]]
    rows[:, 4] = 1.0
    rows[0, 5], rows[1, 6] = 0.9, 0.8
    det = postprocess(rows, None, score_threshold=0.1, iou_threshold=0.5)
    assert sorted(det.labels.tolist()) == [0, 1]


def test_demo_detector_reproduces_its_model_card_on_fresh_data(tmp_path):
    """The card promises AP50 >= 0.90 and AP >= 0.65 on freshly generated shapes data."""
    from edgecsp.data.shapes import generate_shapes
    from edgecsp.models.checkpoint import resolve_model

    split = generate_shapes(tmp_path, n_train=0, n_val=60, seed=4242, workers=1)["val"]
    model, desc = resolve_model("demo")
    assert desc["class_names"] == ["circle", "square", "triangle", "pentagon", "star", "cross"]
    metrics = evaluate(torch_predict_fn(model), resolve_dataset(split), model.config.input_size, progress=False)
    assert metrics["AP50"] >= 0.90 and metrics["AP"] >= 0.65, metrics


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_evaluate_cli_json_and_bad_input(shapes_small, tmp_path):
    r = _run("edgecsp.evaluate", "--model", "demo", "--data", str(shapes_small["val"]), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert 0.0 <= out["AP"] <= out["AP50"] <= 1.0 and set(out["per_class"]) >= {"circle", "cross"}
    r = _run("edgecsp.evaluate", "--data", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    r = _run("edgecsp.evaluate", "--model", str(bad), "--data", str(shapes_small["val"]))
    assert r.returncode == 2 and "safetensors" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_detect_cli_writes_drawn_images_and_json(shapes_small, tmp_path):
    images = sorted((shapes_small["val"] / "images").iterdir())[:2]
    r = _run("edgecsp.detect", *map(str, images), "--out", str(tmp_path / "det"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert len(report) == 2 and all(len(item["detections"]) >= 1 for item in report)
    assert all((tmp_path / "det" / f"{p.stem}.png").is_file() for p in images)
    r = _run("edgecsp.detect", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "det2"))
    assert r.returncode == 2 and not (tmp_path / "det2").exists()


def test_detect_cli_json_is_the_result_on_stdout_and_progress_on_stderr(shapes_small, tmp_path):
    images = sorted((shapes_small["val"] / "images").iterdir())[:2]
    r = _run("edgecsp.detect", *map(str, images), "--out", str(tmp_path / "det"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads((tmp_path / "det" / "detections.json").read_text())
    assert [line.split(": ")[0] for line in r.stderr.splitlines()] == [str(p) for p in images]


def test_one_default_score_and_iou_threshold_for_every_command():
    """detect, a loaded artifact, the NMS an export or a TensorRT engine ends in: the same thresholds."""
    import inspect

    from edgecsp import export
    from edgecsp.backends.tensorrt.qdq import add_efficient_nms
    from edgecsp.detect import build_parser
    from edgecsp.onnx_writer import NMSOptions
    from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE
    from edgecsp.predictor import Predictor

    detect = build_parser().parse_args([__file__, "--out", "x"])
    loaded = inspect.signature(Predictor.__call__).parameters
    nms = inspect.signature(add_efficient_nms).parameters
    assert (detect.score, detect.iou) == (DEFAULT_SCORE, DEFAULT_IOU)
    assert (loaded["score_threshold"].default, loaded["iou_threshold"].default) == (DEFAULT_SCORE, DEFAULT_IOU)
    assert (NMSOptions().score, NMSOptions().iou) == (DEFAULT_SCORE, DEFAULT_IOU)
    assert (export._ONNX_ONLY["score"], export._ONNX_ONLY["iou"]) == (DEFAULT_SCORE, DEFAULT_IOU)
    assert (nms["score_threshold"].default, nms["iou_threshold"].default) == (DEFAULT_SCORE, DEFAULT_IOU)
