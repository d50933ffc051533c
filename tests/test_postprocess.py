"""Postprocessing: NMS per class, and one default score/IoU threshold for every command."""

from __future__ import annotations

import numpy as np

from edgecsp.postprocess import nms, postprocess


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
