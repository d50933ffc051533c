"""The numpy COCO evaluator (edgecsp.cocoap) a device uses instead of pycocotools: same numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecsp.coco_eval import coco_metrics, predict_dataset, torch_predict_fn
from edgecsp.cocoap import Boxes, evaluate_boxes
from edgecsp.data.coco import resolve_dataset


def _as_boxes(results: list[dict]) -> Boxes:
    return Boxes([r["image_id"] for r in results], np.asarray([r["bbox"] for r in results]).reshape(-1, 4),
                 [r["category_id"] for r in results], score=[r["score"] for r in results])


def _ground_truth(path) -> Boxes:
    anns = json.loads(path.read_text())["annotations"]
    return Boxes([a["image_id"] for a in anns], np.asarray([a["bbox"] for a in anns]).reshape(-1, 4),
                 [a["category_id"] for a in anns], iscrowd=[a.get("iscrowd", 0) for a in anns],
                 area=[a["area"] for a in anns])


def test_matches_pycocotools_on_the_demo_detectors_detections(shapes_small):
    from edgecsp.models.checkpoint import resolve_model

    model, _ = resolve_model("demo")
    ds = resolve_dataset(shapes_small["val"])
    n = 24
    results = predict_dataset(torch_predict_fn(model), ds, model.config.input_size, progress=False, max_images=n)
    ids = [ds.images[i].id for i in range(n)]
    ref = coco_metrics(ds, results, ids)
    ours = evaluate_boxes(_ground_truth(ds.annotations_path), _as_boxes(results), ids, ds.category_ids)
    assert len(results) > 5 * n  # real detections down to score 0.001, not only the hits
    for key in ("AP", "AP50", "AP75"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-3), key
    # A weaker detector (scores shuffled) moves both the same way: the evaluator is not constant.
    rng = np.random.default_rng(0)
    shuffled = [{**r, "score": float(s)} for r, s in zip(results, rng.permutation([r["score"] for r in results]))]
    ref2 = coco_metrics(ds, shuffled, ids)
    ours2 = evaluate_boxes(_ground_truth(ds.annotations_path), _as_boxes(shuffled), ids, ds.category_ids)
    assert ours2["AP"] == pytest.approx(ref2["AP"], abs=1e-3) and ours2["AP"] < ours["AP"] - 0.1


def test_matches_pycocotools_on_crowds_ties_missing_classes_and_empty_images(tmp_path):
    """Random boxes with the awkward cases: crowd regions, equal scores, a class with no ground
    truth, an image with detections but no boxes, more than 100 detections in one image."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.png"} for i in range(1, 9)]
    cats = [{"id": c, "name": f"c{c}"} for c in (1, 2, 5)]
    anns, results = [], []
    for img in images[:-1]:
        for _ in range(rng.integers(1, 6)):
            x, y, w, h = (float(v) for v in (*rng.uniform(0, 150, 2), *rng.uniform(5, 50, 2)))
            cat = int(rng.choice([1, 2]))  # class 5 never has ground truth
            anns.append({"id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": int(rng.random() < 0.15)})
            for _ in range(rng.integers(0, 4)):
                jit = rng.normal(0, 0.15, 4) * [w, h, w, h]
                results.append({"image_id": img["id"], "category_id": cat,
                                "bbox": [x + jit[0], y + jit[1], abs(w + jit[2]) + 1, abs(h + jit[3]) + 1],
                                "score": float(rng.choice([0.3, 0.5, 0.9, rng.random()]))})
    for img in images:  # clutter, incl. the image without ground truth and 120 boxes in image 1
        for _ in range(120 if img["id"] == 1 else 6):
            results.append({"image_id": img["id"], "category_id": int(rng.choice([1, 2, 5])),
                            "bbox": [float(v) for v in (*rng.uniform(0, 150, 2), *rng.uniform(5, 60, 2))],
                            "score": float(rng.random() * 0.5)})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "categories": cats, "annotations": anns}))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ours = evaluate_boxes(_ground_truth(path), _as_boxes(results), [i["id"] for i in images], [1, 2, 5])
    assert 0.05 < ev.stats[0] < 0.95  # neither trivial nor empty
    assert ours["AP"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert ours["AP50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert ours["AP75"] == pytest.approx(ev.stats[2], abs=1e-6)
