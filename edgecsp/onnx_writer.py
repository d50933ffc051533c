"""Export a Detector to ONNX, checked against PyTorch on real images before the file appears.

The graph takes ``images`` (B, 3, H, W) float32 RGB, letterboxed and scaled to [0, 1] (the one
preprocessing of edgecsp.data.preprocess) and returns ``predictions`` (B, K, 5 + C) exactly as
``Detector.predict``; with ``nms=True`` it ends in the standard ``NonMaxSuppression`` operator
and returns fixed-size ``detections`` (B, max_det, 6) plus ``num_detections`` (B,).
docs/onnx-contract.md is the full contract.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker reads it
    from typing_extensions import Self

import numpy as np

from edgecsp.errors import EdgeCSPError, first_line
from edgecsp.models.parity import BOX_TOLERANCE_PX, SCORE_TOLERANCE
from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE

CONTRACT_VERSION = "1"
INPUT_NAME = "images"
OUTPUT_NAME = "predictions"
NMS_OUTPUT_NAMES = ("detections", "num_detections")
MIN_OPSET = 11  # NonMaxSuppression / Range / TopK with a k input all exist from 11
MAX_OPSET = 20  # the TorchScript exporter's newest
PARITY_IMAGES = 4
# BOX_TOLERANCE_PX / SCORE_TOLERANCE (ONNX Runtime vs PyTorch): edgecsp.models.parity.
# In-graph NMS vs edgecsp.postprocess run on the same predictions: only the NMS differs.
NMS_BOX_TOLERANCE_PX = 1e-3
NMS_SCORE_TOLERANCE = 1e-5
NMS_TIE = 1e-6  # scores this close are a tie: either box may be the one kept


@dataclass(frozen=True)
class NMSOptions:
    iou: float = DEFAULT_IOU  # suppress a box whose IoU with a kept box of its class is above this
    score: float = DEFAULT_SCORE  # keep scores (objectness x class probability) above this
    max_det: int = 100  # detections per image (the output's fixed second dimension)

    def __post_init__(self) -> None:
        if not 0.0 <= self.iou <= 1.0:
            raise EdgeCSPError(f"NMS iou threshold must be within [0, 1], got {self.iou}")
        if not 0.0 <= self.score < 1.0:
            raise EdgeCSPError(f"NMS score threshold must be within [0, 1), got {self.score}")
        if isinstance(self.max_det, bool) or not isinstance(self.max_det, (int, np.integer)) or self.max_det < 1:
            raise EdgeCSPError(f"NMS max_det must be a positive integer, got {self.max_det!r}")


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # a str is a symbolic (dynamic) dimension
    dtype: str

    def __str__(self) -> str:
        return f"{self.name} {self.dtype} [{', '.join(str(d) for d in self.shape)}]"


@dataclass
class ExportReport:
    path: Path
    opset: int
    batch: int | str  # fixed batch size or "dynamic"
    input_size: tuple[int, int]  # (height, width)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_abs_diff: float  # max |ONNX Runtime - PyTorch| over predictions (boxes in px, scores)
    max_box_diff: float
    max_score_diff: float
    parity_images: int
    parity_batches: list[int]  # batch sizes the parity ran at
    nodes_before: int  # exported graph, before onnxslim
    nodes_after: int  # the graph written (with the NMS nodes when nms=True)
    simplified: bool
    simplify_note: str  # why the unsimplified graph was kept, else ""
    size_bytes: int
    sha256: str
    seconds: float
    nms: NMSOptions | None = None
    nms_max_abs_diff: float | None = None  # in-graph NMS vs edgecsp.postprocess on matched detections
    metadata: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["path"] = str(self.path)
        out["inputs"] = [dataclasses.asdict(s) for s in self.inputs]
        out["outputs"] = [dataclasses.asdict(s) for s in self.outputs]
        return out

    def lines(self) -> list[str]:
        h, w = self.input_size
        out = [f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, sha256 {self.sha256[:16]}) in {self.seconds:.1f} s",
               f"  opset {self.opset}, batch {self.batch}, input {h}x{w}"]
        out += [f"  input   {s}" for s in self.inputs]
        out += [f"  output  {s}" for s in self.outputs]
        if self.simplified:
            out.append(f"  onnxslim: {self.nodes_before} -> {self.nodes_after} nodes")
        else:
            out.append(f"  not simplified ({self.simplify_note or 'disabled'}): {self.nodes_after} nodes")
        out.append(f"  parity vs PyTorch on {self.parity_images} images (batch sizes "
                   f"{', '.join(map(str, self.parity_batches))}): boxes {self.max_box_diff:.2e} px, "
                   f"scores {self.max_score_diff:.2e}")
        if self.nms is not None:
            out.append(f"  in-graph NMS (iou {self.nms.iou}, score {self.nms.score}, max_det {self.nms.max_det}) "
                       f"vs edgecsp.postprocess: max diff {self.nms_max_abs_diff:.2e}")
        return out


# ----------------------------------------------------------------------------- public entry


def export_onnx(
    model,
    out_path: str | os.PathLike,
    *,
    opset: int = 17,
    batch: int | str = 1,
    input_size: int | Sequence[int] | None = None,
    nms: bool = False,
    nms_options: NMSOptions | dict | None = None,
    simplify: bool = True,
    parity_images: Sequence[np.ndarray] | None = None,
    description: dict | None = None,
) -> ExportReport:
    """Export ``model`` (a Detector) to ``out_path``; the file appears only once every check passed.

    ``parity_images`` are HxWx3 uint8 RGB images (any size; they are letterboxed); None takes the
    first four of the default validation set. ``description`` (resolve_model's second value)
    supplies the class names and model name for the metadata.
    """
    start = time.perf_counter()
    from edgecsp.models.darknet_detector import DarknetDetector
    from edgecsp.models.detector import Detector

    if not isinstance(model, (Detector, DarknetDetector)):
        raise EdgeCSPError(f"export_onnx needs an edgecsp Detector, got {type(model).__name__}; "
                           "load one with edgecsp.models.checkpoint.resolve_model")
    opset = _check_opset(opset)
    batch = _check_batch(batch)
    size = _check_input_size(model, input_size)
    opts = _nms_options(nms_options) if nms else None
    images = _parity_inputs(parity_images, size)
    out_path = Path(out_path)

    with _Staged(out_path) as staged:
        net = _export_copy(model)
        proto = _torch_export(net, size, opset, batch)
        _check(proto, "the exported graph")
        nodes_before = len(proto.graph.node)
        groups = _parity_groups(len(images), batch)
        feeds = [images[g] for g in groups]
        refs = [_torch_predict(net, x) for x in feeds]
        outs = [r[0] for r in _ort_run(proto, feeds)]

        simplified, note = False, ""
        if simplify:
            proto, simplified, note, outs = _simplify(proto, feeds, outs)
        box_diff, score_diff = _parity(outs, refs)
        _set_output_shape(proto, model, size, batch)

        if opts is not None:
            proto = append_nms(proto, model.config.num_classes, opts, opset)
        _check(proto, "the final graph")
        nms_diff = _check_nms(proto, feeds, opts) if opts is not None else None
        metadata = _metadata(model, size, batch, opts, description)
        _set_metadata(proto, metadata)
        data = proto.SerializeToString()
        staged.write(data)

    return ExportReport(
        path=out_path, opset=opset, batch=batch, input_size=size,
        inputs=_specs(proto.graph.input), outputs=_specs(proto.graph.output),
        max_abs_diff=max(box_diff, score_diff), max_box_diff=box_diff, max_score_diff=score_diff,
        parity_images=len(images), parity_batches=[len(g) for g in groups],
        nodes_before=nodes_before, nodes_after=len(proto.graph.node), simplified=simplified, simplify_note=note,
        size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), seconds=time.perf_counter() - start,
        nms=opts, nms_max_abs_diff=nms_diff, metadata=metadata,
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """An exported model's metadata_props as a dict (values are strings; JSON ones stay JSON)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - onnx raises DecodeError, OSError... for a bad file
        raise EdgeCSPError(f"cannot read ONNX model {path} ({err}); re-export it with python -m edgecsp.export") from None
    return {p.key: p.value for p in proto.metadata_props}


# ----------------------------------------------------------------------------- argument checks


def _check_opset(opset: Any) -> int:
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise EdgeCSPError(f"opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {opset!r}")
    return int(opset)


def _check_batch(batch: Any) -> int | str:
    if batch == "dynamic":
        return "dynamic"
    if isinstance(batch, str) and batch.isdigit():
        batch = int(batch)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise EdgeCSPError(f"batch must be a positive integer or 'dynamic', got {batch!r}")
    return int(batch)


def _check_input_size(model, input_size) -> tuple[int, int]:
    from edgecsp.data.preprocess import size_hw

    h, w = size_hw(model.config.input_size if input_size is None else input_size)
    step = max(model.config.strides)
    if h % step or w % step:
        raise EdgeCSPError(f"input size {h}x{w} is not a multiple of the model's largest stride {step}; "
                           f"use e.g. {max(step, round(h / step) * step)}")
    return h, w


def _nms_options(options: NMSOptions | dict | None) -> NMSOptions:
    if options is None:
        return NMSOptions()
    if isinstance(options, NMSOptions):
        return options
    if isinstance(options, dict):
        unknown = set(options) - {f.name for f in dataclasses.fields(NMSOptions)}
        if unknown:
            raise EdgeCSPError(f"unknown NMS option(s) {sorted(unknown)}; known: iou, score, max_det")
        return NMSOptions(**options)
    raise EdgeCSPError(f"nms_options must be an NMSOptions or a dict, got {type(options).__name__}")


def _parity_inputs(images: Sequence[np.ndarray] | None, size: tuple[int, int]) -> np.ndarray:
    """Letterboxed NCHW float32 parity batch: the given images, else the default validation set's first."""
    from edgecsp.data.preprocess import letterbox, to_tensor_batch

    if images is None:
        from edgecsp.data import shapes
        from edgecsp.data.coco import resolve_dataset

        dataset = resolve_dataset(shapes.validation_data())
        images = [dataset[i][0] for i in range(min(PARITY_IMAGES, len(dataset)))]
    if len(images) == 0:
        raise EdgeCSPError("parity_images is empty; pass at least one RGB image, or None for the default set")
    return to_tensor_batch([letterbox(im, size)[0] for im in images])


def _parity_groups(n: int, batch: int | str) -> list[np.ndarray]:
    """Image indices per parity batch: fixed batches of ``batch`` (the last filled up cyclically);
    dynamic alternates sizes 1 and 2 so both a single image and a real batch are checked."""
    idx = list(range(n))
    if batch == "dynamic":
        groups, i, k = [], 0, 1
        while i < n:
            groups.append(idx[i:i + k])
            i, k = i + k, 3 - k
        if all(len(g) == 1 for g in groups):
            groups.append([0, 0])  # a single image still gets a batch of two
        return [np.array(g) for g in groups]
    assert isinstance(batch, int)
    return [np.array([j % n for j in range(s, s + batch)]) for s in range(0, n, batch)]


# ----------------------------------------------------------------------------- export and checks


def _export_copy(model):
    """A CPU float eval-mode copy (the caller's model is never touched) wrapped so that its
    forward is ``predict`` (a subclass's own predict included)."""
    import torch

    class Predict(torch.nn.Module):
        def __init__(self, detector):
            super().__init__()
            # The detector's children registered under their own names: node names stay
            # /backbone/..., /neck/..., /head/... (onnx_graph.head_nodes and the quantizers read them).
            for name, child in detector.named_children():
                self.add_module(name, child)
            self.detector_predict = detector.predict  # a plain attribute, not a submodule

        def forward(self, x):
            return self.detector_predict(x)

    detector = copy.deepcopy(model).cpu().float().eval()
    return Predict(detector).eval()


@contextlib.contextmanager
def _native_output_silenced():
    # torch's TorchScript exporter prints its whole IR graph to stdout from C++ when an op cannot
    # be exported (torch leaves its log switch on); the failure becomes our one-line error instead.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError):  # no usable fds (embedded interpreter): leave output alone
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
            sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def _torch_export(net, size: tuple[int, int], opset: int, batch: int | str):
    import io

    import onnx
    import torch

    # A dynamic export traces with two images, so nothing can be specialised to a batch of one.
    dummy = torch.zeros(batch if isinstance(batch, int) else 2, 3, *size)
    dynamic = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if batch == "dynamic" else None
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), _native_output_silenced(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)  # "legacy TorchScript exporter": chosen on purpose
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks traced as constants
            torch.onnx.export(net, (dummy,), buf, dynamo=False, opset_version=opset,  # type: ignore[arg-type]
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
                              do_constant_folding=True)
        return onnx.load_from_string(buf.getvalue())
    except EdgeCSPError:
        raise
    except Exception as err:  # noqa: BLE001 - the exporter raises UnsupportedOperatorError, RuntimeError...
        raise EdgeCSPError(f"export failed: {first_line(err)}; the model uses something ONNX opset {opset} "
                           "cannot express (try another --opset or replace that op)") from None


