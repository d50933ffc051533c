"""The one small interface every engine family implements: build an artifact, open a runner.

A backend module imports its library only inside its methods, so a missing backend fails only
where it is used, with a line that says how to install it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgecsp.errors import EdgeCSPError

def import_library(module: str, what: str, install_hint: str | None = None):
    """Import a backend's library at the point of use; missing, it is one line naming the fix
    (by default the install extra that brings it, edgecsp.extras)."""
    import importlib

    from edgecsp.extras import install_hint as extra_hint

    install_hint = install_hint or extra_hint(module)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise EdgeCSPError(f"{what} is not installed ({err}); install it with {install_hint}") from None


def static_batch(model_or_shape: Any) -> int:
    """The input's fixed batch size, or 0 when the batch dimension is dynamic (symbolic, -1, unset).

    Takes the first input as each library gives it: an ONNX ``ModelProto``, an OpenVINO model or
    compiled model, or a shape (ONNX Runtime's, where a dynamic dimension is a name or None).
    """
    if hasattr(model_or_shape, "graph"):  # ONNX
        dim = model_or_shape.graph.input[0].type.tensor_type.shape.dim[0]
        first = dim.dim_value if dim.HasField("dim_value") else None
    elif hasattr(model_or_shape, "input"):  # OpenVINO
        ov_dim = model_or_shape.input(0).get_partial_shape()[0]
        first = ov_dim.get_length() if ov_dim.is_static else None
    else:
        first = model_or_shape[0] if len(model_or_shape) else None
    return first if isinstance(first, int) and first > 0 else 0


def run_in_static_batches(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray,
                          static_batch: int) -> np.ndarray:
    """Run any N on an engine with a static batch (0: dynamic): split, pad the last chunk, trim."""
    if not static_batch or len(batch) == static_batch:
        return infer(batch)
    outs = []
    for i in range(0, len(batch), static_batch):
        chunk = batch[i:i + static_batch]
        n = len(chunk)
        if n < static_batch:
            chunk = np.concatenate([chunk, np.zeros((static_batch - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(infer(chunk)[:n])
    return np.concatenate(outs)


# A function from a preprocessed NCHW float32 batch to the decoded output contract (N, K, 5 + C).
PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class BuildRequest:
    onnx_path: Path  # the FP32 export: decode in graph, input "images", output "predictions"
    precision: str  # one of the backend's precisions
    profile: Any  # edgecsp.targets.TargetProfile
    out_dir: Path  # write engine files here (a staging directory; the pipeline moves it into place)
    calibration: Any = None  # edgecsp.calibration.CalibrationSet for int8, else None
    # For accuracy-aware quantization: AP50 (fraction) of a predict function on the validation set.
    validate: Callable[[PredictFn], float] | None = None
    max_ap50_drop: float = 0.01  # tolerance as a fraction (0.01 = 1 point)
    options: dict = field(default_factory=dict)  # profile's [build] table
    # The validation set (edgecsp.data.coco dataset) and how many of its images verify: a Jetson
    # bundle stores that subset with the host's reference outputs (edgecsp.verifyset).
    dataset: Any = None
    verify_images: int | None = None


@dataclass
class BuildResult:
    engine: str  # main engine file name, relative to out_dir (e.g. "model.xml", "model.onnx")
    files: list[str]  # every file written, relative to out_dir
    info: dict = field(default_factory=dict)  # backend facts for the manifest (quantization details...)


class Runner(ABC):
    """Runs an engine on preprocessed batches; returns the decoded contract (N, K, 5 + C)."""

    input_shape: tuple[int, ...]

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        """Backend facts for reports: device name, threads, precision actually used..."""
        return {}

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(ABC):
    name: str
    precisions: tuple[str, ...]
    install_hint: str  # e.g. "pip install 'edgecsp[host]'"

    @abstractmethod
    def version(self) -> str:
        """The backend library's version; raises EdgeCSPError with install_hint when missing."""

    @abstractmethod
    def build(self, request: BuildRequest) -> BuildResult: ...

    @abstractmethod
    def open_runner(self, engine_path: Path, manifest: dict, **options: Any) -> Runner: ...

    def engine_facts(self, engine_path: Path) -> Any:
        """The engine's inputs, outputs and weight precision (edgecsp.binding.EngineFacts), read from
        the file itself to check the manifest against; None where only the runtime can read it."""
        if Path(engine_path).suffix == ".onnx":
            from edgecsp.binding import onnx_facts

            return onnx_facts(Path(engine_path))
        return None
