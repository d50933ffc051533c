"""Baselines measured beside an artifact in the same run: PyTorch eager FP32 and plain ONNX
Runtime FP32 (default session options, CPU provider) on the same model, input and batch.

Both are Runners (edgecsp.backends.base), so the harness times them exactly like an artifact.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from edgecsp.backends.base import Capabilities, MemoryMeter, Runner
from edgecsp.errors import EdgeCSPError

BASELINES = ("torch", "onnxruntime-fp32")
NAMES = {"torch": "pytorch-eager-fp32", "onnxruntime-fp32": "onnxruntime-fp32"}


def parse_compare(spec: str | list[str] | None) -> list[str]:
    if not spec:
        return []
    items = spec if isinstance(spec, list) else [s for s in spec.split(",")]
    out = []
    for item in (s.strip().lower() for s in items):
        if not item:
            continue
        item = {"pytorch": "torch", "torch-fp32": "torch", "ort": "onnxruntime-fp32",
                "onnxruntime": "onnxruntime-fp32"}.get(item, item)
        if item not in BASELINES:
            raise EdgeCSPError(f"unknown baseline {item!r} in --compare; use any of {', '.join(BASELINES)}")
        if item not in out:
            out.append(item)
    return out


class TorchRunner(Runner):
    """``Detector.predict`` in eager mode under ``torch.inference_mode`` (FP32).

    ``threads``: torch's intra-op threads while the runner is open (restored on close), set to the
    engine's so the comparison is core for core; torch's default (every core, spin-waiting OpenMP
    threads) stalls for seconds when another process holds a core."""

    def __init__(self, model: Any, input_shape: tuple[int, ...], threads: int | None = None):
        import torch

        self.model = model.eval()
        self.input_shape = input_shape
        self._threads_before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(int(threads))

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model.predict(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    def describe(self) -> dict:
        import torch

        return {"backend": "pytorch", "torch": torch.__version__, "mode": "eager", "precision": "fp32",
                "threads": torch.get_num_threads()}

    def close(self) -> None:
        import torch

        torch.set_num_threads(self._threads_before)


class OrtRunner(Runner):
    """A plain ``onnxruntime.InferenceSession`` (default options) on an FP32 ONNX file."""

    def __init__(self, onnx_path: Path, input_shape: tuple[int, ...]):
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self._meter = MemoryMeter()
        with self._meter.measure():
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = input_shape

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if self._meter.first_query_pending:
            return self._meter.first_query(lambda: self.session.run(None, {self.input_name: x})[0])
        return self.session.run(None, {self.input_name: x})[0]

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(thread_safe=True)  # InferenceSession.run may be called from several threads

    def memory_bytes(self) -> int | None:
        return self._meter.bytes or None  # what the session took to load and run its first query

    def describe(self) -> dict:
        import onnxruntime as ort

        opts = self.session.get_session_options()
        return {"backend": "onnxruntime", "onnxruntime": ort.__version__, "precision": "fp32",
                "providers": self.session.get_providers(), "intra_op_threads": opts.intra_op_num_threads,
                "graph_optimization": str(opts.graph_optimization_level)}

    def close(self) -> None:
        self.session = None


def model_for(manifest: dict, model_spec: str | None = None) -> tuple[Any, str]:
    """The artifact's model with its trained weights when they can be found here, else its
    architecture with random weights (same speed; the report says which)."""
    from edgecsp.bench.traffic import model_from_manifest
    from edgecsp.models.checkpoint import resolve_model, source_of

    spec = model_spec or source_of(manifest)
    try:
        model, _ = resolve_model(spec)
    except EdgeCSPError as err:
        return model_from_manifest(manifest), f"architecture from the manifest, random weights ({err})"
    return model.eval(), f"{spec} (trained weights)"


def fp32_onnx(model: Any, input_size: int, batch: int | str, images: list[np.ndarray] | None = None) -> Path:
    """The model exported to FP32 ONNX (cached by weights, size and batch)."""
    from edgecsp.onnx_writer import export_onnx
    from edgecsp.paths import cache_dir

    h = hashlib.sha256(f"{input_size}|{batch}".encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    path = cache_dir() / "baselines" / f"{h.hexdigest()[:16]}.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(model, path, batch=batch, input_size=input_size, parity_images=images)
    return path


def prepare_baseline(name: str, model: Any, input_size: int, batch: int | str,
                     images: list[np.ndarray] | None = None) -> Path | None:
    """Work done once before timing: the FP32 ONNX export for the ONNX Runtime baseline."""
    if name == "onnxruntime-fp32":
        return fp32_onnx(model, input_size, batch, images)
    return None


def open_baseline(name: str, model: Any, input_size: int, batch: int | str, prepared: Path | None = None,
                  threads: int | None = None) -> Runner:
    """``threads``: the PyTorch baseline's intra-op threads (the engine's; None: torch's default)."""
    shape = (batch if isinstance(batch, int) else -1, 3, input_size, input_size)
    if name == "torch":
        return TorchRunner(model, shape, threads)
    if name == "onnxruntime-fp32":
        if prepared is None:
            raise EdgeCSPError("the ONNX Runtime baseline needs its FP32 ONNX; call prepare_baseline first")
        return OrtRunner(prepared, shape)
    raise EdgeCSPError(f"unknown baseline {name!r}; use any of {', '.join(BASELINES)}")