def _check(proto, what: str) -> None:
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:  # noqa: BLE001 - ValidationError, InferenceError
        raise EdgeCSPError(f"export failed: {what} does not pass onnx.checker ({first_line(err)}); "
                           "report this with the model") from None


def _session(proto):
    import onnxruntime as ort  # type: ignore[import-untyped]
    import torch

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, torch.get_num_threads())  # honours OMP_NUM_THREADS like torch
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types
        raise EdgeCSPError(f"export failed: ONNX Runtime cannot load the exported graph ({first_line(err)})") from None


def _ort_run(proto, feeds: list[np.ndarray], outputs: list[str] | None = None) -> list[list[np.ndarray]]:
    """Every batch in ``feeds`` through one ONNX Runtime session; per batch, the list of outputs."""
    session = _session(proto)
    results = []
    for x in feeds:
        try:
            results.append(session.run(outputs, {INPUT_NAME: x}))
        except Exception as err:  # noqa: BLE001 - ORT raises its own pybind types
            raise EdgeCSPError(f"export failed: ONNX Runtime cannot run the exported graph on a batch of {len(x)} "
                               f"({first_line(err)})") from None
    return results


def _torch_predict(net, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return net(torch.from_numpy(x)).numpy()


def _diffs(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    box = max(float(np.abs(x[..., :4] - y[..., :4]).max(initial=0.0)) for x, y in zip(a, b))
    score = max(float(np.abs(x[..., 4:] - y[..., 4:]).max(initial=0.0)) for x, y in zip(a, b))
    return box, score


def _parity(outs: list[np.ndarray], refs: list[np.ndarray]) -> tuple[float, float]:
    for out, ref in zip(outs, refs):
        if out.shape != ref.shape:
            raise EdgeCSPError(f"export failed: ONNX output has shape {out.shape} for a batch where PyTorch gives "
                               f"{ref.shape}; the trace baked in a shape")
    box, score = _diffs(outs, refs)
    if not (box <= BOX_TOLERANCE_PX and score <= SCORE_TOLERANCE):  # also catches NaN
        raise EdgeCSPError(f"export failed: ONNX Runtime differs from PyTorch on real images by {box:.3g} px on boxes "
                           f"/ {score:.3g} on scores (limits {BOX_TOLERANCE_PX} / {SCORE_TOLERANCE}); the model "
                           "likely has data-dependent Python control flow that tracing froze")
    return box, score


def _simplify(proto, feeds, outs):
    """onnxslim, kept only when it passes the checker and leaves the results unchanged."""
    try:
        import onnxslim  # type: ignore[import-untyped]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(copy.deepcopy(proto))
        if slim is None:
            raise RuntimeError("onnxslim returned no model")
        _check(slim, "the onnxslim graph")
        slim_outs = [r[0] for r in _ort_run(slim, feeds)]
    except Exception as err:  # noqa: BLE001 - onnxslim failing is no export failure: keep the original
        return proto, False, f"onnxslim failed: {first_line(err)}", outs
    if any(a.shape != b.shape for a, b in zip(slim_outs, outs)):
        return proto, False, "onnxslim changed the output shape", outs
    box, score = _diffs(slim_outs, outs)
    if not (box <= BOX_TOLERANCE_PX and score <= SCORE_TOLERANCE):
        return proto, False, f"onnxslim changed results by {box:.3g} px / {score:.3g}", outs
    return slim, True, "", slim_outs


def _set_output_shape(proto, model, size: tuple[int, int], batch: int | str) -> None:
    """Spell out (batch, K, 5 + C): shape inference through the decode leaves made-up dim names."""
    from onnx import TensorProto, helper

    from edgecsp.models.checkpoint import output_rows

    c = model.config
    k = output_rows(model, size)
    b = "batch" if batch == "dynamic" else batch
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [b, k, 5 + c.num_classes])
    proto.graph.output[0].CopyFrom(out)
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [b, 3, *size])
    proto.graph.input[0].CopyFrom(inp)


