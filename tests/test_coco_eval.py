"""COCO evaluation with pycocotools, and the demo detector's model card reproduced on fresh data."""

from __future__ import annotations

import numpy as np
import pytest

from edgecsp.coco_eval import coco_metrics, evaluate, torch_predict_fn
from edgecsp.data.coco import resolve_dataset


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


def test_demo_detector_reproduces_its_model_card_on_fresh_data(tmp_path):
    """The card promises AP50 >= 0.90 and AP >= 0.65 on freshly generated shapes data."""
    from edgecsp.data.shapes import generate_shapes
    from edgecsp.models.checkpoint import resolve_model

    split = generate_shapes(tmp_path, n_train=0, n_val=60, seed=4242, workers=1)["val"]
    model, desc = resolve_model("demo")
    assert desc["class_names"] == ["circle", "square", "triangle", "pentagon", "star", "cross"]
    metrics = evaluate(torch_predict_fn(model), resolve_dataset(split), model.config.input_size, progress=False)
    assert metrics["AP50"] >= 0.90 and metrics["AP"] >= 0.65, metrics
