"""OpenVINO backend: the FP32 ONNX becomes an OpenVINO IR (model.xml + model.bin) for a device.

Precisions:
  fp32  FP32 weights, runtime precision f32.
  fp16  FP16-compressed weights; runtime f16 only where the device has native FP16, else f32.
  bf16  FP32 weights, runtime bf16; refused on devices without BF16.
  int8  NNCF post-training quantization on the calibration images (preset MIXED: symmetric
        weights, asymmetric activations); the detection head and decode stay in float when the
        recipe says so. With ``accuracy_aware`` and validation data, the AP50 drop is measured
        and, only when it exceeds the tolerance, NNCF's accuracy-control loop reverts the most
        sensitive layers to float.

Build options ([build], checked by OpenVINOBuildOptions): performance_hint (LATENCY|THROUGHPUT,
the runner's default mode), accuracy_aware, ranking_images, max_reverted_layers,
fast_bias_correction; nms is accepted and ignored (NMS runs in numpy after the runner).

The runtime precision is always set explicitly: OpenVINO's CPU plugin otherwise runs FP32 models
in bf16 on CPUs that have it, which would make "fp32" mean different things on different hosts.

openvino and nncf are imported inside functions only, so the rest of edgecsp works without them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
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
ENGINE = "model.xml"
WEIGHTS = "model.bin"
# Ops that carry no computation of their own: never worth an ignored-scope entry.
_STRUCTURAL = {"Constant", "Parameter", "Result"}
# How many validation images NNCF's accuracy control may keep (as uint8) to rank layers by
# output error; its AP50 is always computed on the whole validation set.
RANKING_IMAGES = 100


def _import_openvino():
    return import_library("openvino", "OpenVINO", INSTALL_HINT)


def _import_nncf():
    return import_library("nncf", "NNCF (needed for OpenVINO int8)", INSTALL_HINT)


def _ov_message(err: BaseException) -> str:
    """OpenVINO errors are multi-line C++ traces; the last non-empty line says what happened."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]


def _runtime_precision(precision: str, capabilities: list[str]) -> str:
    """The INFERENCE_PRECISION_HINT for an artifact precision on a device with these capabilities."""
    if precision == "bf16":
        return "bf16"
    if precision == "fp16":
        # Without native FP16 the CPU plugin would pick bf16 for an f16 hint (less mantissa than
        # fp16); f32 keeps fp16 weights' accuracy exactly.
        return "f16" if "FP16" in capabilities else "f32"
    # fp32, and int8's float parts (the head kept in float must really be f32).
    return "f32"


def _type_name(value: Any) -> str:
    return value.to_string() if hasattr(value, "to_string") else str(value)


def _request_predict(compiled_model: Any) -> PredictFn:
    request = compiled_model.create_infer_request()
    fixed = static_batch(compiled_model)

    def infer(chunk: np.ndarray) -> np.ndarray:
        request.infer({0: np.ascontiguousarray(chunk, dtype=np.float32)})
        return request.get_output_tensor(0).data.copy()  # the request reuses its output buffer

    return lambda batch: run_in_static_batches(infer, batch, fixed)


# --------------------------------------------------------------------------------------------
# Graph facts on the OpenVINO side


def head_op_names(ov_model: Any, onnx_path: Path) -> list[str]:
    """OpenVINO op names of the ONNX head/decode nodes (edgecsp.onnx_graph.head_nodes).

    ov.convert_model keeps ONNX node names but splits some nodes: a Conv with bias becomes
    "<name>/WithoutBiases" (Convolution) + "<name>" (Add), and the last node is renamed after the
    graph output. Match on the name, the "<name>/" prefix, and the ONNX output tensor names.
    """
    import onnx

    from edgecsp.onnx_graph import head_nodes

    onnx_model = onnx.load(str(onnx_path), load_external_data=False)
    head = set(head_nodes(onnx_model))
    head_tensors = {out for node in onnx_model.graph.node if node.name in head for out in node.output}
    names = []
    for op in ov_model.get_ops():
        if op.get_type_name() in _STRUCTURAL:
            continue
        name = op.get_friendly_name()
        tensors = {t for out in op.outputs() for t in out.get_names()}
        if name in head or any(name.startswith(h + "/") for h in head) or tensors & head_tensors:
            names.append(name)
    # The prediction convolutions are the point of keeping the head in float: insist on finding them.
    convs = [n.name for n in onnx_model.graph.node if n.name in head and n.op_type == "Conv"]
    ov_convs = {op.get_friendly_name() for op in ov_model.get_ops() if op.get_type_name() == "Convolution"}
    missing = [c for c in convs if not any(o == c or o.startswith(c + "/") for o in ov_convs)]
    if not convs or missing:
        raise EdgeCSPError(f"cannot find the detection head's convolutions ({', '.join(missing) or 'none named'}) "
                           "in the OpenVINO model; re-export the ONNX with edgecsp, or set keep_head_float = false "
                           "in the calibration recipe")
    return names