# ----------------------------------------------------------------------------- in-graph NMS


class _NMSGraph:
    """Appends named nodes and constants under ``/nms/`` to a list (the graph is edited at the end)."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        full = f"/nms/{name}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), full))
        return full

    def node(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> list[str]:
        from onnx import helper

        outs = [f"/nms/{name}_output_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=f"/nms/{name}", **attrs))
        return outs

    def output(self, op: str, inputs: list[str], name: str, out: str, **attrs) -> None:
        """A node that writes one of the graph's outputs under its public name."""
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/nms/{name}", **attrs))

    def unsqueeze(self, x: str, axis: int, name: str) -> str:
        if self.opset >= 13:
            return self.node("Unsqueeze", [x, self.const(f"{name}_axes", np.array([axis], np.int64))], name)[0]
        return self.node("Unsqueeze", [x], name, axes=[axis])[0]

    def slice_last(self, x: str, start: int, end: int, name: str) -> str:
        return self.node("Slice", [x, self.const(f"{name}_starts", np.array([start], np.int64)),
                                   self.const(f"{name}_ends", np.array([end], np.int64)),
                                   self.const(f"{name}_axes", np.array([-1], np.int64))], name)[0]


# A padding row that belongs to no image (label -1).
_PAD_ROW = np.array([0, 0, 0, 0, 0, -1], np.float32)


