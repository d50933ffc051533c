"""Which install extra brings which library: the one line a missing library turns into.

edgecsp is one package with two installs. The base (``pip install edgecsp``) is the device side;
everything that exports, calibrates, trains or scores with pycocotools needs the ``host`` extra,
and the TensorRT runner's CUDA binding the ``tensorrt`` extra. A host-only command started on a
device install fails on its first import of a host library; ``missing_library`` turns that
ModuleNotFoundError into a line naming the extra instead of a traceback.
"""

from __future__ import annotations

# top-level import name -> (what it is, the extra that installs it)
EXTRAS = {
    "torch": ("PyTorch", "host"),
    "safetensors": ("safetensors", "host"),
    "onnx": ("ONNX", "host"),
    "onnxslim": ("onnxslim", "host"),
    "onnxruntime": ("ONNX Runtime", "host"),
    "openvino": ("OpenVINO", "host"),
    "nncf": ("NNCF", "host"),
    "pycocotools": ("pycocotools", "host"),
    "skimage": ("scikit-image", "host"),
    "matplotlib": ("matplotlib", "host"),
    "sqlalchemy": ("SQLAlchemy", "host"),
    "tqdm": ("tqdm", "host"),
    "psutil": ("psutil", "host"),
    "cuda": ("cuda-python", "tensorrt"),
}


def install_hint(module: str) -> str:
    """``pip install 'edgecsp[EXTRA]'`` for a library's import name (plain pip for unknown ones)."""
    top = module.split(".")[0]
    if top in EXTRAS:
        return f"pip install 'edgecsp[{EXTRAS[top][1]}]'"
    return f"pip install {top}"


def missing_library(err: BaseException) -> str | None:
    """The one line for a ModuleNotFoundError of a library an extra brings, else None."""
    name = getattr(err, "name", None)
    if not isinstance(err, ModuleNotFoundError) or not name or name.split(".")[0] not in EXTRAS:
        return None
    what, extra = EXTRAS[name.split(".")[0]]
    side = "the host side (export, calibration, training, COCO evaluation)" if extra == "host" else "the TensorRT runner"
    return f"{what} is not installed: this needs {side}; install it with {install_hint(name)}"
