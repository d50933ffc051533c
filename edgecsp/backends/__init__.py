"""Backends by name. Each lives in its own module, imported only when asked for."""

from __future__ import annotations

import importlib

from edgecsp.backends.base import Backend, BuildOptions, BuildRequest, BuildResult, Capabilities, PredictFn, Runner
from edgecsp.errors import EdgeCSPError

_BACKENDS = {
    "onnxruntime": "edgecsp.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "edgecsp.backends.openvino_backend:OpenVINOBackend",
    "tensorrt": "edgecsp.backends.tensorrt.backend:TensorRTBackend",
}


def get_backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise EdgeCSPError(f"unknown backend {name!r}; known: {', '.join(_BACKENDS)}")
    module_name, cls_name = _BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise EdgeCSPError(f"backend {name!r} is not available in this edgecsp ({err})") from None
    return getattr(module, cls_name)()


def backend_names() -> list[str]:
    return list(_BACKENDS)


__all__ = [
    "Backend",
    "BuildOptions",
    "BuildRequest",
    "BuildResult",
    "Capabilities",
    "PredictFn",
    "Runner",
    "backend_names",
    "get_backend",
]