def append_nms(proto, num_classes: int, opts: NMSOptions, opset: int):
    """Replace the ``predictions`` output by ``detections`` (B, max_det, 6) and ``num_detections`` (B,).

    Same rule as edgecsp.postprocess: one label per box (argmax of objectness x class
    probability), class-wise NMS through the op's class dimension (only a box's own class
    carries its score). Batching never loops: every selected (batch, class, box) triple is a
    candidate row, and a (B, candidates) score matrix that is -1 outside each image's own rows
    goes through TopK, so each image gets its own best max_det whatever the batch size.
    """
    from onnx import TensorProto, helper

    proto = copy.deepcopy(proto)
    g = _NMSGraph(opset)
    boxes, best, selected = _select_per_class(g, num_classes, opts)
    rows, row_batch, row_score = _candidate_rows(g, boxes, best, selected, opts.max_det)
    _best_rows_per_image(g, rows, row_batch, row_score, opts.max_det)

    graph = proto.graph
    b = graph.output[0].type.tensor_type.shape.dim[0]
    b = b.dim_param or b.dim_value
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.inits)
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(NMS_OUTPUT_NAMES[0], TensorProto.FLOAT, [b, opts.max_det, 6]),
                         helper.make_tensor_value_info(NMS_OUTPUT_NAMES[1], TensorProto.INT64, [b])])
    return proto


