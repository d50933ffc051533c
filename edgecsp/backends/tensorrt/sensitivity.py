"""Per-layer INT8 sensitivity of the Jetson Q/DQ model: keep the few costliest convs in float.

What NNCF's accuracy control does for OpenVINO and Polygraphy's ``debug precision`` for TensorRT,
on the Q/DQ model itself:
  1. rank: for each quantized conv, the Q/DQ at its input and weight is removed (the conv reads the
     float tensor and its original FP32 weight), and the model's output error against FP32 on a
     few calibration images is measured; the drop in error is that layer's cost;
  2. greedy: the costliest layers are floated one at a time, each kept only if the validation AP50
     rises, until the drop against FP32 is inside the tolerance (or ``max_layers`` were tried).
A floated conv gets no Q/DQ, so TensorRT runs it in the float precision of its input (FP32 in the
Q/DQ model, FP16 in the FP16-typed one); the Q/DQ elsewhere and TensorRT's rules are unchanged.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from edgecsp.backends.tensorrt.qdq import QUANTIZED_OPS, drop_dead_qdq

PredictFn = Callable[[np.ndarray], np.ndarray]


def quantized_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the convs whose data input comes through a DequantizeLinear."""
    dq_out = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.input[0] in dq_out]


def float_convs(qdq: onnx.ModelProto, fp32: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``qdq`` with these convs in float: input straight from the tensor the Q read,
    weight the FP32 model's own; Q/DQ and int8 weights nobody reads any more are dropped."""
    names = set(names)
    model = copy.deepcopy(qdq)
    producers = {o: n for n in model.graph.node for o in n.output}
    fp32_weight = {n.name: n.input[1] for n in fp32.graph.node if n.op_type in QUANTIZED_OPS}
    fp32_inits = {t.name: t for t in fp32.graph.initializer}
    have = {t.name for t in model.graph.initializer}
    for n in model.graph.node:
        if n.name not in names or n.op_type not in QUANTIZED_OPS:
            continue
        dq = producers.get(n.input[0])
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            n.input[0] = q.input[0]
        weight = fp32_weight.get(n.name)
        if weight in fp32_inits:
            if weight not in have:
                model.graph.initializer.append(copy.deepcopy(fp32_inits[weight]))
                have.add(weight)
            n.input[1] = weight
    drop_dead_qdq(model)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def output_error(out: np.ndarray, ref: np.ndarray, input_size: int) -> float:
    """Error of decoded predictions (N, K, 5 + C) against FP32's, weighted by FP32's objectness:
    class scores (objectness x probability) plus box corners in input sizes, where objects are."""
    w = ref[..., 4]
    score = np.abs(out[..., 4:5] * out[..., 5:] - ref[..., 4:5] * ref[..., 5:]).sum(-1)
    box = np.abs(out[..., :4] - ref[..., :4]).sum(-1) / float(input_size)
    return float((w * (score + box)).sum() / max(float(w.sum()), 1e-9))


@dataclass
class SensitivityReport:
    ranking: list[dict[str, Any]]  # every quantized conv: its output-error cost, costliest first
    floated: list[dict[str, Any]] = field(default_factory=list)  # kept float: conv, AP50 gain (points)
    tried: list[dict[str, Any]] = field(default_factory=list)  # floated, no AP50 gain: quantized again
    ap50_drop_before: float = 0.0  # points, against FP32
    ap50_drop_after: float = 0.0
    tolerance_points: float = 0.0

    def as_dict(self, top: int = 10) -> dict[str, Any]:
        return {"metric": "output error vs FP32 removed by floating the conv alone (calibration images); "
                          "greedy AP50 on the validation images", "ranking_top": self.ranking[:top],
                "quantized_convs": len(self.ranking), "kept_float": self.floated, "tried": self.tried,
                "ap50_drop_points_before": self.ap50_drop_before, "ap50_drop_points_after": self.ap50_drop_after,
                "tolerance_points": self.tolerance_points}


class _Sessions:
    """ONNX Runtime runs of in-memory models (saved to a private temporary folder)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="edgecsp-sensitivity-")
        self._n = 0

    def predict_fn(self, model: onnx.ModelProto) -> Any:
        from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner

        self._n += 1
        path = Path(self._dir.name) / f"m{self._n}.onnx"
        onnx.save(model, str(path))
        return OnnxModelRunner(path)

    def close(self) -> None:
        self._dir.cleanup()


def rank_layers(qdq: onnx.ModelProto, fp32: onnx.ModelProto, images: np.ndarray,
                progress: Callable[[str], None] = lambda line: None,
                layers: list[str] | None = None) -> list[dict[str, Any]]:
    """Each quantized conv's cost: how much of the Q/DQ model's output error vs FP32 goes away when
    that conv alone is float (``images``: a few preprocessed NCHW float32 calibration images;
    ``layers``: only these convs, default all)."""
    size = int(images.shape[-1])
    sessions = _Sessions()
    try:
        def run(model: onnx.ModelProto) -> np.ndarray:
            r = sessions.predict_fn(model)
            try:
                return r.run(images)
            finally:
                r.close()

        ref = run(fp32)
        base = output_error(run(qdq), ref, size)
        names = [n for n in quantized_convs(qdq) if layers is None or n in layers]
        ranking = []
        for i, name in enumerate(names):
            err = output_error(run(float_convs(qdq, fp32, [name])), ref, size)
            ranking.append({"conv": name, "output_error_cost": round(base - err, 6),
                            "cost_fraction": round((base - err) / base, 4) if base > 0 else 0.0})
            if (i + 1) % 10 == 0:
                progress(f"      sensitivity: {i + 1}/{len(names)} layers")
    finally:
        sessions.close()
    return sorted(ranking, key=lambda r: -r["output_error_cost"])


def keep_costliest_float(qdq: onnx.ModelProto, fp32: onnx.ModelProto, calibration_images: np.ndarray,
                         validate: Callable[[PredictFn], float], tolerance_points: float, max_layers: int = 8,
                         fp32_ap50: float | None = None, progress: Callable[[str], None] = lambda line: None,
                         layers: list[str] | None = None) -> tuple[onnx.ModelProto, SensitivityReport]:
    """The Q/DQ model with the costliest convs floated until its AP50 drop (``validate``: AP50 of
    a predict function on validation images) is inside ``tolerance_points``; and the report."""
    sessions = _Sessions()
    try:
        def ap50(model: onnx.ModelProto) -> float:
            r = sessions.predict_fn(model)
            try:
                return float(validate(r.run))
            finally:
                r.close()

        ref = ap50(fp32) if fp32_ap50 is None else fp32_ap50
        current = ap50(qdq)
        report = SensitivityReport(ranking=rank_layers(qdq, fp32, calibration_images, progress, layers),
                                   ap50_drop_before=round((ref - current) * 100, 3), tolerance_points=tolerance_points)
        chosen: list[str] = []
        model = qdq
        for entry in report.ranking[:max_layers]:
            if (ref - current) * 100 <= tolerance_points:
                break
            candidate = float_convs(qdq, fp32, [*chosen, entry["conv"]])
            score = ap50(candidate)
            step = {"conv": entry["conv"], "ap50_gain_points": round((score - current) * 100, 3),
                    "output_error_cost": entry["output_error_cost"]}
            if score > current:
                chosen.append(entry["conv"])
                model, current = candidate, score
                report.floated.append(step)
            else:
                report.tried.append(step)
            kept = entry["conv"] in chosen
            progress(f"      float {entry['conv']}: AP50 {score:.4f} ({'kept' if kept else 'no gain: quantized again'})")
        report.ap50_drop_after = round((ref - current) * 100, 3)
    finally:
        sessions.close()
    return model, report
