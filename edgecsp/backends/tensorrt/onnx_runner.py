"""A Jetson bundle's ONNX model (FP32, FP16 or Q/DQ) on ONNX Runtime's CPU provider.

Without TensorRT, the compile pipeline measures the accuracy of exactly the model the device will
build through this runner; ``compile --from-bundle`` uses it for the FP32 reference on the device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecsp.backends.base import Capabilities, MemoryMeter, Runner, run_in_static_batches, static_batch
from edgecsp.errors import EdgeCSPError, first_line


class OnnxModelRunner(Runner):
    """A bundle's ONNX model (FP32, FP16 or Q/DQ) on ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
        self._meter = MemoryMeter()
        try:
            with self._meter.measure():
                self._session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - ORT raises its own exception types
            raise EdgeCSPError(f"ONNX Runtime cannot load {Path(path).name} ({first_line(err, 200)}); "
                               "rebuild the bundle") from None
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        self._output = self._session.get_outputs()[0].name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self._path = Path(path)

    def run(self, batch: np.ndarray) -> np.ndarray:
        fixed = static_batch(self.input_shape)
        if self._meter.first_query_pending:
            return self._meter.first_query(lambda: run_in_static_batches(self._run, batch, fixed))
        return run_in_static_batches(self._run, batch, fixed)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(thread_safe=True)  # InferenceSession.run may be called from several threads

    def memory_bytes(self) -> int | None:
        """What the process took while the session loaded and ran its first query (ORT reports nothing)."""
        return self._meter.bytes or None

    def _run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.asarray(self._session.run([self._output], {self._input: x})[0], dtype=np.float32)

    def describe(self) -> dict:
        return {"runtime": "onnxruntime CPU", "model": self._path.name,
                "note": "bundle: the TensorRT engine is built on the device"}
