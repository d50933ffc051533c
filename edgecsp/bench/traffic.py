"""A model's memory traffic per frame, from its graph: the figure the CSPNet/EFM design is about.

traffic per frame = weight bytes at the deployed precision / batch (weights are read once per
query) + CIO x activation bytes (CIO, from edgecsp.complexity: every convolution reads its input
feature map and writes its output, batch 1). It assumes nothing stays in cache between layers,
so it is the DRAM traffic an engine that fuses nothing would cause: a model figure to compare
models and precisions, not a measurement (see edgecsp.bench.counters for that).

Weight bytes come from the deployed engine where its format can be read:
  ONNX        the initializers at their stored types (int8 QDQ weights 1 B, float 4 B; int64 shapes skipped)
  OpenVINO    the IR's constants: int8/uint8 1 B, float constants at the runtime inference precision
              (the CPU plugin runs FP16-compressed weights at f32 where the CPU has no FP16)
  other       the engine file size
and from the PyTorch module otherwise (conv/linear weights with BatchNorm folded into a bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACTIVATION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}
RUNTIME_FLOAT_BYTES = {"f32": 4, "f16": 2, "bf16": 2}


@dataclass
class ModelCost:
    macs: int  # per frame
    cio_elements: int  # per frame (conv inputs + outputs)
    weight_bytes: int  # read once per query
    weight_source: str
    activation_bytes: int  # per activation element
    precision: str

    def traffic_bytes_per_frame(self, batch: int = 1) -> float:
        return self.weight_bytes / max(1, batch) + self.cio_elements * self.activation_bytes


def _sig(x: float, digits: int = 5) -> float:
    """Rounded to significant digits: small and large figures keep their precision alike."""
    return float(f"{x:.{digits}g}")


def model_from_manifest(manifest: dict) -> Any:
    """The artifact's architecture as a PyTorch module (random weights: counts do not depend on them)."""
    from edgecsp.errors import EdgeCSPError
    from edgecsp.models.checkpoint import model_from_config_json

    try:
        return model_from_config_json(manifest["model"]["config"]).eval()
    except (KeyError, TypeError) as err:
        raise EdgeCSPError(f"the artifact's manifest has no usable model config ({err}); rebuild it") from None


def graph_counts(model: Any, input_size: int) -> dict[str, int]:
    """MACs and CIO per frame (batch 1) of a PyTorch module."""
    from edgecsp.complexity import profile

    p = profile(model, input_size)
    return {"macs": int(p["macs"]), "cio": int(p["cio"])}


def torch_weight_bytes(model: Any, bytes_per_weight: float = 4) -> int:
    """Conv/linear weights + one bias per output channel (BatchNorm folded at deployment)."""
    from torch import nn

    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out = int(m.out_channels if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else m.out_features)
            n += int(m.weight.numel()) + out
    return int(n * bytes_per_weight)


def onnx_weight_bytes(path: str | Path) -> int:
    import numpy as np
    import onnx
    from onnx import helper

    proto = onnx.load(str(path), load_external_data=False)
    total = 0
    tensors = list(proto.graph.initializer)
    tensors += [a.t for node in proto.graph.node if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
    for t in tensors:
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.BOOL, onnx.TensorProto.STRING):
            continue  # shapes and indices, not weights
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        total += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    return total


def openvino_weight_bytes(xml_path: str | Path, runtime_float_bytes: int = 4) -> int:
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    total = 0
    for op in model.get_ops():
        if op.get_type_name() != "Constant":
            continue
        et = op.get_output_element_type(0).get_type_name()
        n = _numel(op.get_output_shape(0))  # a scalar's empty shape gives 1
        if et in ("i8", "u8"):
            total += n
        elif et in ("i4", "u4"):
            total += (n + 1) // 2
        elif et in ("f32", "f16", "bf16"):
            total += n * runtime_float_bytes
    return total


