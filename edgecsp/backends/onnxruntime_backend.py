"""ONNX Runtime backend (CPU execution provider): the artifact is an ONNX file, ``model.onnx``.

Precisions:
  fp32  the exported FP32 graph, unchanged. It is not pre-optimized: ORT's level-ALL graph is
        specific to the host that optimized it, so the session optimizes at load time instead.
  int8  static post-training quantization in QDQ format with ``onnxruntime.quantization``:
        uint8 asymmetric activations, int8 symmetric per-channel weights (the U8S8 kernels of
        ORT's CPU provider), ranges from the calibration images by the recipe's method. With the
        recipe's ``keep_head_float`` the prediction convs and the box decoding stay in float.
        With ``float_stem`` (default) the convolutions that read fewer than 4 channels (the
        image stem) and their activation stay in float too: ORT's int8 convolution has no fast
        path for 3 input channels (demo stem 6.0 ms int8 vs 2.5 ms fp32, 30% of the int8 run;
        benchmarks/ort_int8.py, docs/ort-int8.md). Demo detector, 200 val images, AP50 drop vs
        PyTorch: minmax -0.01 points with the float stem; with the stem quantized, minmax 0.17,
        percentile 0.17, entropy 2.0, and quantizing the head as well: 14 points.

Build options (``BuildRequest.options``: the profile's [build] table plus what the pipeline adds):
  recipe              edgecsp.calibration.CalibrationRecipe for int8 (None: the default recipe)
  graph_optimization  ORT graph optimization level the runner uses: all|extended|basic|disable
  reduce_range        7-bit activations for int8 (default false; try it on AVX2-only CPUs without
                      VNNI, where the U8S8 kernels can saturate)
  float_stem          keep convolutions reading fewer than 4 channels in float for int8 (default true)
  accuracy_fallback   try the fallback ladder when the AP50 drop exceeds the tolerance (default true)
  nms                 accepted and ignored: NMS runs in numpy after the runner (edgecsp.postprocess)

Accuracy fallback (int8, only when the request carries a ``validate`` function): the reference
is the FP32 graph under ORT (identical to PyTorch within 1e-3 AP50). Rungs, cumulative, stopping
at the first within ``max_ap50_drop``:
  recipe      the recipe as given
  percentile  percentile ranges (clips activation outliers); skipped if the recipe already is
  pre-head    also keep the block feeding each prediction conv in float (back to the previous
              conv: on CSP necks the attention/Sigmoid gating that the head reads)
  conv-only   quantize convolutions only; Add/Concat/Mul/Resize/Sigmoid stay float
Later rungs use the better-scoring calibration of the first two. If no rung passes, the best
AP50 is kept and the pipeline's own accuracy gate decides. Every rung reuses calibration ranges
computed once per method (quantize_static's calibration cache).

onnxruntime is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgecsp.backends.base import (
    Backend,
    BuildOptions,
    BuildRequest,
    BuildResult,
    Capabilities,
    MemoryMeter,
    PredictFn,
    Runner,
    import_library,
    option,
    run_in_static_batches,
    static_batch,
)
from edgecsp.errors import EdgeCSPError

INSTALL_HINT = "pip install 'edgecsp[host]'"
ENGINE = "model.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "predictions"
GRAPH_LEVELS = ("all", "extended", "basic", "disable")
RUNNER_OPTIONS = ("threads", "mode", "libraries")
# Histogram calibrators keep every activation of the images they are given until the histogram
# is updated; feeding them in chunks bounds that memory at any calibration-set size.
CALIBRATION_CHUNK = 16
# ORT's int8 Conv (MLAS) packs input channels in groups of 4: a conv reading 3 (the RGB stem)
# gets no fast kernel and ran 2.4x slower than its float version on the demo detector.
MIN_INT8_CONV_CHANNELS = 4
# Activations that ORT fuses into a float Conv; kept in float with a float stem so they fuse.
FUSABLE_ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "Clip", "HardSigmoid", "Tanh")
# ORT's entropy defaults (128 bins, 128 quantized bins) leave the KL search a single candidate,
# the full range, so "entropy" silently equals min-max. 512 bins give it 385 thresholds; 2048
# (TensorRT's) scored the same on the demo detector at ~7x the compute time.
ENTROPY_BINS = 512
ENTROPY_QUANTIZED_BINS = 128


def _import_ort():
    return import_library("onnxruntime", "ONNX Runtime", INSTALL_HINT)


def _import_quantization():
    _import_ort()
    return import_library("onnxruntime.quantization", "onnxruntime.quantization", INSTALL_HINT)


def _ort_message(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


def physical_cores() -> int:
    """Physical cores this process may use (ORT's own default is the physical cores too)."""
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    cores = 0
    try:
        import psutil  # type: ignore[import-untyped]  # optional

        cores = psutil.cpu_count(logical=False) or 0
    except ImportError:
        cores = _cpuinfo_cores()
    return max(1, min(available, cores or available))


def _cpuinfo_cores() -> int:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 0
    pairs, phys = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            phys = value.strip()
        elif key == "core id":
            pairs.add((phys, value.strip()))
    return len(pairs)


@dataclass(frozen=True)
class OnnxRuntimeBuildOptions(BuildOptions):
    """[build] for onnxruntime (see the module doc)."""

    backend: ClassVar[str] = "onnxruntime"
    graph_optimization: str = option("all", "str", choices=GRAPH_LEVELS, fold="lower")
    reduce_range: bool = option(False, "bool")
    float_stem: bool = option(True, "bool")  # convs reading < 4 channels stay float in int8 (no fast int8 kernel)
    accuracy_fallback: bool = option(True, "bool")
    nms: bool = option(False, "bool")  # accepted and ignored: NMS runs in numpy after the runner
    # edgecsp.calibration.CalibrationRecipe, from the pipeline (option() returns a dataclasses.field)
    recipe: Any = option(None, "any", profile=False)  # noqa: RUF009


# ------------------------------------------------------------------------------------------
# Graph facts


def _input_shape(onnx_model: Any) -> tuple[int, ...]:
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)