def _select_per_class(g: _NMSGraph, c: int, opts: NMSOptions) -> tuple[str, str, str]:
    """Boxes (B, K, 4), each box's best score (B, K, 1), and NonMaxSuppression's (S, 3) selection
    of (batch, class, box), where a box scores only in its own class."""
    boxes = g.slice_last(OUTPUT_NAME, 0, 4, "boxes")  # (B, K, 4)
    obj = g.slice_last(OUTPUT_NAME, 4, 5, "objectness")  # (B, K, 1)
    cls = g.slice_last(OUTPUT_NAME, 5, 5 + c, "class_probs")  # (B, K, C)
    scores = g.node("Mul", [cls, obj], "scores")[0]  # (B, K, C), the same product as postprocess
    label = g.node("ArgMax", [scores], "label", axis=2, keepdims=1)[0]  # (B, K, 1)
    best = g.node("GatherElements", [scores, label], "best_score", axis=2)[0]  # (B, K, 1)
    own = g.node("Equal", [label, g.const("class_ids", np.arange(c, dtype=np.int64))], "own_class")[0]
    masked = g.node("Where", [own, best, g.const("zero", np.float32(0))], "own_class_score")[0]
    per_class = g.node("Transpose", [masked], "per_class_scores", perm=[0, 2, 1])[0]  # (B, C, K)
    selected = g.node("NonMaxSuppression", [
        boxes, per_class, g.const("max_output_boxes_per_class", np.array([opts.max_det], np.int64)),
        g.const("iou_threshold", np.array([opts.iou], np.float32)),
        g.const("score_threshold", np.array([opts.score], np.float32)),
    ], "NonMaxSuppression", center_point_box=0)[0]  # (S, 3): batch, class, box
    return boxes, best, selected


