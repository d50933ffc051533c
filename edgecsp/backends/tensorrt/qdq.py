"""INT8 for TensorRT: an explicitly quantized (Q/DQ) ONNX that follows TensorRT's rules, and the
implicit-calibration cache with the very same scales.

TensorRT's rules for explicit quantization (its "Working with Quantized Types" chapter):
  * INT8 is symmetric: every zero-point is 0 (int8), scales are positive;
  * activations have one scale per tensor; weights one per output channel (axis 0 of a Conv
    weight), the weight feeding its DequantizeLinear directly;
  * Q/DQ sit at the *inputs* of the layers TensorRT runs in INT8 (Conv here): TensorRT fuses the
    DQ into the layer and the next layer's Q into its output, so a Q/DQ on a Conv output or on
    the bias only gets in the way (biases stay float);
  * activations stay explicit (ONNX Runtime would otherwise fold a Relu into the quantized range).
The detection head (prediction convs, box decode) stays float (edgecsp.onnx_graph.head_nodes).

ONNX Runtime's static quantizer writes the model (QDQ format with the options below); then
``check_tensorrt_qdq`` verifies the placement on the graph, so a change in ONNX Runtime's
defaults cannot silently produce a model TensorRT runs differently.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecsp.backends.base import static_batch
from edgecsp.backends.tensorrt.calibcache import (  # noqa: F401 - their home was here; the device imports calibcache
    CACHE_ALGORITHM,
    format_calibration_cache,
    parse_calibration_cache,
    retag_calibration_cache,
    trt_version_code,
)
from edgecsp.errors import EdgeCSPError, first_line
from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE

# Ops TensorRT runs in INT8 from Q/DQ at their inputs (the detectors here only have Conv).
QUANTIZED_OPS = ("Conv",)
# A Q/DQ on an Add input is TensorRT's residual pattern (fused into the conv that feeds the Add).
FUSED_RESIDUAL_OPS = ("Add",)
QDQ_OPSET = 17  # per-axis Q/DQ needs 13; TensorRT 8.2's parser reads up to 13..17 depending on release


@dataclass
class QdqReport:
    path: Path
    quantized_convs: int
    float_convs: list[str]  # convs left float (the head)
    activation_scales: dict[str, float]  # tensor -> scale (per tensor)
    method: str
    images: int
    problems: list[str] = field(default_factory=list)  # TensorRT-rule violations (empty when fine)


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _atomic_save(model: onnx.ModelProto, path: Path) -> None:
    from edgecsp.fsutil import atomic_write

    atomic_write(path, model.SerializeToString())


# --------------------------------------------------------------------------------------------
# Quantize


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a CalibrationSet."""

    def __init__(self, input_name: str, images: np.ndarray, batch: int):
        self._batches = [images[i:i + batch] for i in range(0, len(images), batch)]
        self._name = input_name
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._batches):
            return None
        self._i += 1
        return {self._name: np.ascontiguousarray(self._batches[self._i - 1], dtype=np.float32)}

    def rewind(self) -> None:
        self._i = 0