def pre_head_nodes(onnx_model: Any, head: list[str]) -> list[str]:
    """Nodes between each prediction conv and the conv(s) before it, those convs included."""
    producer = {out: node for node in onnx_model.graph.node for out in node.output}
    head_set = set(head)
    stack = [node.input[0] for node in onnx_model.graph.node if node.name in head_set and node.op_type == "Conv"]
    found: dict[str, None] = {}
    while stack:
        node = producer.get(stack.pop())
        if node is None or not node.name or node.name in found or node.name in head_set:
            continue
        found[node.name] = None
        if node.op_type != "Conv":
            stack.extend(node.input)
    return list(found)


def quantized_nodes(onnx_model: Any) -> list[str]:
    """Compute nodes that run quantized in a QDQ model: fed by a DequantizeLinear and feeding a
    QuantizeLinear, or a Conv/MatMul/Gemm whose weight comes through a DequantizeLinear."""
    producer = {out: node for node in onnx_model.graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in onnx_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def from_dq(name: str) -> bool:
        src = producer.get(name)
        return src is not None and src.op_type == "DequantizeLinear"

    def quantized(node: Any) -> bool:
        if node.op_type in ("Conv", "MatMul", "Gemm", "ConvTranspose") and len(node.input) > 1:
            return from_dq(node.input[1])
        return any(from_dq(i) for i in node.input) and any(
            c.op_type == "QuantizeLinear" for o in node.output for c in consumers.get(o, []))

    skip = ("QuantizeLinear", "DequantizeLinear")
    return [n.name for n in onnx_model.graph.node if n.op_type not in skip and quantized(n)]


def narrow_input_convs(onnx_model: Any, min_channels: int = MIN_INT8_CONV_CHANNELS) -> list[str]:
    """Convs that read fewer than ``min_channels`` channels (the image stem), each with the
    activation it feeds alone, so that the float Conv and its activation fuse."""
    weights = {init.name: list(init.dims) for init in onnx_model.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for node in onnx_model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    found: list[str] = []
    for node in onnx_model.graph.node:
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if not node.name or not dims or len(dims) < 2 or dims[1] * group >= min_channels:
            continue
        found.append(node.name)
        users = consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type in FUSABLE_ACTIVATIONS and users[0].name:
            found.append(users[0].name)
    return found


# ------------------------------------------------------------------------------------------
# Quantization


def _all_head(onnx_model: Any) -> list[str]:
    from edgecsp.onnx_graph import head_nodes

    return head_nodes(onnx_model)


@dataclass(frozen=True)
class _Rung:
    name: str
    method: str
    extra_float: tuple[str, ...] = ()  # excluded on top of the head
    conv_only: bool = False


def _batches(images: np.ndarray, batch: int):
    """Calibration inputs at the model's batch size; a short last group repeats images."""
    if not batch:
        for i in range(len(images)):
            yield images[i:i + 1]
        return
    n = max(batch, len(images) - len(images) % batch)
    idx = np.arange(n) % len(images)
    for i in range(0, n, batch):
        yield images[idx[i:i + batch]]


def _reader(inputs: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader  # type: ignore[import-untyped]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(inputs)

        def get_next(self) -> dict | None:
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}

    return _Reader()


@contextlib.contextmanager
def _quiet():
    """quantize_static logs advice at WARNING and the histogram calibrators print to stdout."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


class _Quantizer:
    """Calibrates once per method (cached to JSON) and quantizes the FP32 graph for any rung."""

    def __init__(self, fp32_path: Path, work: Path, images: np.ndarray, recipe: Any, reduce_range: bool,
                 float_stem: bool = True):
        import inspect

        import onnx

        self.q = _import_quantization()
        # The calibration cache is what lets every fallback rung reuse one calibration pass.
        if "calibration_cache_path" not in inspect.signature(self.q.quantize_static).parameters:
            raise EdgeCSPError(f"onnxruntime {_import_ort().__version__} lacks quantize_static(calibration_cache_path=...) "
                               "that int8 builds use; upgrade it with pip install -U onnxruntime")
        self.fp32_path, self.work, self.recipe, self.reduce_range = fp32_path, work, recipe, reduce_range
        self.model = onnx.load(str(fp32_path))
        self.batch = static_batch(list(_input_shape(self.model)))
        self.inputs = list(_batches(images, self.batch))
        head = _all_head(self.model)
        self.head_convs = [n.name for n in self.model.graph.node if n.op_type == "Conv" and n.name in set(head)]
        if recipe.keep_head_float and not self.head_convs:
            raise EdgeCSPError(f"cannot find the detection head's convolutions in {fp32_path}; re-export the ONNX "
                               "with edgecsp, or set keep_head_float = false in the calibration recipe")
        self.head = head if recipe.keep_head_float else []  # nodes kept in float for the recipe
        self.stem = narrow_input_convs(self.model) if float_stem else []  # kept in float for speed
        self.calibration_s: dict[str, float] = {}

    def _method(self, name: str) -> Any:
        cm = self.q.CalibrationMethod
        return {"minmax": cm.MinMax, "entropy": cm.Entropy, "percentile": cm.Percentile}[name]

    def ranges(self, method: str) -> Path:
        """Calibration ranges for ``method`` as an ORT calibration cache (computed once)."""
        cache = self.work / f"ranges-{method}.json"
        if cache.is_file():
            return cache
        from onnxruntime.quantization.calibrate import (  # type: ignore[import-untyped]
            create_calibrator,
            save_tensors_data,
        )
        from onnxruntime.quantization.registry import (  # type: ignore[import-untyped]
            QDQRegistry,
            QLinearOpsRegistry,
        )

        options: dict[str, Any] = {}
        if method == "percentile":
            # Two-sided clipping on the signed histogram: LeakyReLU outputs are far from symmetric.
            options = {"percentile": float(self.recipe.percentile), "symmetric": False}
        elif method == "entropy":
            options = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
        t = time.perf_counter()
        # The tensors quantize_static itself would calibrate: those of the quantizable op types.
        ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
        with _quiet():
            try:
                calibrator = create_calibrator(self.fp32_path, ops, augmented_model_path=str(self.work / "augmented.onnx"),
                                               calibrate_method=self._method(method), extra_options=options)
                for i in range(0, len(self.inputs), CALIBRATION_CHUNK):
                    calibrator.collect_data(_reader(self.inputs[i:i + CALIBRATION_CHUNK]))
                save_tensors_data(calibrator.compute_data(), cache)
            except EdgeCSPError:
                raise
            except Exception as err:  # noqa: BLE001 - ORT raises ValueError, RuntimeError, Fail...
                raise EdgeCSPError(f"ONNX Runtime could not calibrate {self.fp32_path.name} with {method} "
                                   f"({_ort_message(err)}); try another calibration recipe") from None
        self.calibration_s[method] = round(time.perf_counter() - t, 2)
        return cache

    def quantize(self, rung: _Rung, out_path: Path) -> Path:
        q = self.q
        excluded = list(dict.fromkeys([*self.head, *self.stem, *rung.extra_float]))
        with _quiet():
            try:
                q.quantize_static(
                    self.fp32_path, out_path, None,
                    quant_format=q.QuantFormat.QDQ,
                    op_types_to_quantize=["Conv"] if rung.conv_only else None,
                    per_channel=bool(self.recipe.per_channel),
                    reduce_range=self.reduce_range,
                    # U8S8: what ORT's CPU kernels are fastest at; asymmetric uint8 fits the mostly
                    # positive LeakyReLU activations, symmetric int8 weights keep zero-points at 0.
                    activation_type=q.QuantType.QUInt8,
                    weight_type=q.QuantType.QInt8,
                    nodes_to_exclude=excluded,
                    calibrate_method=self._method(rung.method),
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                    calibration_cache_path=self.ranges(rung.method),
                )
            except EdgeCSPError:
                raise
            except Exception as err:  # noqa: BLE001 - as above
                raise EdgeCSPError(f"ONNX Runtime could not quantize {self.fp32_path.name} ({_ort_message(err)}); "
                                   "try another calibration recipe or build fp32") from None
        return out_path


# ------------------------------------------------------------------------------------------
# Backend


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    precisions = ("fp32", "int8")
    install_hint = INSTALL_HINT
    build_options = OnnxRuntimeBuildOptions

    def version(self) -> str:
        return _import_ort().__version__

    # -- build ---------------------------------------------------------------------------------

    def build(self, request: BuildRequest) -> BuildResult:
        ort = _import_ort()
        precision = request.precision.lower()
        if precision not in self.precisions:
            raise EdgeCSPError(f"the onnxruntime backend builds {', '.join(self.precisions)}, not {precision!r}")
        options = OnnxRuntimeBuildOptions.from_request(request.options)
        level = options.graph_optimization
        onnx_path = Path(request.onnx_path)
        if not onnx_path.is_file():
            raise EdgeCSPError(f"ONNX model {onnx_path} does not exist; export it first (edgecsp.onnx_writer)")
        out_dir = Path(request.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        info: dict[str, Any] = {"precision": precision, "onnxruntime": ort.__version__, "graph_optimization": level,
                                "providers": ["CPUExecutionProvider"]}
        if precision == "fp32":
            import onnx

            # Re-saved as one file: external data (if any) comes along.
            onnx.save(onnx.load(str(onnx_path)), str(out_dir / ENGINE))
            _open_session(out_dir / ENGINE, level, 1, "latency")  # fails here, not at deployment
        else:
            info.update(self._build_int8(request, onnx_path, out_dir / ENGINE, level, options))
        info["build_s"] = round(time.perf_counter() - t0, 2)
        return BuildResult(engine=ENGINE, files=[ENGINE], info=info)

    def _build_int8(self, request: BuildRequest, onnx_path: Path, out_path: Path, level: str,
                    options: OnnxRuntimeBuildOptions) -> dict[str, Any]:
        from edgecsp.calibration import CalibrationRecipe

        recipe = options.recipe or CalibrationRecipe()
        calib = request.calibration
        if calib is None or len(getattr(calib, "images", ())) == 0:
            raise EdgeCSPError("int8 needs calibration images; pass a calibration set (edgecsp.calibration) "
                               "or build fp32")
        images = np.asarray(calib.images, dtype=np.float32)
        with tempfile.TemporaryDirectory(prefix="edgecsp-ort-") as tmp:
            work = Path(tmp)
            qz = _Quantizer(onnx_path, work, images, recipe, options.reduce_range, options.float_stem)
            validate = request.validate
            reference = None if validate is None else float(validate(_session_predict(onnx_path, level)))
            fallback = options.accuracy_fallback and validate is not None
            (ap50, rung, path), ladder = self._climb(qz, recipe, request, reference, level, fallback, work)
            shutil.copyfile(path, out_path)
        info = _int8_info(out_path, qz, recipe, rung, len(images), request)
        if reference is None:
            info["accuracy_checked"] = False
        else:
            info.update(accuracy_checked=True, reference_ap50_ort_fp32=round(reference, 5), ladder=ladder,
                        passed=(reference - ap50) <= request.max_ap50_drop,
                        max_ap50_drop_points=round(request.max_ap50_drop * 100, 3))
        return info

    def _climb(self, qz: _Quantizer, recipe: Any, request: BuildRequest, reference: float | None, level: str,
               fallback: bool, work: Path) -> tuple[tuple[float, _Rung, Path], list[dict[str, Any]]]:
        """Quantize with the recipe; while AP50 drops past the tolerance (and the fallback is on),
        climb the ladder of safer rungs. Returns the best (AP50, rung, model) and every rung's AP50."""
        validate = request.validate
        rungs = [_Rung("recipe", recipe.method)]
        ladder: list[dict[str, Any]] = []
        best: tuple[float, _Rung, Path] | None = None
        i = 0
        while i < len(rungs):
            rung = rungs[i]
            if not rung.method:  # later rungs: the better-scoring calibration so far
                rung = rungs[i] = replace(rung, method=best[1].method if best else recipe.method)
            path = qz.quantize(rung, work / f"rung{i}.onnx")
            if validate is None or reference is None:
                return (0.0, rung, path), ladder
            ap50 = float(validate(_session_predict(path, level)))
            ladder.append({"rung": rung.name, "method": rung.method, "ap50": round(ap50, 5),
                           "ap50_drop_points": round((reference - ap50) * 100, 3)})
            if best is None or ap50 > best[0]:
                best = (ap50, rung, path)
            if reference - ap50 <= request.max_ap50_drop or not fallback:
                break
            if i == 0:
                rungs += self._ladder(rung, qz)
            i += 1
        assert best is not None
        return best, ladder

    @staticmethod
    def _ladder(first: _Rung, qz: _Quantizer) -> list[_Rung]:
        """The rungs after the recipe's own; method "" means the better calibration tried so far."""
        head = qz.head or _all_head(qz.model)  # a recipe that quantized the head gets it back in float
        extra = tuple(dict.fromkeys([*([] if qz.head else head), *pre_head_nodes(qz.model, head)]))
        rungs = [] if first.method == "percentile" else [_Rung("percentile", "percentile")]
        return rungs + [_Rung("pre-head", "", extra), _Rung("conv-only", "", extra, conv_only=True)]

    # -- run -----------------------------------------------------------------------------------

    def open_runner(self, engine_path: Path, manifest: dict, threads: int | None = None, mode: str | None = None,
                    libraries: list[str | Path] | None = None, **options: Any) -> OnnxRuntimeRunner:
        from edgecsp.backends.libraries import user_libraries

        ort = _import_ort()
        if options:
            raise EdgeCSPError(f"unknown onnxruntime runner option(s) {', '.join(sorted(options))}; "
                               f"known: {', '.join(RUNNER_OPTIONS)}")
        mode = (mode or "latency").lower()
        if mode not in ("latency", "throughput"):
            raise EdgeCSPError(f"onnxruntime runner mode must be 'latency' or 'throughput', got {mode!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise EdgeCSPError(f"threads must be a positive integer, got {threads!r}")
        from edgecsp.manifest import Manifest

        info = Manifest.of(manifest).build_info
        level = str(info.get("graph_optimization")
                    or (((manifest or {}).get("target") or {}).get("build") or {}).get("graph_optimization")
                    or "all").lower()
        engine_path = Path(engine_path)
        meter = MemoryMeter()
        with meter.measure():
            session, threads = _open_session(engine_path, level, threads, mode, user_libraries(libraries, "onnxruntime"))
        precision = (manifest or {}).get("precision") or info.get("precision")
        return OnnxRuntimeRunner(session, engine_path, threads, mode, level, precision, ort.__version__, meter)


def _open_session(path: Path, level: str, threads: int | None, mode: str,
                  libraries: list[Path] = []) -> tuple[Any, int]:  # noqa: B006 - never mutated
    """An InferenceSession on the CPU provider, and the intra-op threads it got."""
    ort = _import_ort()
    path = Path(path)
    if not path.is_file():
        raise EdgeCSPError(f"ONNX Runtime engine {path} is missing; rebuild the artifact with python -m edgecsp.compile")
    levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
    if level not in levels:
        raise EdgeCSPError(f"onnxruntime graph_optimization must be one of {', '.join(GRAPH_LEVELS)}, got {level!r}")
    # Latency: one call uses every physical core. Throughput: one core per call, and the caller
    # runs several calls at once (the runner's ``streams``).
    n = int(threads) if threads else (physical_cores() if mode == "latency" else 1)
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = n
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: ORT warns about unused initializers etc. on stderr
    for lib in libraries:  # custom ops: only libraries the user named (edgecsp.backends.libraries)
        try:
            so.register_custom_ops_library(str(lib))
        except Exception as err:  # noqa: BLE001 - ORT raises its own types for a bad library
            raise EdgeCSPError(f"ONNX Runtime cannot load custom-op library {lib} ({_ort_message(err)})") from None
    try:
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - InvalidProtobuf, Fail...: a damaged or foreign file
        raise EdgeCSPError(f"ONNX Runtime cannot load {path} ({_ort_message(err)}); the file is damaged or not an "
                           "edgecsp engine: rebuild the artifact with python -m edgecsp.compile") from None
    return session, n


def _session_predict(path: Path, level: str) -> PredictFn:
    """A predict function over a fresh latency-mode session (for validation during the build)."""
    session, _ = _open_session(path, level, None, "latency")
    batch = static_batch(session.get_inputs()[0].shape)
    return lambda x: _batched(lambda c: session.run([OUTPUT_NAME], {INPUT_NAME: c})[0], x, batch)


def _batched(infer, batch: np.ndarray, static_batch: int) -> np.ndarray:
    return run_in_static_batches(infer, np.ascontiguousarray(batch, dtype=np.float32), static_batch)


def _int8_info(out_path: Path, qz: _Quantizer, recipe: Any, rung: _Rung, images: int,
               request: BuildRequest) -> dict[str, Any]:
    """The INT8 build's facts for the manifest, read from the written graph where they can be."""
    import onnx

    model = onnx.load(str(out_path), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    excluded = list(dict.fromkeys([*qz.head, *qz.stem, *rung.extra_float]))
    quantized = set(quantized_nodes(model))
    info: dict[str, Any] = {
        "format": "QDQ", "method": rung.method, "recipe": recipe.name, "per_channel": bool(recipe.per_channel),
        "activation_type": "uint8", "activation_symmetric": False, "weight_type": "int8", "weight_symmetric": True,
        "reduce_range": qz.reduce_range, "keep_head_float": bool(recipe.keep_head_float),
        # Checked on the written graph, not assumed from the exclusion list.
        "head_convs_float": not (set(qz.head_convs) & quantized),
        "float_stem": [n for n in qz.stem if n not in quantized],
        "op_types_quantized": ["Conv"] if rung.conv_only else "all quantizable",
        "excluded_nodes": len(excluded), "head_nodes": len(qz.head), "quantized_nodes": len(quantized),
        "quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
        "calibration_images": images, "calibration_batch": qz.batch or 1,
        "calibration_data_hash": getattr(request.calibration, "data_hash", None),
        "calibration_s": qz.calibration_s, "rung": rung.name,
    }
    if "percentile" in {rung.method, recipe.method}:
        info["percentile"] = float(recipe.percentile)
    if rung.method == "entropy":
        info["entropy_bins"] = [ENTROPY_BINS, ENTROPY_QUANTIZED_BINS]
    return info


class OnnxRuntimeRunner(Runner):
    """One InferenceSession. ``run`` may be called from several threads at once (ORT's session
    is thread-safe); in throughput mode ``streams`` says how many concurrent calls fill the CPU.

    ``memory_bytes``: ORT's Python API exposes no allocator statistics, so it is what the process
    took while the session loaded and ran its first query (edgecsp.backends.base.MemoryMeter).
    """

    thread_safe = True

    def __init__(self, session: Any, path: Path, threads: int, mode: str, level: str, precision: str | None,
                 version: str, meter: MemoryMeter | None = None):
        self.session, self.path, self.threads, self.mode = session, Path(path), threads, mode
        self._level, self._precision, self._version = level, precision, version
        self._meter = meter or MemoryMeter()
        shape = session.get_inputs()[0].shape
        self.input_shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in shape)
        self._static_batch = static_batch(shape)
        self._output = next((o.name for o in session.get_outputs() if o.name == OUTPUT_NAME),
                            session.get_outputs()[0].name)
        self.streams = max(1, physical_cores() // threads) if mode == "throughput" else 1

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise EdgeCSPError("this ONNX Runtime runner is closed; open a new one")
        batch = np.asarray(batch)
        expected = self.input_shape[1:]
        if batch.ndim != 4 or any(e != -1 and e != s for e, s in zip(expected, batch.shape[1:])):
            raise EdgeCSPError(f"ONNX Runtime engine expects batches shaped (N, {', '.join(map(str, expected))}), "
                               f"got {tuple(batch.shape)}; letterbox images to the artifact's input size")
        session, name = self.session, self._output
        call = lambda: _batched(lambda c: session.run([name], {INPUT_NAME: c})[0], batch, self._static_batch)
        return self._meter.first_query(call) if self._meter.first_query_pending else call()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(thread_safe=True, parallel=self.streams)

    def memory_bytes(self) -> int | None:
        return self._meter.bytes or None

    def describe(self) -> dict:
        providers = self.session.get_providers() if self.session is not None else []
        return {"backend": "onnxruntime", "onnxruntime": self._version, "device": "CPU", "providers": providers,
                "precision": self._precision, "threads": self.threads, "intra_op_threads": self.threads,
                "execution_mode": "sequential", "graph_optimization": self._level, "mode": self.mode,
                "streams": self.streams}

    def close(self) -> None:
        self.session = None