def _int8_weights(node: Any, depth: int = 4) -> bool:
    """True if ``node`` is (a decompression chain from) an int8/uint8 constant."""
    for _ in range(depth):
        if node.get_type_name() == "Constant":
            return node.get_output_element_type(0).get_type_name() in ("i8", "u8", "i4", "u4")
        if node.get_type_name() not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose"):
            return False
        node = node.input_value(0).get_node()
    return False


def quantized_op_names(ov_model: Any) -> set[str]:
    """Names of ops whose inputs are quantized: fed by a FakeQuantize or by int8 weights."""
    out = set()
    for op in ov_model.get_ops():
        if op.get_type_name() in _STRUCTURAL or op.get_type_name() == "FakeQuantize" or _int8_weights(op):
            continue  # not compute, or part of an int8 weight's decompression chain
        for value in op.input_values():
            src = value.get_node()
            if src.get_type_name() == "FakeQuantize" or _int8_weights(src):
                out.add(op.get_friendly_name())
                break
    return out


# --------------------------------------------------------------------------------------------
# NNCF settings from a calibration recipe


def _nncf_settings(recipe: Any) -> tuple[Any, dict]:
    """AdvancedQuantizationParameters for a recipe, and what was chosen (for the manifest)."""
    from nncf.quantization.advanced_parameters import (  # type: ignore[import-untyped]
        AdvancedQuantizationParameters,
        QuantizationParameters,
    )
    from nncf.quantization.range_estimator import (  # type: ignore[import-untyped]
        AggregatorType,
        RangeEstimatorParameters,
        RangeEstimatorParametersSet,
        StatisticsCollectorParameters,
        StatisticsType,
    )

    kwargs: dict[str, Any] = {}
    method = getattr(recipe, "method", "minmax")
    if method == "percentile":
        # NNCF's quantile statistic, averaged over the samples: clips the top (100 - p)% outliers.
        prob = max(0.0, (100.0 - float(recipe.percentile)) / 100.0)
        stat = StatisticsCollectorParameters(StatisticsType.QUANTILE, AggregatorType.MEAN, quantile_outlier_prob=prob)
        kwargs["activations_range_estimator_params"] = RangeEstimatorParameters(min=stat, max=stat)
        ranges = f"NNCF mean of per-sample quantiles, outlier probability {prob:g} (percentile {recipe.percentile})"
    elif method == "entropy":
        # NNCF has no KL-divergence calibration; its histogram aggregator (ranges minimising the
        # quantization error on a histogram) is the nearest method.
        kwargs["activations_range_estimator_params"] = RangeEstimatorParametersSet.HISTOGRAM
        ranges = "NNCF HISTOGRAM (quantization-error minimisation; NNCF has no KL entropy calibration)"
    else:
        ranges = "NNCF default: activations mean of per-sample min/max, weights min/max"
    per_channel = bool(getattr(recipe, "per_channel", True))
    if not per_channel:
        kwargs["weights_quantization_params"] = QuantizationParameters(per_channel=False)
    return AdvancedQuantizationParameters(**kwargs), {"method": method, "ranges": ranges,
                                                      "weights_per_channel": per_channel}