def quantize_for_tensorrt(fp32: str | Path, out: str | Path, images: np.ndarray, method: str = "minmax",
                          percentile: float = 99.999, keep_head_float: bool = True) -> QdqReport:
    """Write the TensorRT-rules Q/DQ model of ``fp32`` to ``out`` (atomically); return its facts.

    ``images``: calibration batch (N, 3, H, W) float32, preprocessed like inference.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgecsp.onnx_graph import head_nodes

    fp32, out = Path(fp32), Path(out)
    model = onnx.load(str(fp32))
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise EdgeCSPError(f"unknown calibration method {method!r}; use one of {', '.join(methods)}")
    exclude = head_nodes(model) if keep_head_float else []
    extra: dict[str, Any] = {
        "ActivationSymmetric": True,  # zero-point 0: TensorRT INT8 is symmetric
        "WeightSymmetric": True,
        "CalibTensorRangeSymmetric": True,  # entropy/percentile ranges symmetric too
        "QuantizeBias": False,  # TensorRT keeps biases float
        "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),  # Q/DQ at inputs only
        "QDQKeepRemovableActivations": True,  # keep LeakyRelu/Relu explicit for TensorRT's fusions
        "DedicatedQDQPair": False,
    }
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    batch = static_batch(model) or 8  # a static-batch model takes batches of its own size only
    if static_batch(model) and len(images) >= batch:
        images = images[: len(images) - len(images) % batch]
    reader = _Reader(model.graph.input[0].name, images, batch)
    with tempfile.TemporaryDirectory(prefix="edgecsp-qdq-") as tmp:
        raw = Path(tmp) / "qdq.onnx"
        try:
            quantize_static(str(fp32), str(raw), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, reduce_range=False,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=exclude, calibrate_method=methods[method], extra_options=extra)
        except Exception as err:  # ORT raises many types (ValueError, RuntimeError, its own Fail)
            raise EdgeCSPError(f"INT8 calibration ({method}) failed in ONNX Runtime: {first_line(err, 200)}; "
                               "try --calibration default (min-max)") from None
        qdq = onnx.load(str(raw))
    qdq = _float_outside_fusions(qdq, set(exclude))
    problems = check_tensorrt_qdq(qdq, float_nodes=exclude)
    if problems:
        raise EdgeCSPError(f"the INT8 Q/DQ model breaks TensorRT's placement rules ({problems[0]}"
                           f"{f'; +{len(problems) - 1} more' if len(problems) > 1 else ''}); "
                           "report this with your onnxruntime version")
    _atomic_save(qdq, out)
    convs = [n for n in qdq.graph.node if n.op_type in QUANTIZED_OPS]
    dq_out = {n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    float_convs = [n.name for n in convs if n.input[0] not in dq_out]
    return QdqReport(path=out, quantized_convs=len(convs) - len(float_convs), float_convs=float_convs,
                     activation_scales=activation_scales(qdq), method=method, images=len(images))


def _float_outside_fusions(model: onnx.ModelProto, head: set[str]) -> onnx.ModelProto:
    """Feed the float tensor to every consumer TensorRT does not fuse a DQ into.

    ONNX Runtime shares one Q/DQ pair among all consumers of a quantized tensor, so a SAM Mul, a
    Concat, a Resize or a head conv that reads the same tensor as a quantized conv would get the
    dequantized value, and TensorRT would run a stand-alone DQ layer there. Only quantized ops'
    data inputs and a residual Add (which TensorRT fuses into the conv before it) keep the DQ.
    """
    producers = {o: n for n in model.graph.node for o in n.output}
    dq_src: dict[str, str] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear":
            q = producers.get(n.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                dq_src[n.output[0]] = q.input[0]
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name not in dq_src:
                continue
            fused = (n.op_type in QUANTIZED_OPS and i == 0) or n.op_type in FUSED_RESIDUAL_OPS
            if n.name in head or not fused:
                n.input[i] = dq_src[name]
    return drop_dead_qdq(model)


def drop_dead_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove (in place) the Q/DQ pairs nobody reads any more."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    dead = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used}
    keep = [n for n in model.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in dead)]
    used = {i for n in keep for i in n.input} | {o.name for o in model.graph.output}
    keep = [n for n in keep if not (n.op_type == "QuantizeLinear" and n.output[0] not in used)]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return model


# --------------------------------------------------------------------------------------------
# Graph checks


def _const(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


@dataclass
class _Graph:
    """What the Q/DQ checks look up: constants, who produces and who reads each tensor."""

    model: onnx.ModelProto
    consts: dict[str, np.ndarray]
    producers: dict[str, onnx.NodeProto]
    consumers: dict[str, list[onnx.NodeProto]]

    @classmethod
    def of(cls, model: onnx.ModelProto) -> _Graph:
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for name in n.input:
                consumers.setdefault(name, []).append(n)
        return cls(model, _const(model), {o: n for n in model.graph.node for o in n.output}, consumers)

    def ops(self, op_type: str) -> list[onnx.NodeProto]:
        return [n for n in self.model.graph.node if n.op_type == op_type]


def check_tensorrt_qdq(model: onnx.ModelProto | str | Path, float_nodes: list[str] | None = None) -> list[str]:
    """Every way ``model`` breaks TensorRT's Q/DQ rules (see the module doc); empty when it follows them."""
    g = _Graph.of(_load(model))
    problems: list[str] = []
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problems.append(f"opset {opset} < 13 (per-channel Q/DQ needs 13)")
    if not g.ops("DequantizeLinear"):
        problems.append("no Q/DQ nodes at all")
    for n in g.ops("QuantizeLinear") + g.ops("DequantizeLinear"):
        problems += _zero_point_and_scale(g, n)
    for q in g.ops("QuantizeLinear"):
        problems += _quantize_node(g, q)
    for dq in g.ops("DequantizeLinear"):
        problems += _weight_dequantize(g, dq) if dq.input[0] in g.consts else _activation_dequantize(g, dq)
    for n in g.model.graph.node:
        if n.op_type in QUANTIZED_OPS and len(n.input) > 2 and n.input[2]:
            b = g.producers.get(n.input[2])
            if b is not None and b.op_type == "DequantizeLinear":
                problems.append(f"{n.name}: bias quantized; TensorRT keeps biases float")
    dq_out = {d.output[0] for d in g.ops("DequantizeLinear")}
    for name in float_nodes or []:
        node = next((n for n in g.model.graph.node if n.name == name), None)
        if node is not None and any(i in dq_out for i in node.input):
            problems.append(f"{name}: a head/decode node reads a dequantized tensor; it must stay float")
    return problems


