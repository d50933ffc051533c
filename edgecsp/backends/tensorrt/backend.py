"""TensorRT backend (NVIDIA Jetson and other CUDA GPUs).

``build`` always writes the device-independent bundle (edgecsp.backends.tensorrt.bundle: FP32 ONNX, FP16 or
INT8 Q/DQ ONNX, calibration cache, guide). Where TensorRT and a CUDA GPU are present it also
builds the engine (edgecsp.backends.tensorrt.build) and the artifact's engine is ``model.engine``;
elsewhere the artifact is the bundle, its "engine" the ONNX model TensorRT will build, and
``open_runner`` runs that model with ONNX Runtime on the CPU, so the compile pipeline measures
the accuracy of exactly the quantized model the device will build.

tensorrt and cuda-python are imported inside functions only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecsp.backends.base import Backend, BuildRequest, BuildResult, Runner
from edgecsp.backends.tensorrt.build import TensorRTBuildOptions
from edgecsp.errors import EdgeCSPError

INSTALL_HINT = ("on a Jetson TensorRT comes with JetPack (sudo apt install python3-libnvinfer); then "
                "pip install 'edgecsp[tensorrt]' for cuda-python")
NO_TENSORRT = "none (bundle: the engine is built on the device)"


def can_build_here() -> tuple[bool, str]:
    """(True, facts) where TensorRT and a CUDA GPU are usable, else (False, why not)."""
    from edgecsp.backends.tensorrt.runner import gpu_facts, load_tensorrt

    trt = load_tensorrt()
    if trt is None:
        return False, "TensorRT is not installed"
    try:
        gpu = gpu_facts(0)
    except EdgeCSPError as err:
        return False, str(err)
    if gpu is None:
        return False, "no CUDA GPU (or no cuda-python) here"
    return True, f"TensorRT {trt.__version__} on {gpu['gpu']} (sm_{gpu['compute_capability'].replace('.', '')})"


class TensorRTBackend(Backend):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    install_hint = INSTALL_HINT
    build_options = TensorRTBuildOptions

    def version(self) -> str:
        """TensorRT's version, or NO_TENSORRT: without TensorRT compile still writes a bundle."""
        from edgecsp.backends.tensorrt.runner import load_tensorrt

        trt = load_tensorrt()
        return str(trt.__version__) if trt is not None else NO_TENSORRT

    def build(self, request: BuildRequest) -> BuildResult:
        from edgecsp.backends.tensorrt.bundle import ENGINE, TIMING_CACHE, write_bundle

        result = write_bundle(request)
        ok, why = can_build_here()
        bundle = result.info["bundle"]
        if not ok:
            result.info["engine_built"] = False
            result.info["why_no_engine"] = why
            return result
        from edgecsp.backends.tensorrt.build import EngineOptions, build_engine

        opts = EngineOptions.from_build_table(request.precision, bundle["build"], bundle["batch"])
        facts = build_engine(request.out_dir, bundle["files"], opts, bundle["input"]["shape"], ENGINE, TIMING_CACHE)
        result.info["tensorrt"] = facts
        result.info["engine_built"] = True
        result.info["no_cache"] = True  # engines belong to one GPU; the compile cache key does not name it
        files = sorted(set(result.files) | {ENGINE} | ({TIMING_CACHE} if facts.get("timing_cache") else set()))
        return BuildResult(engine=ENGINE, files=files, info=result.info)

    def open_runner(self, engine_path: Path, manifest: dict, **options: Any) -> Runner:
        from edgecsp.backends.libraries import user_libraries

        engine_path = Path(engine_path)
        libraries = user_libraries(options.get("libraries"), "TensorRT plugin")
        if engine_path.suffix == ".onnx":  # a bundle: the model TensorRT will build, on the CPU
            from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner

            return OnnxModelRunner(engine_path, threads=options.get("threads"))
        from edgecsp.backends.tensorrt.runner import TensorRTRunner

        return TensorRTRunner(engine_path, manifest, device=int(options.get("device", 0)), libraries=libraries)