@contextmanager
def _quiet_nncf():
    """NNCF logs one INFO line per ignored node; keep warnings only while it runs."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _uint8_exact(x: np.ndarray) -> np.ndarray | None:
    """``x`` as uint8 (x * 255) when that round-trips exactly (letterboxed images do), else None."""
    u8 = np.rint(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    return u8 if np.array_equal(u8.astype(np.float32) / 255, x) else None


def _to_float(item: np.ndarray) -> np.ndarray:
    return item.astype(np.float32) / 255 if item.dtype == np.uint8 else item


@dataclass(frozen=True)
class OpenVINOBuildOptions(BuildOptions):
    """[build] for openvino."""

    backend: ClassVar[str] = "openvino"
    performance_hint: str = option("LATENCY", "str", choices=("LATENCY", "THROUGHPUT"), fold="upper")
    accuracy_aware: bool = option(False, "bool")  # measure the int8 AP50 drop; past the tolerance, NNCF's loop
    ranking_images: int = option(RANKING_IMAGES, "int", low=1)  # images the accuracy-control loop ranks on
    max_reverted_layers: int = option(0, "int", low=0)  # cap on the loop's iterations (0: NNCF's default)
    fast_bias_correction: bool = option(True, "bool")
    nms: bool = option(False, "bool")  # accepted and ignored: NMS runs in numpy after the runner
    # edgecsp.calibration.CalibrationRecipe, from the pipeline (option() returns a dataclasses.field)
    recipe: Any = option(None, "any", profile=False)  # noqa: RUF009


def _default_recipe() -> Any:
    from edgecsp.calibration import CalibrationRecipe

    return CalibrationRecipe()


@dataclass
class _NNCFRun:
    """What every NNCF call of one int8 build shares."""

    nncf: Any
    options: OpenVINOBuildOptions
    calibration: Any  # nncf.Dataset of input batches
    images: int  # calibration images used (whole batches)
    advanced: Any  # AdvancedQuantizationParameters
    ranges: dict  # how the ranges are chosen, for the manifest
    head_names: list[str]  # ops kept in float
    params: dict  # keyword arguments of nncf.quantize and quantize_with_accuracy_control


def _calibration_dataset(nncf: Any, model: Any, calib: Any) -> tuple[Any, int]:
    """The calibration images as an nncf.Dataset of whole batches, and how many images that is."""
    if calib is None or len(getattr(calib, "images", ())) == 0:
        raise EdgeCSPError("int8 needs calibration images; pass a calibration recipe (--calibration default)")
    batch = static_batch(model) or 1
    images = np.asarray(calib.images, dtype=np.float32)
    if len(images) < batch:  # a static batch larger than the set: repeat images to fill one
        images = np.concatenate([images] * (batch // len(images) + 1))[:batch]
    items = [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]
    return nncf.Dataset(items), len(items) * batch


def _nncf_run(nncf: Any, model: Any, request: BuildRequest, device: str, recipe: Any,
              options: OpenVINOBuildOptions) -> _NNCFRun:
    advanced, ranges = _nncf_settings(recipe)
    calibration, images = _calibration_dataset(nncf, model, request.calibration)
    ignored, head_names = None, []
    if recipe.keep_head_float:
        head_names = head_op_names(model, Path(request.onnx_path))
        # validate=False: NNCF may fold some decode ops away; head_op_names insists on the convs.
        ignored = nncf.IgnoredScope(names=head_names, validate=False)
    target = getattr(nncf.TargetDevice, device.split(".")[0].upper(), nncf.TargetDevice.ANY)
    batch = static_batch(model) or 1
    params = {"preset": nncf.QuantizationPreset.MIXED, "target_device": target, "subset_size": images // batch,
              "fast_bias_correction": options.fast_bias_correction, "model_type": None, "ignored_scope": ignored}
    return _NNCFRun(nncf, options, calibration, images, advanced, ranges, head_names, params)


def _quantization_info(nncf: Any, model: Any, calib: Any, recipe: Any, run: _NNCFRun) -> dict[str, Any]:
    """The manifest's record of how the int8 model was made."""
    return {
        "tool": f"nncf {nncf.__version__}", "preset": "mixed (symmetric weights, asymmetric activations)",
        "target_device": run.params["target_device"].value, "calibration_images": run.images,
        "calibration_hash": getattr(calib, "data_hash", ""), "recipe": getattr(recipe, "name", ""),
        "recipe_digest": recipe.digest() if hasattr(recipe, "digest") else "",
        "fast_bias_correction": run.params["fast_bias_correction"], **run.ranges,
        "keep_head_float": bool(recipe.keep_head_float), "ignored_ops": len(run.head_names),
        "float_head_convs": sorted(op.get_friendly_name() for op in model.get_ops()
                                   if op.get_type_name() == "Convolution" and op.get_friendly_name() in run.head_names),
    }