def _zero_point_and_scale(g: _Graph, n: onnx.NodeProto) -> list[str]:
    """TensorRT INT8 is symmetric: an explicit int8 zero-point 0 and a positive, finite scale."""
    if len(n.input) < 3 or n.input[2] not in g.consts:
        return [f"{n.name}: no constant zero-point (TensorRT needs an explicit int8 zero-point 0)"]
    problems = []
    zp, scale = g.consts[n.input[2]], g.consts.get(n.input[1])
    if zp.dtype != np.int8:
        problems.append(f"{n.name}: zero-point is {zp.dtype}, TensorRT INT8 needs int8")
    if np.any(zp != 0):
        problems.append(f"{n.name}: zero-point not 0 (asymmetric); TensorRT INT8 is symmetric")
    if scale is None:
        problems.append(f"{n.name}: scale is not a constant")
    elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
        problems.append(f"{n.name}: scale not positive and finite")
    return problems


def _quantize_node(g: _Graph, q: onnx.NodeProto) -> list[str]:
    problems = []
    users = g.consumers.get(q.output[0], [])
    if not users or any(u.op_type != "DequantizeLinear" for u in users):
        problems.append(f"{q.name}: QuantizeLinear not followed by DequantizeLinear only")
    if q.input[1] in g.consts and g.consts[q.input[1]].size != 1:
        problems.append(f"{q.name}: activation quantized per channel; TensorRT needs one scale per tensor")
    return problems


def _weight_dequantize(g: _Graph, dq: onnx.NodeProto) -> list[str]:
    """An int8 weight initializer straight into DQ: per output channel, feeding a conv's weight."""
    problems = []
    w = g.consts[dq.input[0]]
    if w.dtype != np.int8:
        problems.append(f"{dq.name}: weight stored as {w.dtype}, expected int8")
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    scale = g.consts.get(dq.input[1])
    if w.ndim >= 2 and (scale is None or scale.size != w.shape[0] or axis != 0):
        problems.append(f"{dq.name}: weight scales must be per output channel on axis 0 "
                        f"(got {None if scale is None else scale.size} scales on axis {axis})")
    for u in g.consumers.get(dq.output[0], []):
        if u.op_type not in QUANTIZED_OPS or list(u.input).index(dq.output[0]) != 1:
            problems.append(f"{dq.name}: quantized weight feeds {u.op_type} {u.name} other than as its weight")
    return problems


def _activation_dequantize(g: _Graph, dq: onnx.NodeProto) -> list[str]:
    """An activation DQ: after its Q, read only where TensorRT fuses it (conv data inputs, residual Adds)."""
    src_q = g.producers.get(dq.input[0])
    if src_q is None or src_q.op_type != "QuantizeLinear":
        return [f"{dq.name}: DequantizeLinear without its QuantizeLinear"]
    problems = []
    for u in g.consumers.get(dq.output[0], []):
        data_input = u.op_type in QUANTIZED_OPS and list(u.input).index(dq.output[0]) == 0
        if not (data_input or u.op_type in FUSED_RESIDUAL_OPS):
            problems.append(f"{dq.name}: activation Q/DQ at an input of {u.op_type} {u.name}; TensorRT "
                            f"fuses Q/DQ into {', '.join(QUANTIZED_OPS)} data inputs and residual Adds only")
    return problems


def activation_scales(model: onnx.ModelProto | str | Path) -> dict[str, float]:
    """Scale of every quantized activation tensor (the QuantizeLinear input), as float32 values."""
    model = _load(model)
    consts = _const(model)
    return {n.input[0]: float(np.float32(consts[n.input[1]].reshape(-1)[0]))
            for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[1] in consts}


# --------------------------------------------------------------------------------------------
# FP16-typed model and in-graph NMS (TensorRT EfficientNMS plugin)