def _numel(shape: Any) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def engine_weight_bytes(root: Path, manifest: dict, runtime_float_bytes: int | None = None) -> tuple[int, str] | None:
    """Weight bytes of an artifact's engine and how they were counted, or None if unreadable."""
    engine = Path(root) / manifest.get("engine", "")
    if not engine.is_file():
        return None
    suffix = engine.suffix.lower()
    try:
        if suffix == ".onnx":
            return onnx_weight_bytes(engine), "ONNX initializers at their stored types"
        if suffix == ".xml":
            fb = runtime_float_bytes or 4
            return openvino_weight_bytes(engine, fb), f"OpenVINO IR constants (int8 1 B, float {fb} B at runtime)"
    except Exception:  # noqa: BLE001, S110 - an unreadable engine falls back to its file size below
        pass
    return engine.stat().st_size, f"engine file size ({engine.name})"


def activation_bytes(precision: str, runtime_precision: str | None = None) -> int:
    """Bytes per activation element: int8 engines keep activations in int8 between quantized
    layers; float engines at the runtime precision when the backend reports it."""
    if precision == "int8":
        return 1
    if runtime_precision in RUNTIME_FLOAT_BYTES:
        return RUNTIME_FLOAT_BYTES[runtime_precision]
    return ACTIVATION_BYTES.get(precision, 4)


def cost(counts: dict[str, int], weight_bytes: int, weight_source: str, precision: str,
         act_bytes: int) -> ModelCost:
    return ModelCost(macs=counts["macs"], cio_elements=counts["cio"], weight_bytes=int(weight_bytes),
                     weight_source=weight_source, activation_bytes=int(act_bytes), precision=precision)


def compute_precision(precision: str, runtime_precision: str | None = None) -> str:
    """The arithmetic an engine runs: int8 for int8 artifacts, else the runtime float precision."""
    if precision == "int8":
        return "int8"
    return {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}.get(runtime_precision or "", precision)


def bandwidth_figures(model_cost: ModelCost, fps: float, batch: int, peak: dict | None,
                      measured: dict | None, arithmetic: str = "fp32") -> tuple[dict[str, Any], dict[str, Any]]:
    """The report's ``bandwidth`` and ``compute`` entries for one measured result.

    ``arithmetic``: the precision the engine computes in; its measured matrix-multiply peak is
    the compute ceiling (fp32's where that precision was not measured).
    """
    per_frame = model_cost.traffic_bytes_per_frame(batch)
    achieved = per_frame * fps / 1e9
    peak_gbs = (peak or {}).get("peak_gbs")
    measured = measured or {"measured_gbs": None, "reason": "not measured"}
    bw = {
        "model_traffic_mb_per_frame": _sig(per_frame / 1e6),
        "weights_mb": _sig(model_cost.weight_bytes / 1e6),
        "weights_source": model_cost.weight_source,
        "activations_mb_per_frame": _sig(model_cost.cio_elements * model_cost.activation_bytes / 1e6),
        "cio_elements": model_cost.cio_elements,
        "activation_bytes": model_cost.activation_bytes,
        "achieved_gbs": _sig(achieved),
        "platform_peak_gbs": peak_gbs,
        "fraction_of_peak": _sig(achieved / peak_gbs) if peak_gbs else None,
        "measured_gbs": measured.get("measured_gbs"),
        "measured_reason": measured.get("reason"),
        "measured": {k: v for k, v in measured.items() if k not in ("measured_gbs", "reason")} or None,
    }
    gmacs = model_cost.macs * fps / 1e9
    by_precision = (peak or {}).get("peak_gmacs_by_precision") or {}
    ceiling = arithmetic if by_precision.get(arithmetic) else "fp32"
    peak_gmacs = by_precision.get(ceiling) or (peak or {}).get("peak_gmacs")
    compute = {
        "macs_per_frame": model_cost.macs,
        "arithmetic": arithmetic,
        "peak_precision": ceiling,
        "achieved_gmacs": _sig(gmacs),
        "platform_peak_gmacs": peak_gmacs,
        "fraction_of_peak": _sig(gmacs / peak_gmacs) if peak_gmacs else None,
        # MACs per byte of modelled traffic: the roofline's x axis.
        "arithmetic_intensity": _sig(model_cost.macs / per_frame) if per_frame else None,
    }
    return bw, compute
