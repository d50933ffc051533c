"""A manifest bound to its engine: what the manifest says is checked against the engine file
itself before anything uses it.

The checksums say the engine is the one the manifest lists; they do not say the manifest tells
the truth about it. An edited manifest (more or fewer class names, another precision, batch,
input size, strides or backend) would otherwise be believed: detections labelled past the end of
the class list, an INT8 engine benchmarked as FP16. Each backend reads its own engine's facts
(``Backend.engine_facts``: input and output names and shapes, whether it is quantized); a TensorRT
plan, readable only by TensorRT on the device, is checked there by the runtime instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from edgecsp.errors import EdgeCSPError, shown

Dim = Union[int, str, None]  # noqa: UP007 - evaluated at runtime, and devices run Python 3.8
# The engine file each backend runs (a TensorRT bundle's engine is the ONNX TensorRT will build).
ENGINE_SUFFIXES = {"onnxruntime": (".onnx",), "openvino": (".xml",), "tensorrt": (".engine", ".plan", ".onnx")}
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
             "DynamicQuantizeLinear", "FakeQuantize"}
# Which engine weights each manifest precision may come with (bf16 is a runtime hint on FP32 weights).
PRECISION_WEIGHTS = {"int8": {"int8"}, "fp16": {"fp16"}, "bf16": {"fp32"}, "fp32": {"fp32"}}


@dataclass
class EngineFacts:
    inputs: list[tuple[str, list[Dim]]]
    outputs: list[tuple[str, list[Dim]]]
    weights: str  # "int8" (Q/DQ, FakeQuantize or int8 weights), "fp16" or "fp32"
    in_graph_nms: bool = False


def onnx_facts(path: Path) -> EngineFacts:
    """An ONNX file's inputs, outputs and weight precision (external data is not read).

    On a device install (no ``onnx`` package) ONNX Runtime reads the inputs and outputs; the
    weights cannot be inspected there and are reported as "unchecked"."""
    try:
        import onnx
    except ImportError:
        return _onnxruntime_facts(path)

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for a damaged file
        raise EdgeCSPError(f"{shown(path)} is not a readable ONNX model ({type(err).__name__}); rebuild the "
                           "artifact") from None
    graph = model.graph
    initializers = {t.name for t in graph.initializer}

    def dims(value: Any) -> list[Dim]:
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in value.type.tensor_type.shape.dim]

    ops = {n.op_type for n in graph.node}
    types = {t.data_type for t in graph.initializer}
    tp = onnx.TensorProto
    weights = ("int8" if ops & QUANT_OPS or types & {tp.INT8, tp.UINT8}
               else "fp16" if tp.FLOAT16 in types else "fp32")
    return EngineFacts(inputs=[(i.name, dims(i)) for i in graph.input if i.name not in initializers],
                       outputs=[(o.name, dims(o)) for o in graph.output], weights=weights,
                       in_graph_nms=bool(ops & {"NonMaxSuppression", "EfficientNMS_TRT"}))


def _onnxruntime_facts(path: Path) -> EngineFacts:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ORT raises its own types for a damaged file
        raise EdgeCSPError(f"{shown(path)} is not a readable ONNX model ({type(err).__name__}); rebuild the "
                           "artifact") from None

    def dims(shape: Any) -> list[Dim]:
        return [d if isinstance(d, int) else (d or None) for d in shape]

    outputs = [(o.name, dims(o.shape)) for o in session.get_outputs()]
    return EngineFacts(inputs=[(i.name, dims(i.shape)) for i in session.get_inputs()], outputs=outputs,
                       weights="unchecked", in_graph_nms=any(name == "num_detections" for name, _ in outputs))


def _refuse(where: object, what: str) -> EdgeCSPError:
    return EdgeCSPError(f"artifact {shown(where)}: the manifest's {what}; refused (tampered manifest or wrong "
                        "engine): rebuild the artifact")


def _check_tensors(where: object, kind: str, declared: list, actual: list) -> None:
    """The manifest's inputs or outputs (``kind``) are the engine's: same names in order, same shapes."""
    if [n for n, _ in declared] != [n for n, _ in actual]:
        raise _refuse(where, f"{kind}s {[n for n, _ in declared]} differ from its engine's {[n for n, _ in actual]}")
    for (name, shape), (_, dims) in zip(declared, actual):
        if not _same_dims(shape, dims):
            raise _refuse(where, f"{kind} {name} shape {shape} differs from its engine's {dims}")


def _same_dims(declared: Any, actual: list[Dim]) -> bool:
    if not isinstance(declared, list) or len(declared) != len(actual):
        return False
    for want, have in zip(declared, actual):
        if isinstance(want, int) != isinstance(have, int) or (isinstance(want, int) and want != have):
            return False
    return True


def check_manifest_model(root: Path, manifest: dict[str, Any]) -> None:
    """The manifest's model description agrees with itself: class count, output width, input size,
    and the anchor rows its strides and input size imply."""
    model, where = manifest["model"], root
    names = model["class_names"]
    if model.get("num_classes", len(names)) != len(names):
        raise _refuse(where, f"num_classes {model.get('num_classes')} differs from its {len(names)} class names")
    size = model["input_size"]
    inputs, outputs = manifest["inputs"], manifest.get("outputs") or []
    if size[0] != size[1] or list(inputs[0]["shape"][2:]) != list(size):
        raise _refuse(where, f"input_size {size} differs from its input shape {inputs[0]['shape']}")
    for out in outputs:
        shape = out.get("shape") if isinstance(out, dict) else None
        if out.get("name") == "predictions" and isinstance(shape, list) and len(shape) == 3:
            if shape[2] != 5 + len(names):
                raise _refuse(where, f"output width {shape[2]} is not 5 + its {len(names)} classes")
            strides, anchors = model.get("strides"), model.get("anchors")
            if isinstance(strides, list) and isinstance(anchors, list) and strides and all(
                    isinstance(s, int) and s > 0 for s in strides):
                rows = sum((size[0] // s) ** 2 for s in strides) * (len(anchors) // len(strides))
                if shape[1] != rows:
                    raise _refuse(where, f"strides {strides} and anchors give {rows} output rows, its output shape "
                                         f"says {shape[1]}")


def check_binding(root: Path, manifest: dict[str, Any]) -> None:
    """Refuse, by name, a manifest that disagrees with its own engine file."""
    from edgecsp.backends import backend_names, get_backend

    where = root
    backend_name = manifest["backend"]["name"]
    if backend_name not in backend_names():
        raise _refuse(where, f"backend {backend_name!r} is not one edgecsp has ({', '.join(backend_names())})")
    engine = manifest["engine"]
    if Path(engine).suffix not in ENGINE_SUFFIXES.get(backend_name, ()):
        raise _refuse(where, f"backend {backend_name} does not run a {Path(engine).suffix or 'suffix-less'} engine "
                             f"({shown(engine)[:80]})")
    info = manifest["backend"].get("info") or {}
    bundle = isinstance(info, dict) and bool(info.get("bundle"))
    if bundle != (backend_name == "tensorrt") and (backend_name != "tensorrt" or Path(engine).suffix == ".onnx"):
        raise _refuse(where, f"backend {backend_name} with engine {shown(engine)[:80]} does not match its backend "
                             f"record ({'a' if bundle else 'no'} TensorRT bundle)")
    backend = get_backend(backend_name)
    precision = manifest["precision"]
    if precision not in backend.precisions:
        raise _refuse(where, f"precision {precision} is not one backend {backend_name} builds")
    if isinstance(info, dict) and isinstance(info.get("precision"), str) and info["precision"].lower() != precision:
        raise _refuse(where, f"precision {precision} differs from its backend's record ({info['precision'][:20]})")
    check_manifest_model(root, manifest)
    facts = backend.engine_facts(root / engine)
    if facts is None:  # a TensorRT plan: TensorRT checks it when it deserializes it on the device
        return
    if facts.weights != "unchecked" and facts.weights not in PRECISION_WEIGHTS[precision]:
        raise _refuse(where, f"precision {precision} does not match its engine, which holds {facts.weights} weights"
                             + (" (Q/DQ)" if facts.weights == "int8" else ""))
    _check_tensors(where, "input", [(i.get("name"), i.get("shape")) for i in manifest["inputs"]], facts.inputs)
    if facts.in_graph_nms:  # outputs are the NMS graph's own, not the decoded contract
        return
    declared_out = [(o.get("name"), o.get("shape")) for o in manifest.get("outputs") or []]
    if not declared_out:  # a manifest without outputs (optional in the schema): the class count still binds
        width = len(manifest["model"]["class_names"]) + 5
        for name, actual in facts.outputs:
            if len(actual) == 3 and isinstance(actual[2], int) and actual[2] != width:
                raise _refuse(where, f"{width - 5} class names do not match its engine's output {name} of "
                                     f"{actual[2]} values per row (5 + classes)")
        return
    _check_tensors(where, "output", declared_out, facts.outputs)
