"""Building a TensorRT engine from a bundle's ONNX files with the TensorRT Python API (8.2 to 11).

Which path a TensorRT takes (``plan_build``):
  TensorRT >= 10 (JetPack 6, 7)  strongly typed network: precision comes from the ONNX itself
                                  (fp16: the FP16-typed model; int8: the Q/DQ model, its float
                                  parts FP32); ``strongly_typed = false`` builds the Q/DQ model
                                  weakly typed with INT8+FP16 flags instead (until TensorRT 11,
                                  which has no precision flags).
  TensorRT 8.x (JetPack 4.6, 5)   weakly typed FP32 model with builder flags: FP16, or INT8+FP16
                                  with implicit calibration served from the bundle's cache (the
                                  Q/DQ model's scales; TensorRT measures nothing).
Plus: workspace limit, an optimization profile for a dynamic batch, an optional DLA core (with or
without GPU fallback), the builder optimization level, and a persisted timing cache.

tensorrt is imported inside the functions only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgecsp.backends.base import BuildOptions, option
from edgecsp.errors import EdgeCSPError
from edgecsp.fsutil import atomic_write

if TYPE_CHECKING:  # the stubs (tensorrt-stubs) for the checker; at run time imported where used
    import tensorrt as trt


@dataclass
class BuildPlan:
    onnx: str  # bundle file the network is parsed from
    strongly_typed: bool
    flags: list[str]  # builder precision flags (weakly typed only)
    calibration_cache: str | None  # implicit INT8 only


@dataclass(frozen=True)
class TensorRTBuildOptions(BuildOptions):
    """[build] for tensorrt: the one list of TensorRT build options (the bundle, its trtexec line
    and the on-device builder all read it)."""

    backend: ClassVar[str] = "tensorrt"
    workspace_mb: int = option(1024, "int", low=1)  # builder workspace (tactic scratch memory) limit
    optimization_level: int | None = option(3, "int", low=0, high=5)  # builder level (8.6+); None: TensorRT's
    dla_core: int = option(-1, "int", low=-1)  # -1: GPU; else that DLA core
    gpu_fallback: bool = option(True, "bool")  # with a DLA core: layers DLA cannot run go to the GPU
    strongly_typed: bool = option(True, "bool")  # TensorRT >= 10: precision from the ONNX types
    timing_cache: bool = option(True, "bool")  # keep tactic timings beside the engine
    opt_batch: int = option(1, "int", low=1)  # dynamic batch: the profile's optimum
    max_batch: int = option(8, "int", low=1)  # dynamic batch: the profile's maximum
    nms: bool = option(False, "bool")  # append TensorRT's EfficientNMS plugin
    nms_score_threshold: float = option(0.25, "number", low=0, high=1)
    nms_iou_threshold: float = option(0.5, "number", low=0, high=1)
    nms_max_detections: int = option(100, "int", low=1)
    # edgecsp.calibration.CalibrationRecipe, from the pipeline (option() returns a dataclasses.field)
    recipe: Any = option(None, "any", profile=False)  # noqa: RUF009


@dataclass(frozen=True)
class EngineOptions(TensorRTBuildOptions):
    """The [build] options of one engine build, with its precision and batch."""

    precision: str = option("fp32", "str", profile=False)
    batch: int | str = option(1, "any", profile=False)  # an int or "dynamic"

    @classmethod
    def from_build_table(cls, precision: str, table: dict, batch: int | str) -> EngineOptions:
        """From a bundle's [build] table (checked: a misspelt or mistyped option is refused)."""
        build = TensorRTBuildOptions.from_table(table, "TensorRT [build]")
        values = {f.name: getattr(build, f.name) for f in fields(TensorRTBuildOptions)}
        return cls(**{**values, "precision": precision, "batch": batch})