# --------------------------------------------------------------------------------------------


class OpenVINOBackend(Backend):
    name = "openvino"
    precisions = ("fp32", "fp16", "bf16", "int8")
    install_hint = INSTALL_HINT
    build_options = OpenVINOBuildOptions

    def version(self) -> str:
        return _import_openvino().__version__

    # -- build ---------------------------------------------------------------------------------

    def build(self, request: BuildRequest) -> BuildResult:
        ov = _import_openvino()
        precision = request.precision
        if precision not in self.precisions:
            raise EdgeCSPError(f"OpenVINO has no precision {precision!r}; use one of {', '.join(self.precisions)}")
        device = getattr(request.profile, "device", "CPU") or "CPU"
        options = OpenVINOBuildOptions.from_request(request.options)
        core = ov.Core()
        capabilities = self._capabilities(core, device)
        if precision == "bf16" and "BF16" not in capabilities:
            raise EdgeCSPError(f"this {device} has no bf16 support; use fp32, fp16 or int8")
        onnx_path = Path(request.onnx_path)
        if not onnx_path.is_file():
            raise EdgeCSPError(f"ONNX model {onnx_path} does not exist; export the model first")
        try:
            model = ov.convert_model(str(onnx_path))
        except Exception as err:  # noqa: BLE001 - the ONNX frontend raises several types
            raise EdgeCSPError(f"OpenVINO cannot convert {onnx_path} ({_ov_message(err)}); "
                               "re-export the ONNX") from None

        hint = _runtime_precision(precision, capabilities)
        info: dict[str, Any] = {"openvino": ov.__version__, "device": device, "precision": precision,
                                "ir_weights": "fp16" if precision == "fp16" else "fp32",
                                "inference_precision": hint,
                                "performance_hint": options.performance_hint}
        if precision == "int8":
            model, info["quantization"] = self._quantize(core, model, request, device, options)

        out_dir = Path(request.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        # int8: weights are already int8; the float layers (head) keep FP32 weights.
        ov.save_model(model, str(out_dir / ENGINE), compress_to_fp16=precision == "fp16")
        # Compile what was written: proves it loads, and records what the runtime really uses here.
        compiled = core.compile_model(core.read_model(str(out_dir / ENGINE)), device, self._config(ov, hint))
        info["inference_precision_used"] = _type_name(compiled.get_property("INFERENCE_PRECISION_HINT"))
        info["device_name"] = self._device_name(core, device)
        return BuildResult(engine=ENGINE, files=[ENGINE, WEIGHTS], info=info)

    @staticmethod
    def _capabilities(core: Any, device: str) -> list[str]:
        if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
            raise EdgeCSPError(f"OpenVINO device {device!r} is not available here (available: "
                               f"{', '.join(core.available_devices) or 'none'}); build on the target device")
        try:
            return list(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
        except RuntimeError:
            return []

    @staticmethod
    def _device_name(core: Any, device: str) -> str:
        try:
            return str(core.get_property(device, "FULL_DEVICE_NAME"))
        except RuntimeError:
            return device

    @staticmethod
    def _config(ov: Any, hint: str, mode: str = "latency", threads: int | None = None) -> dict:
        import openvino.properties as props  # type: ignore[import-untyped]
        import openvino.properties.hint as hints  # type: ignore[import-untyped]

        perf = hints.PerformanceMode.THROUGHPUT if mode == "throughput" else hints.PerformanceMode.LATENCY
        config: dict[Any, Any] = {hints.performance_mode: perf,
                                  hints.inference_precision: getattr(ov.Type, hint)}
        if threads:
            config[props.inference_num_threads] = int(threads)
        return config

    def _quantize(self, core: Any, model: Any, request: BuildRequest, device: str,
                  options: OpenVINOBuildOptions) -> tuple[Any, dict]:
        """NNCF post-training quantization; with ``accuracy_aware``, then the accuracy check."""
        nncf = _import_nncf()
        recipe = options.recipe or _default_recipe()
        run = _nncf_run(nncf, model, request, device, recipe, options)
        info = _quantization_info(nncf, model, request.calibration, recipe, run)
        start = time.perf_counter()
        with _quiet_nncf():
            quantized = nncf.quantize(model.clone(), run.calibration, advanced_parameters=run.advanced, **run.params)
        info["quantize_seconds"] = round(time.perf_counter() - start, 2)
        info["path"] = "nncf.quantize"
        info["quantized_ops"] = len(quantized_op_names(quantized))
        if not options.accuracy_aware:
            return quantized, info
        if request.validate is None:
            info["accuracy_check"] = "skipped: no validation data given"
            return quantized, info
        return self._control_accuracy(core, model, quantized, request, device, run, info)

    def _control_accuracy(self, core: Any, model: Any, quantized: Any, request: BuildRequest, device: str,
                          run: _NNCFRun, info: dict) -> tuple[Any, dict]:
        """Measure the AP50 drop first: the accuracy-control loop is slow and usually not needed.
        Past the tolerance, NNCF reverts the most sensitive layers to float; the better model wins."""
        assert request.validate is not None
        ranking: list[np.ndarray] = []
        reference = self._validate(core, model, device, request.validate, record=ranking,
                                   limit=run.options.ranking_images)
        measured = self._validate(core, quantized, device, request.validate)
        info.update(ap50_float=round(reference, 5), ap50_int8=round(measured, 5),
                    ap50_drop=round(reference - measured, 5), max_ap50_drop=request.max_ap50_drop)
        if reference - measured <= request.max_ap50_drop:
            return quantized, info
        if not ranking:
            info["accuracy_control"] = "skipped: validate() ran no images through the model"
            return quantized, info
        start = time.perf_counter()
        controlled = self._accuracy_control_loop(model, request, ranking, run)
        final = self._validate(core, controlled, device, request.validate)
        info["accuracy_control_seconds"] = round(time.perf_counter() - start, 2)
        if final < measured:
            # The loop re-quantizes and ranks on a subset; when it ends worse, the plain model is
            # both more accurate and faster. The pipeline's accuracy gate judges the drop.
            info["accuracy_control"] = f"ran, reached AP50 {final:.5f} < plain; kept the plain model"
            return quantized, info
        info.update(path="nncf.quantize_with_accuracy_control", ap50_int8_plain=info["ap50_int8"],
                    ap50_int8=round(final, 5), ap50_drop=round(reference - final, 5),
                    reverted_to_float=sorted(quantized_op_names(quantized) - quantized_op_names(controlled)),
                    quantized_ops=len(quantized_op_names(controlled)))
        return controlled, info

    def _accuracy_control_loop(self, model: Any, request: BuildRequest, ranking: list[np.ndarray],
                               run: _NNCFRun) -> Any:
        """nncf.quantize_with_accuracy_control, ranking layers on the recorded validation images."""
        from nncf.quantization.advanced_parameters import (  # type: ignore[import-untyped]
            AdvancedAccuracyRestorerParameters,
        )

        assert request.validate is not None
        nncf = run.nncf
        restorer = AdvancedAccuracyRestorerParameters()
        if run.options.max_reverted_layers:
            restorer.max_num_iterations = run.options.max_reverted_layers
        with _quiet_nncf():
            return nncf.quantize_with_accuracy_control(
                model.clone(), run.calibration, nncf.Dataset(ranking, _to_float),
                self._nncf_validation_fn(request.validate, ranking),
                max_drop=request.max_ap50_drop, drop_type=nncf.DropType.ABSOLUTE,
                advanced_quantization_parameters=run.advanced, advanced_accuracy_restorer_parameters=restorer,
                **run.params)

    def _validate(self, core: Any, model: Any, device: str, validate: Callable[[PredictFn], float],
                  record: list | None = None, limit: int = 0) -> float:
        """AP50 of an in-memory model at f32; optionally keep the first ``limit`` input chunks."""
        predict = _request_predict(core.compile_model(model, device, {"INFERENCE_PRECISION_HINT": "f32"}))
        batch = static_batch(model) or 1
        if record is None:
            return float(validate(predict))

        def recording(x: np.ndarray) -> np.ndarray:
            for i in range(0, len(x), batch):
                if len(record) < limit and len(x[i:i + batch]) == batch:
                    chunk = x[i:i + batch]
                    u8 = _uint8_exact(chunk)
                    record.append(u8 if u8 is not None else chunk.copy())
            return predict(x)

        return float(validate(recording))

    @staticmethod
    def _nncf_validation_fn(validate: Callable[[PredictFn], float], ranking: list[np.ndarray]):
        """Adapt ``validate(predict_fn) -> AP50`` to NNCF's ``fn(compiled_model, data) -> (metric, outputs)``.

        NNCF ranks layers by how much each changes the model's outputs on the items of its
        validation dataset (the recorded first validation images), so next to the AP50 this
        returns each item's output. ``validate`` feeds the images in the same order every time,
        so those outputs are taken from its own run when the inputs match, not computed twice.
        """

        def validation_fn(compiled_model: Any, data: Iterable[Any]) -> tuple[float, list[list[np.ndarray]]]:
            predict = _request_predict(compiled_model)
            batch = static_batch(compiled_model) or 1
            seen: list[tuple[np.ndarray, np.ndarray]] = []

            def recording(x: np.ndarray) -> np.ndarray:
                out = predict(x)
                for i in range(0, len(x), batch):
                    if len(seen) < len(ranking):
                        seen.append((x[i:i + batch], out[i:i + batch]))
                return out

            metric = float(validate(recording))
            outputs = []
            for i, item in enumerate(data):  # NNCF counts the items it hands over
                x = _to_float(np.asarray(item))
                if i < len(seen) and seen[i][0].shape == x.shape and np.array_equal(seen[i][0], x):
                    outputs.append([seen[i][1]])
                else:
                    outputs.append([predict(x)])
            return metric, outputs

        return validation_fn

    # -- run -----------------------------------------------------------------------------------

    def engine_facts(self, engine_path: Path) -> Any:
        """From the IR itself: Parameter and Result names and shapes, FakeQuantize (INT8) or f16 constants."""
        from edgecsp.binding import EngineFacts

        ov = _import_openvino()
        try:
            model = ov.Core().read_model(str(engine_path))
        except RuntimeError as err:
            raise EdgeCSPError(f"OpenVINO cannot read {engine_path} ({_ov_message(err)}); the file is damaged: "
                               "rebuild the artifact with python -m edgecsp.compile") from None

        def dims(port: Any) -> list[int | None]:
            return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]

        ops = {op.get_type_name() for op in model.get_ops()}
        constants = {op.get_element_type() for op in model.get_ops() if op.get_type_name() == "Constant"}
        weights = ("int8" if "FakeQuantize" in ops or constants & {ov.Type.i8, ov.Type.u8}
                   else "fp16" if ov.Type.f16 in constants else "fp32")
        return EngineFacts(inputs=[(p.get_any_name(), dims(p)) for p in model.inputs],
                           outputs=[(p.get_any_name(), dims(p)) for p in model.outputs], weights=weights,
                           in_graph_nms=any("NMS" in op or "NonMaxSuppression" in op for op in ops))

    def open_runner(self, engine_path: Path, manifest: dict, mode: str | None = None, threads: int | None = None,
                    precision_hint: str | None = None, device: str | None = None,
                    libraries: list[str | Path] | None = None, u8_input: bool = False,
                    **options: Any) -> OpenVINORunner:
        from edgecsp.backends.libraries import user_libraries

        ov = _import_openvino()
        if options:
            raise EdgeCSPError(f"unknown OpenVINO runner option(s) {', '.join(sorted(options))}; "
                               "known: mode, threads, precision_hint, device, libraries, u8_input")
        extensions = user_libraries(libraries, "OpenVINO extension")
        info = _manifest_info(manifest)
        mode = (mode or info.get("performance_hint") or "latency").lower()
        if mode not in ("latency", "throughput"):
            raise EdgeCSPError(f"OpenVINO runner mode must be 'latency' or 'throughput', got {mode!r}")
        device = device or info.get("device") or (manifest.get("target") or {}).get("device") or "CPU"
        precision = _manifest_precision(manifest, info)
        engine_path = Path(engine_path)
        if not engine_path.is_file() or not engine_path.with_suffix(".bin").is_file():
            raise EdgeCSPError(f"OpenVINO engine {engine_path} (or its .bin) is missing; rebuild the artifact "
                               "with python -m edgecsp.compile")
        listed = manifest.get("files")
        bin_key = Path(str(manifest.get("engine", engine_path.name))).with_suffix(".bin").as_posix()
        if listed is not None and bin_key not in listed:
            # OpenVINO reads the .bin beside the .xml by itself: it must be a verified file too.
            raise EdgeCSPError(f"{engine_path.with_suffix('.bin').name} is not listed (and checksummed) in the "
                               "manifest; refused: rebuild the artifact")
        core = ov.Core()
        for ext in extensions:  # only what the user named (edgecsp.backends.libraries)
            try:
                core.add_extension(str(ext))
            except RuntimeError as err:
                raise EdgeCSPError(f"OpenVINO cannot load extension {ext} ({_ov_message(err)})") from None
        # From the precision and this host's device (it may differ from the build host's).
        hint = precision_hint or (_runtime_precision(precision, self._capabilities(core, device)) if precision
                                  else info.get("inference_precision", "f32"))
        if hint not in ("f32", "f16", "bf16"):
            raise EdgeCSPError(f"unknown OpenVINO inference precision {hint!r}; use f32, f16 or bf16")
        meter = MemoryMeter()
        with meter.measure():
            compiled = self._compile(core, engine_path, device, self._config(ov, hint, mode, threads), u8_input)
        return OpenVINORunner(compiled, core, device, mode, meter, "nhwc-u8" if u8_input else "nchw-f32")

    @staticmethod
    def _compile(core: Any, engine_path: Path, device: str, config: dict, u8_input: bool = False) -> Any:
        try:
            model = core.read_model(str(engine_path))
        except RuntimeError as err:
            raise EdgeCSPError(f"OpenVINO cannot read {engine_path} ({_ov_message(err)}); the file is damaged: "
                               "rebuild the artifact with python -m edgecsp.compile") from None
        if u8_input:
            from edgecsp.backends.openvino_preprocess import with_u8_input

            model = with_u8_input(model)
        try:
            return core.compile_model(model, device, config)
        except RuntimeError as err:
            raise EdgeCSPError(f"OpenVINO cannot compile {engine_path} for {device} ({_ov_message(err)}); "
                               "rebuild the artifact on this device") from None


def _manifest_info(manifest: dict) -> dict:
    """The backend's BuildResult.info as the pipeline stored it (edgecsp.manifest says where)."""
    from edgecsp.manifest import Manifest

    return Manifest.of(manifest).build_info


def _manifest_precision(manifest: dict, info: dict) -> str | None:
    value = info.get("precision") or manifest.get("precision")
    return value.lower() if isinstance(value, str) else None


class OpenVINORunner(Runner):
    """One compiled model and one reused infer request for ``run`` (not thread-safe); for queries
    in flight at once, ``parallel_calls`` (one infer request per thread) or ``infer_queue``.

    ``memory_bytes``: the GPU plugin's own allocation statistics on a GPU; the CPU plugin reports
    none, so there it is what the process took while the model compiled and ran its first query
    (edgecsp.backends.base.MemoryMeter).
    """

    def __init__(self, compiled_model: Any, core: Any, device: str, mode: str, meter: MemoryMeter | None = None,
                 input_layout: str = "nchw-f32"):
        self.compiled_model = compiled_model
        # "nhwc-u8": letterboxed uint8 frames, normalised inside the model (openvino_preprocess)
        self.input_layout = input_layout
        self._dtype = np.uint8 if input_layout == "nhwc-u8" else np.float32
        self._core, self._device, self._mode = core, device, mode
        self._meter = meter or MemoryMeter()
        self._request = compiled_model.create_infer_request()
        shape = compiled_model.input(0).get_partial_shape()
        self.input_shape = tuple(d.get_length() if d.is_static else -1 for d in shape)
        self._static_batch = static_batch(compiled_model)

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=self._dtype)
        expected = self.input_shape[1:]
        if batch.ndim != 4 or any(e != -1 and e != s for e, s in zip(expected, batch.shape[1:])):
            raise EdgeCSPError(f"OpenVINO engine expects batches shaped (N, {', '.join(map(str, expected))}), "
                               f"got {tuple(batch.shape)}; letterbox images to the artifact's input size")
        if self._meter.first_query_pending:
            return self._meter.first_query(lambda: run_in_static_batches(self._infer, batch, self._static_batch))
        return run_in_static_batches(self._infer, batch, self._static_batch)

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        self._request.infer({0: np.ascontiguousarray(chunk)})
        return self._request.get_output_tensor(0).data.copy()  # the request reuses its output buffer

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(thread_safe=False, parallel=int(self._property("OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1),
                            parallel_kind="infer-requests", async_queue=True)

    def parallel_calls(self, n: int) -> list[Callable[[np.ndarray], np.ndarray]]:
        """One synchronous call per infer request, each for its own thread: no OpenVINO thread ever
        enters Python (an AsyncInferQueue's Python callback does, see bench/harness.py). The input
        is read in place (an application hands its frame over without a copy); the output is
        copied out once, as the application needs it."""
        static_batch = self._static_batch

        def make(request: Any) -> Callable[[np.ndarray], np.ndarray]:
            def infer(x: np.ndarray) -> np.ndarray:
                request.infer({0: np.ascontiguousarray(x, dtype=np.float32)}, share_inputs=True, share_outputs=True)
                return request.get_output_tensor(0).data.copy()  # the request reuses its output buffer

            return lambda batch: run_in_static_batches(infer, batch, static_batch)

        return [make(self.compiled_model.create_infer_request()) for _ in range(max(1, n))]

    def infer_queue(self, n_requests: int | None = None) -> Any:
        """An ov.AsyncInferQueue.

        Usage: ``q = runner.infer_queue(); q.set_callback(fn)`` where ``fn(request, userdata)``
        reads ``request.get_output_tensor(0).data`` (copy it: the buffer is reused);
        ``q.start_async({0: batch}, userdata)`` per input, then ``q.wait_all()``. The default size
        is the plugin's OPTIMAL_NUMBER_OF_INFER_REQUESTS for the chosen performance hint.
        """
        from openvino import AsyncInferQueue  # type: ignore[import-untyped]

        return AsyncInferQueue(self.compiled_model, n_requests or self.capabilities.parallel)

    def memory_bytes(self) -> int | None:
        if self._device.upper().startswith("GPU"):
            try:  # bytes per allocation type (usm_device, usm_host, cl_mem...) that the plugin holds
                stats = self._core.get_property(self._device, "GPU_MEMORY_STATISTICS")
            except RuntimeError:
                stats = None
            if isinstance(stats, dict) and stats:
                return int(sum(int(v) for v in stats.values()))
        return self._meter.bytes or None

    def _property(self, name: str) -> Any:
        try:
            return self.compiled_model.get_property(name)
        except RuntimeError:
            return None

    def describe(self) -> dict:
        from openvino import __version__  # type: ignore[import-untyped]

        prop = self._property
        streams = prop("NUM_STREAMS")
        return {
            "backend": "openvino", "openvino": __version__, "device": self._device,
            "device_name": OpenVINOBackend._device_name(self._core, self._device),
            "execution_devices": list(prop("EXECUTION_DEVICES") or []),
            "inference_precision": _type_name(prop("INFERENCE_PRECISION_HINT")),
            "performance_hint": str(prop("PERFORMANCE_HINT")), "mode": self._mode,
            "streams": int(streams.num if hasattr(streams, "num") else streams or 0),
            "threads": int(prop("INFERENCE_NUM_THREADS") or 0),
            "optimal_requests": int(prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS") or 1),
            "input_layout": self.input_layout,
        }

    def close(self) -> None:
        self._request = None
        self.compiled_model = None