def _candidate_rows(g: _NMSGraph, boxes: str, best: str, selected: str, m: int) -> tuple[str, str, str]:
    """The selected boxes as rows (S + m, 6) [x1 y1 x2 y2 score label], each row's image (S + m,)
    and score (S + m,). The m padding rows belong to no image: TopK then always finds m entries,
    and an empty selection (S = 0) needs no special case."""
    from onnx import TensorProto

    sel_batch = g.node("Gather", [selected, g.const("col_batch", np.int64(0))], "sel_batch", axis=1)[0]  # (S,)
    sel_class = g.node("Gather", [selected, g.const("col_class", np.array([1], np.int64))], "sel_class", axis=1)[0]
    sel_bk = g.node("Gather", [selected, g.const("cols_batch_box", np.array([0, 2], np.int64))], "sel_batch_box",
                    axis=1)[0]  # (S, 2)
    cand_box = g.node("GatherND", [boxes, sel_bk], "cand_box")[0]  # (S, 4)
    cand_score = g.node("GatherND", [best, sel_bk], "cand_score")[0]  # (S, 1)
    cand_label = g.node("Cast", [sel_class], "cand_label", to=TensorProto.FLOAT)[0]  # (S, 1)
    cand = g.node("Concat", [cand_box, cand_score, cand_label], "cand_rows", axis=1)[0]  # (S, 6)
    rows = g.node("Concat", [cand, g.const("pad_rows", np.tile(_PAD_ROW, (m, 1)))], "rows", axis=0)[0]
    row_batch = g.node("Concat", [sel_batch, g.const("pad_batch", np.full(m, -1, np.int64))], "row_batch",
                       axis=0)[0]
    row_score = g.node("Gather", [rows, g.const("col_score", np.int64(4))], "row_score", axis=1)[0]
    return rows, row_batch, row_score