def plan_build(trt_major: int, files: dict[str, str], opts: EngineOptions) -> BuildPlan:
    """Which ONNX and which precision mechanism this TensorRT major version uses (see module doc)."""
    p = opts.precision
    nms = "_nms" if opts.nms else ""

    def pick(role: str) -> str:
        name = files.get(role + nms) or files.get(role)
        if not name:
            raise EdgeCSPError(f"bundle has no {role} model for a {p} build; rebuild the bundle with --precision {p}")
        return name

    if trt_major >= 11 or (trt_major >= 10 and opts.strongly_typed):
        # int8: the FP16-typed Q/DQ model where the bundle has it (float parts FP16, not FP32)
        fp16_qdq = files.get("int8_qdq_fp16" + nms) or files.get("int8_qdq_fp16")
        role = {"fp32": "fp32", "fp16": "fp16", "int8": "int8_qdq_fp16" if fp16_qdq else "int8_qdq"}[p]
        return BuildPlan(onnx=pick(role), strongly_typed=True, flags=[], calibration_cache=None)
    if trt_major >= 10:  # weakly typed explicit quantization: float layers may run FP16
        role = "int8_qdq" if p == "int8" else "fp32"
        flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[p]
        return BuildPlan(onnx=pick(role), strongly_typed=False, flags=flags, calibration_cache=None)
    flags = {"fp32": [], "fp16": ["FP16"], "int8": ["INT8", "FP16"]}[p]
    cache = files.get("calibration_cache") if p == "int8" else None
    if p == "int8" and not cache:
        raise EdgeCSPError("bundle has no calibration cache for TensorRT 8.x INT8; rebuild the bundle")
    return BuildPlan(onnx=pick("fp32"), strongly_typed=False, flags=flags, calibration_cache=cache)