def to_fp16(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """FP16-typed copy (float32 inputs/outputs kept) for TensorRT's strongly typed FP16 builds."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = convert_float_to_float16(_load(model), keep_io_types=True, disable_shape_infer=False)
    return toposort(m)  # the converter appends its Casts at the end; TensorRT's parser reads in order


FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take float16 inputs and scales from opset 19


def to_fp16_qdq(qdq: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """The Q/DQ model with its float parts in FP16 (scales FP16 too, float32 inputs/outputs kept),
    for strongly typed TensorRT 10 builds: there a layer runs in the type of its tensors, so the
    float32 Q/DQ model's unquantized layers (head, box decode, floated convs) would run in FP32."""
    import copy

    from onnxruntime.transformers.float16 import convert_float_to_float16

    m = copy.deepcopy(_load(qdq))
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx") and o.version < FP16_QDQ_OPSET:
            o.version = FP16_QDQ_OPSET  # the ops here kept their meaning from 13 to 19; Q/DQ gained fp16
    m = convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=False)
    return toposort(m)


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Nodes in dependency order (ONNX requires it; ONNX Runtime tolerates its absence, TensorRT not)."""
    g = model.graph
    ready = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = [n for n in pending if not all(i in ready for i in n.input)]
        done = [n for n in pending if all(i in ready for i in n.input)]
        if not done:
            raise EdgeCSPError(f"ONNX graph has a cycle or an undefined input at {rest[0].name or rest[0].op_type}; "
                               "re-export the model")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model


def add_efficient_nms(model: onnx.ModelProto | str | Path, num_classes: int, score_threshold: float = DEFAULT_SCORE,
                      iou_threshold: float = DEFAULT_IOU, max_detections: int = 100) -> onnx.ModelProto:
    """Append TensorRT's EfficientNMS_TRT plugin after ``predictions`` (N, K, 5 + C).

    Scores are objectness x class probability (as edgecsp.postprocess); boxes x1,y1,x2,y2 in input
    pixels. Adds outputs num_detections (N,1) int32, detection_boxes (N,M,4), detection_scores
    (N,M), detection_classes (N,M) int32 and keeps ``predictions``. ONNX Runtime cannot run the
    plugin: this model is for TensorRT only.
    """
    m = onnx.ModelProto()
    m.CopyFrom(_load(model))
    g = m.graph
    pred = g.output[0].name
    c = num_classes

    def const(name: str, values: list[int]) -> str:
        g.initializer.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
        return name

    starts_b, ends_b = const("nms_box_start", [0]), const("nms_box_end", [4])
    starts_o, ends_o = const("nms_obj_start", [4]), const("nms_obj_end", [5])
    starts_c, ends_c = const("nms_cls_start", [5]), const("nms_cls_end", [5 + c])
    axes = const("nms_axes", [2])
    g.node.extend([
        helper.make_node("Slice", [pred, starts_b, ends_b, axes], ["nms_boxes"], name="nms/boxes"),
        helper.make_node("Slice", [pred, starts_o, ends_o, axes], ["nms_obj"], name="nms/obj"),
        helper.make_node("Slice", [pred, starts_c, ends_c, axes], ["nms_cls"], name="nms/cls"),
        helper.make_node("Mul", ["nms_cls", "nms_obj"], ["nms_scores"], name="nms/scores"),
        helper.make_node("EfficientNMS_TRT", ["nms_boxes", "nms_scores"],
                         ["num_detections", "detection_boxes", "detection_scores", "detection_classes"],
                         name="nms/EfficientNMS_TRT", domain="",  # the ONNX parser finds plugins by op name
                         plugin_version="1", background_class=-1, max_output_boxes=int(max_detections),
                         score_threshold=float(score_threshold), iou_threshold=float(iou_threshold),
                         score_activation=0, class_agnostic=0, box_coding=0),
    ])
    batch = g.output[0].type.tensor_type.shape.dim[0]
    n: int | str = batch.dim_value if batch.HasField("dim_value") else (batch.dim_param or "batch")
    g.output.extend([
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, [n, 1]),
        helper.make_tensor_value_info("detection_boxes", TensorProto.FLOAT, [n, max_detections, 4]),
        helper.make_tensor_value_info("detection_scores", TensorProto.FLOAT, [n, max_detections]),
        helper.make_tensor_value_info("detection_classes", TensorProto.INT32, [n, max_detections]),
    ])
    return m