def _best_rows_per_image(g: _NMSGraph, rows: str, row_batch: str, row_score: str, m: int) -> None:
    """Each image's best m rows through one TopK over a (B, S + m) score matrix that is -1 outside
    the image's own rows; writes ``detections`` and ``num_detections``."""
    from onnx import TensorProto

    shape = g.node("Shape", [OUTPUT_NAME], "shape")[0]
    n = g.node("Gather", [shape, g.const("dim_batch", np.int64(0))], "batch_size", axis=0)[0]
    ids = g.node("Range", [g.const("range_start", np.int64(0)), n, g.const("range_step", np.int64(1))],
                 "batch_ids")[0]
    ids = g.unsqueeze(ids, 1, "batch_ids_column")  # (B, 1)
    mine = g.node("Equal", [ids, g.unsqueeze(row_batch, 0, "row_batch_row")], "row_in_image")[0]  # (B, S+m)
    dense = g.node("Where", [mine, g.unsqueeze(row_score, 0, "row_score_row"),
                             g.const("minus_one", np.float32(-1))], "image_scores")[0]
    top_val, top_idx = g.node("TopK", [dense, g.const("k", np.array([m], np.int64))], "TopK", n_out=2,
                              axis=1, largest=1, sorted=1)
    picked = g.node("Gather", [rows, top_idx], "picked_rows", axis=0)[0]  # (B, m, 6)
    valid = g.node("Greater", [top_val, g.const("valid_above", np.float32(-0.5))], "valid")[0]  # (B, m)
    valid3 = g.unsqueeze(valid, 2, "valid_column")
    g.output("Where", [valid3, picked, g.const("empty_row", _PAD_ROW)], "detections", NMS_OUTPUT_NAMES[0])
    count = g.node("Cast", [valid], "valid_int", to=TensorProto.INT64)[0]
    if g.opset >= 13:
        g.output("ReduceSum", [count, g.const("sum_axes", np.array([1], np.int64))], "num_detections",
                 NMS_OUTPUT_NAMES[1], keepdims=0)
    else:
        g.output("ReduceSum", [count], "num_detections", NMS_OUTPUT_NAMES[1], axes=[1], keepdims=0)


def _check_nms(proto, feeds: list[np.ndarray], opts: NMSOptions) -> float:
    """Run the NMS graph with its ``predictions`` exposed; every image's detections must equal
    edgecsp.postprocess on those same predictions (up to tie order). Returns the max diff."""
    from onnx import TensorProto, helper

    from edgecsp.postprocess import postprocess

    probe = copy.deepcopy(proto)
    probe.graph.output.append(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, None))
    worst = 0.0
    image = 0
    for x, (dets, nums, preds) in zip(feeds, _ort_run(probe, feeds, [*NMS_OUTPUT_NAMES, OUTPUT_NAME])):
        if dets.shape != (len(x), opts.max_det, 6) or nums.shape != (len(x),):
            raise EdgeCSPError(f"export failed: in-graph NMS returned shapes {dets.shape} / {nums.shape} for a batch "
                               f"of {len(x)}; expected ({len(x)}, {opts.max_det}, 6) / ({len(x)},)")
        for b in range(len(x)):
            ref = postprocess(preds[b], None, score_threshold=opts.score, iou_threshold=opts.iou,
                              max_detections=opts.max_det, pre_nms_top_k=len(preds[b]))
            want = np.concatenate([ref.boxes, ref.scores[:, None], ref.labels[:, None].astype(np.float32)], axis=1)
            n = int(nums[b])
            pad = dets[b, n:]
            if n > opts.max_det or np.any(pad[:, :5] != 0) or np.any(pad[:, 5] != -1):
                raise EdgeCSPError(f"export failed: in-graph NMS padding is wrong for image {b} of a batch of "
                                   f"{len(x)} (num_detections {n})")
            diff = _match_detections(dets[b, :n], want, opts)
            if diff is None:
                raise EdgeCSPError(f"export failed: in-graph NMS disagrees with edgecsp.postprocess on parity image "
                                   f"{image + b} (image {b} of a batch of {len(x)}: {n} vs {len(want)} detections)")
            worst = max(worst, diff)
        image += len(x)
    return worst