def build_engine(root: Path, files: dict[str, str], opts: EngineOptions, input_shape: list[int | str],
                 engine_name: str = "model.engine", timing_cache_name: str = "timing.cache",
                 progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Build ``root/engine_name`` from the bundle files in ``root``; returns the facts for the manifest.

    Steps: plan (which ONNX, which precision mechanism), parse, configure the builder (workspace,
    level, flags, dynamic-batch profile, calibration cache, DLA, timing cache), build, write.
    """
    import tensorrt as trt

    from edgecsp.backends.tensorrt.runner import gpu_facts, tensorrt_major

    version = str(trt.__version__)
    gpu = gpu_facts(0)
    if gpu is None:
        raise EdgeCSPError("TensorRT is installed but no CUDA GPU is usable here (cuda-python missing or no device); "
                           "install cuda-python matching the CUDA version, or build on the Jetson")
    major = tensorrt_major(trt)
    plan = plan_build(major, files, opts)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # EfficientNMS_TRT for bundles built with nms = true
    builder = trt.Builder(logger)
    if opts.precision == "int8" and not plan.strongly_typed and not builder.platform_has_fast_int8:
        raise EdgeCSPError(f"{gpu['gpu']} (sm_{gpu['compute_capability'].replace('.', '')}) has no fast INT8 in "
                           f"TensorRT {version}; use --precision fp16")
    network = _parse(builder, logger, root / plan.onnx, plan, major, version)
    config = _configure(builder, network, opts, plan, input_shape, root, version)
    cache_path = root / timing_cache_name
    if opts.timing_cache:
        previous = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(previous), False)  # False: refuse another device's
    progress(f"      TensorRT {version} on {gpu['gpu']}: {plan.onnx}, "
             f"{'strongly typed' if plan.strongly_typed else 'flags ' + ('+'.join(plan.flags) or 'none')}"
             f"{', DLA core ' + str(opts.dla_core) if opts.dla_core >= 0 else ''}")
    t = time.time()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgeCSPError(f"TensorRT {version} failed to build the engine (see its log above); "
                           "try --precision fp16, a larger workspace_mb, or dla_core = -1")
    atomic_write(root / engine_name, bytes(serialized))
    if opts.timing_cache:
        atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    return _facts(version, gpu, plan, opts, timing_cache_name if opts.timing_cache else None, time.time() - t)


def _parse(builder: trt.Builder, logger: trt.Logger, onnx: Path, plan: BuildPlan, major: int,
           version: str) -> trt.INetworkDefinition:
    """The network of ``onnx``, strongly typed where the plan says so."""
    import tensorrt as trt

    flags = 0
    if major < 10:  # explicit batch is the default (and the flag deprecated) from TensorRT 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgeCSPError(f"TensorRT {version} cannot parse {plan.onnx}: {errors[0] if errors else 'unknown error'}; "
                           "check the TensorRT version against docs/jetson.md")
    return network


def _configure(builder: trt.Builder, network: trt.INetworkDefinition, opts: EngineOptions, plan: BuildPlan,
               input_shape: list[int | str], root: Path, version: str) -> trt.IBuilderConfig:
    """The builder config: workspace, optimization level, precision flags, then the dynamic-batch
    profile, the implicit-INT8 calibration cache and the DLA placement."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
    else:  # TensorRT 8.2
        legacy: Any = config
        legacy.max_workspace_size = int(opts.workspace_mb) << 20
    if opts.optimization_level is not None and hasattr(config, "builder_optimization_level"):  # 8.6+
        config.builder_optimization_level = int(opts.optimization_level)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = _batch_profile(builder, network, config, opts, input_shape)
    if plan.calibration_cache:  # TensorRT 8.x implicit INT8: serve our scales as TensorRT's cache
        from edgecsp.backends.tensorrt.calibcache import retag_calibration_cache

        cache_text = retag_calibration_cache((root / plan.calibration_cache).read_text(), version)
        config.int8_calibrator = _cache_calibrator(cache_text)
        if profile is not None:
            config.set_calibration_profile(profile)
    if opts.dla_core >= 0:
        _place_on_dla(builder, network, config, opts)
    return config


def _batch_profile(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                   opts: EngineOptions, input_shape: list[int | str]) -> trt.IOptimizationProfile | None:
    """For a dynamic batch: the optimization profile 1 .. opt_batch .. max_batch, added to ``config``."""
    import tensorrt as trt

    if opts.batch != "dynamic":
        return None
    name = network.get_input(0).name
    chw = [int(d) for d in input_shape[1:]]
    profile = builder.create_optimization_profile()
    profile.set_shape(name, trt.Dims([1, *chw]), trt.Dims([max(1, opts.opt_batch), *chw]),
                      trt.Dims([max(1, opts.max_batch), *chw]))
    config.add_optimization_profile(profile)
    return profile


def _place_on_dla(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
                  opts: EngineOptions) -> None:
    """Run on DLA core ``opts.dla_core``; without GPU fallback every layer must be DLA-capable."""
    import tensorrt as trt

    if builder.num_DLA_cores <= opts.dla_core:
        raise EdgeCSPError(f"this device has {builder.num_DLA_cores} DLA core(s); dla_core = {opts.dla_core} "
                           "cannot be used: set dla_core = -1 (GPU)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(opts.dla_core)
    if opts.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        return
    bad = [network.get_layer(i).name for i in range(network.num_layers)
           if not config.can_run_on_DLA(network.get_layer(i))]
    if bad:
        raise EdgeCSPError(f"DLA cannot run {len(bad)} layer(s) of this model (first: {bad[0]}) and GPU "
                           "fallback is off; set gpu_fallback = true or dla_core = -1")


def _facts(version: str, gpu: dict[str, Any], plan: BuildPlan, opts: EngineOptions, timing_cache: str | None,
           seconds: float) -> dict[str, Any]:
    """What the manifest records about the build."""
    return {
        "tensorrt_version": version, "gpu": gpu["gpu"], "compute_capability": gpu["compute_capability"],
        "cuda_runtime": gpu["cuda_runtime"], "onnx": plan.onnx, "strongly_typed": plan.strongly_typed,
        "flags": plan.flags, "implicit_calibration": bool(plan.calibration_cache),
        "workspace_mb": opts.workspace_mb, "optimization_level": opts.optimization_level,
        "dla_core": opts.dla_core, "gpu_fallback": opts.gpu_fallback, "batch": opts.batch,
        "max_batch": opts.max_batch if opts.batch == "dynamic" else opts.batch, "nms": opts.nms,
        "timing_cache": timing_cache, "build_s": round(seconds, 2),
    }


def _cache_calibrator(cache_text: str) -> Any:
    """An IInt8EntropyCalibrator2 that serves a ready cache and never asks for batches."""
    import tensorrt as trt

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, cache: bytes):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._cache = cache

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int]:
            return []  # no batches: the cache below is complete, TensorRT never calibrates

        def read_calibration_cache(self) -> bytes:
            return self._cache

        def write_calibration_cache(self, cache: Any) -> None:
            pass

    return CacheCalibrator(cache_text.encode())