def _match_detections(got: np.ndarray, want: np.ndarray, opts: NMSOptions) -> float | None:
    """Max |diff| over matched rows, or None when the sets differ beyond ties.

    A row left unmatched on one side is accepted only if the other side has an unmatched row of
    the same class with a tied score (NMS or the max_det cut kept the other of two equal boxes).
    """
    free = list(range(len(got)))
    worst = 0.0
    unmatched = []
    for row in want:
        hit = None
        for j in free:
            g = got[j]
            if (g[5] == row[5] and np.abs(g[:4] - row[:4]).max() <= NMS_BOX_TOLERANCE_PX
                    and abs(g[4] - row[4]) <= NMS_SCORE_TOLERANCE):
                hit = j
                break
        if hit is None:
            unmatched.append(row)
        else:
            free.remove(hit)
            worst = max(worst, float(np.abs(got[hit][:5] - row[:5]).max()))
    if len(unmatched) != len(free):
        return None
    for row in unmatched:
        tie = next((j for j in free if got[j][5] == row[5] and abs(got[j][4] - row[4]) <= NMS_TIE), None)
        if tie is None:
            return None
        free.remove(tie)
    return worst


# ----------------------------------------------------------------------------- metadata and files


def _metadata(model, size: tuple[int, int], batch: int | str, opts: NMSOptions | None,
              description: dict | None) -> dict[str, str]:
    from edgecsp import __version__
    from edgecsp.models.checkpoint import config_as_json, preprocessing_of

    c = model.config
    description = description or {}
    names = description.get("class_names")
    if not isinstance(names, list) or len(names) != c.num_classes:
        names = [f"class{i}" for i in range(c.num_classes)]
    meta = {
        "edgecsp_version": __version__,
        "output_contract": f"edgecsp-onnx/{CONTRACT_VERSION}",
        "output_format": "detections" if opts else "predictions",
        "model_name": str(description.get("name") or c.backbone),
        "class_names": json.dumps(names),
        "num_classes": str(c.num_classes),
        "input_size": json.dumps(list(size)),
        "batch": str(batch),
        "anchors": json.dumps([list(a) for a in c.anchors]),
        "strides": json.dumps(list(c.strides)),
        "preprocessing": json.dumps(preprocessing_of(model)),
        "detector_config": json.dumps(config_as_json(model)),
    }
    if opts is not None:
        meta["nms"] = json.dumps(dataclasses.asdict(opts))
    return meta


def _set_metadata(proto, metadata: dict[str, str]) -> None:
    from onnx import helper

    del proto.metadata_props[:]
    helper.set_model_props(proto, metadata)
    proto.producer_name = "edgecsp"
    from edgecsp import __version__

    proto.producer_version = __version__
    proto.doc_string = "edgecsp detector; contract: docs/onnx-contract.md"


def _specs(values) -> list[TensorSpec]:
    from onnx import helper

    out = []
    for v in values:
        t = v.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in t.shape.dim)
        out.append(TensorSpec(v.name, dims, helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return out


class _Staged:
    """Reserve a temp file beside ``path`` up front (an unwritable destination fails before the
    export work), rename it into place only on success, and leave nothing behind otherwise."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp: str | None = None
        self.made_dirs: list[Path] = []

    def __enter__(self) -> Self:
        if self.path.is_dir():
            raise EdgeCSPError(f"{self.path} is a directory; pass a file path such as {self.path / 'model.onnx'}")
        missing = []
        d = self.path.parent
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        try:
            for m in reversed(missing):
                m.mkdir()
                self.made_dirs.append(m)
            fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            os.close(fd)
        except OSError as err:
            self._cleanup()
            raise EdgeCSPError(f"cannot write {self.path} ({err.strerror or err}); choose a writable location") from None
        return self

    def write(self, data: bytes) -> None:
        from edgecsp.fsutil import atomic_write

        assert self.tmp is not None, "write() outside the with block"
        try:
            atomic_write(self.path, data)
        except OSError as err:
            raise EdgeCSPError(f"cannot write {self.path} ({err.strerror or err}); check the disk space and "
                               "permissions") from None
        self.made_dirs = []  # they hold the export now
        self._cleanup()  # the reservation

    def _cleanup(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            self.tmp = None
        for d in reversed(self.made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()
        self.made_dirs = []

    def __exit__(self, *exc) -> None:
        self._cleanup()  # no-op after a successful write
