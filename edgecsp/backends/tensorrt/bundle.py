"""Jetson bundles: everything device-independent, compiled anywhere; the engine is built on the device.

A TensorRT engine only loads in the TensorRT version and on the GPU that built it, so a compile
without TensorRT (or for another device) writes a *bundle*: an artifact whose files are
  model.onnx              FP32 export (the reference; TensorRT 8.x builds from it)
  model.fp16.onnx         FP16-typed copy (fp16: strongly typed builds, TensorRT >= 10)
  model.int8.qdq.onnx     INT8 Q/DQ following TensorRT's rules (int8: TensorRT >= 10)
  calibration.cache       the same INT8 scales as TensorRT's implicit-calibration cache (8.x)
  *.nms.onnx              the same with TensorRT's EfficientNMS plugin appended (nms = true)
  verify.npz              the verification set: letterboxed validation images, their ground
                          truth, and the host's detections of the FP32 ONNX and of the model
                          TensorRT builds (edgecsp.verifyset)
  JETSON.md               the on-device guide: one edgecsp command, and the trtexec equivalent
and whose manifest records the accuracy of the model TensorRT will build (measured with ONNX
Runtime against the FP32 PyTorch reference). On the device, ``build_from_bundle`` checks the
checksums, builds the engine, scores it on the verification set against the host's reference
detections (numpy only: no data to generate, no pycocotools) and writes a new artifact with it.
Only the device install is needed for that (Python 3.8+, no torch, no ONNX).

``stand_in="onnxruntime"`` (``--stand-in onnxruntime``) rehearses the device flow where there is
no TensorRT, e.g. in CI: everything runs for real except the engine build, and the artifact's
"engine" is the bundle's verified ONNX model (int8: the FP32-typed Q/DQ model), run by ONNX
Runtime; its manifest says so
(backend.info.stand_in). It is never chosen by itself: without TensorRT and without the option the
command fails.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecsp.backends.base import BuildRequest, BuildResult
from edgecsp.errors import EdgeCSPError
from edgecsp.gate import GateResult
from edgecsp.manifest import Manifest
from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE

FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8_qdq": "model.int8.qdq.onnx",
         "calibration_cache": "calibration.cache", "verify": "verify.npz", "int8_qdq_fp16": "model.int8.qdq.fp16.onnx"}
STAND_INS = ("onnxruntime",)
GUIDE = "JETSON.md"
ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"
# The header TensorRT 8.x expects on a cache; the on-device builder retags it with its own version.
CACHE_TAG_VERSION = "8.5.2"


def _build_table(options: dict) -> dict[str, Any]:
    """The [build] options given (checked; the one list is TensorRTBuildOptions): the bundle records them."""
    from edgecsp.backends.tensorrt.build import TensorRTBuildOptions

    return TensorRTBuildOptions.given(options)


def _input_shape(model: Any) -> list[int | str]:
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else "dynamic" for d in dims]


def verification_model(precision: str) -> str:
    """The bundle file whose accuracy the manifest reports: the model TensorRT >= 10 builds."""
    return {"fp32": FILES["fp32"], "fp16": FILES["fp16"], "int8": FILES["int8_qdq"]}[precision]


def write_bundle(request: BuildRequest) -> BuildResult:
    """Write the bundle's files into ``request.out_dir`` (the pipeline's staging directory)."""
    import onnx

    from edgecsp.backends.tensorrt.qdq import to_fp16
    from edgecsp.jetson.profiles import check_device_precision

    out, precision = request.out_dir, request.precision
    build = _build_table(dict(request.options))
    check_device_precision(request.profile, precision, int(build.get("dla_core", -1)))
    fp32 = onnx.load(str(request.onnx_path))
    shutil.copy2(request.onnx_path, out / FILES["fp32"])
    files = {"fp32": FILES["fp32"]}
    info: dict[str, Any] = {}
    if precision == "fp16":
        onnx.save(to_fp16(fp32), str(out / FILES["fp16"]))
        files["fp16"] = FILES["fp16"]
    if precision == "int8":
        info["qdq"] = _write_qdq(request, files)
    if request.dataset is not None:
        info["verify"] = _write_verify_set(request, files, int(_input_shape(fp32)[2]))
        files["verify"] = FILES["verify"]
    if precision == "int8":
        _finish_int8(request, fp32, files, info)
    if build.get("nms"):
        _write_nms(out, fp32, files, build)
    info["bundle"] = bundle = _description(request, fp32, files, build)
    (out / GUIDE).write_text(guide(request.profile, precision, bundle))
    written = sorted(p.name for p in out.iterdir() if p.is_file())
    return BuildResult(engine=verification_model(precision), files=written, info=info)


def _write_qdq(request: BuildRequest, files: dict[str, str]) -> dict[str, Any]:
    """model.int8.qdq.onnx (TensorRT's Q/DQ rules) and calibration.cache (the same scales, for 8.x)."""
    from edgecsp.backends.tensorrt.qdq import format_calibration_cache, quantize_for_tensorrt

    calib = request.calibration
    if calib is None:
        raise EdgeCSPError("INT8 needs calibration images; pass --calibration <recipe>")
    recipe = dict(request.options).get("recipe")
    report = quantize_for_tensorrt(request.onnx_path, request.out_dir / FILES["int8_qdq"], calib.images,
                                   method=getattr(recipe, "method", "minmax"),
                                   percentile=getattr(recipe, "percentile", 99.999),
                                   keep_head_float=getattr(recipe, "keep_head_float", True))
    (request.out_dir / FILES["calibration_cache"]).write_text(
        format_calibration_cache(report.activation_scales, CACHE_TAG_VERSION))
    files["int8_qdq"] = FILES["int8_qdq"]
    files["calibration_cache"] = FILES["calibration_cache"]
    return {"quantized_convs": report.quantized_convs, "float_convs": report.float_convs,
            "quantized_tensors": len(report.activation_scales), "method": report.method,
            "calibration_images": report.images,
            "rules": "symmetric int8, zero-point 0, per-channel weights (axis 0), Q/DQ at Conv inputs "
                     "and residual Adds, float biases, head in float"}


def _finish_int8(request: BuildRequest, fp32: Any, files: dict[str, str], info: dict[str, Any]) -> None:
    """The sensitivity pass (with a verification set), then the FP16-typed Q/DQ copy and its detections."""
    import onnx

    from edgecsp.backends.tensorrt.qdq import to_fp16_qdq

    out = request.out_dir
    if request.dataset is not None:
        sensitivity = _sensitivity_pass(request, fp32, info["verify"])
        info["qdq"]["sensitivity"] = sensitivity
        if sensitivity.get("kept_float"):  # the Q/DQ model changed: its reference detections too
            info["qdq"]["float_convs"] += [f["conv"] for f in sensitivity["kept_float"]]
            info["qdq"]["quantized_convs"] -= len(sensitivity["kept_float"])
    # after the sensitivity pass: its floated convs run FP16 there too
    onnx.save(to_fp16_qdq(onnx.load(str(out / FILES["int8_qdq"]))), str(out / FILES["int8_qdq_fp16"]))
    files["int8_qdq_fp16"] = FILES["int8_qdq_fp16"]
    if request.dataset is not None:  # its detections go into the verification set too
        info["verify"] = _write_verify_set(request, files, int(_input_shape(fp32)[2]))


def _write_nms(out: Path, fp32: Any, files: dict[str, str], build: dict[str, Any]) -> None:
    """Each model again with TensorRT's EfficientNMS plugin appended (*.nms.onnx)."""
    import onnx

    from edgecsp.backends.tensorrt.qdq import add_efficient_nms

    num_classes = int(fp32.graph.output[0].type.tensor_type.shape.dim[2].dim_value) - 5
    for role in [r for r in ("fp32", "fp16", "int8_qdq", "int8_qdq_fp16") if r in files]:
        name = files[role].replace(".onnx", ".nms.onnx")
        nms = add_efficient_nms(out / files[role], num_classes,
                                score_threshold=float(build.get("nms_score_threshold", DEFAULT_SCORE)),
                                iou_threshold=float(build.get("nms_iou_threshold", DEFAULT_IOU)),
                                max_detections=int(build.get("nms_max_detections", 100)))
        onnx.save(nms, str(out / name))
        files[role + "_nms"] = name


def _description(request: BuildRequest, fp32: Any, files: dict[str, str], build: dict[str, Any]) -> dict[str, Any]:
    """backend.info.bundle: what the device builds from, and how."""
    shape = _input_shape(fp32)
    batch = request.profile.batch if shape[0] == "dynamic" else shape[0]
    return {"files": files, "precision": request.precision, "build": build,
            "input": {"name": fp32.graph.input[0].name, "shape": shape}, "batch": batch, "guide": GUIDE,
            "verified_model": verification_model(request.precision)}


def _sensitivity_pass(request: BuildRequest, fp32: Any, verify: dict[str, Any]) -> dict[str, Any]:
    """Where the Q/DQ model loses more AP50 on the verification images than the profile allows,
    float its costliest convs until it does not (edgecsp.backends.tensorrt.sensitivity); the manifest records
    which and what each cost. Inside the tolerance nothing runs (it costs a minute)."""
    import onnx

    from edgecsp import verifyset
    from edgecsp.backends.tensorrt.qdq import check_tensorrt_qdq
    from edgecsp.backends.tensorrt.sensitivity import keep_costliest_float
    from edgecsp.onnx_graph import head_nodes

    refs = verify["references"]
    tolerance = round(request.max_ap50_drop * 100, 3)
    drop = round((refs["fp32"]["AP50"] - refs["int8_qdq"]["AP50"]) * 100, 3)
    if drop <= tolerance:
        return {"ran": False, "ap50_drop_points": drop, "tolerance_points": tolerance,
                "why": "the Q/DQ model's AP50 drop on the verification images is inside the tolerance"}
    vs = verifyset.load(request.out_dir / FILES["verify"])
    path = request.out_dir / FILES["int8_qdq"]
    qdq = onnx.load(str(path))
    model, report = keep_costliest_float(qdq, fp32, request.calibration.images[:8],
                                         validate=lambda predict: vs.score(vs.run(predict))["AP50"],
                                         tolerance_points=tolerance, fp32_ap50=refs["fp32"]["AP50"])
    floated = [f["conv"] for f in report.floated]
    problems = check_tensorrt_qdq(model, float_nodes=head_nodes(fp32) + floated)
    if problems:
        raise EdgeCSPError(f"the Q/DQ model with floated layers breaks TensorRT's rules ({problems[0]}); report this")
    if floated:
        onnx.save(model, str(path))
    return {"ran": True, **report.as_dict(),
            "note": "TensorRT 8.x builds from model.onnx + calibration.cache and runs these layers in INT8 anyway"}


def _write_verify_set(request: BuildRequest, files: dict[str, str], input_size: int) -> dict[str, Any]:
    """verify.npz: the first validation images with the host's detections of the FP32 ONNX and of
    the model TensorRT builds (both in ONNX Runtime), for the device's check."""
    from edgecsp import verifyset
    from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner

    references = {role: files[role] for role in ("fp32", "fp16", "int8_qdq", "int8_qdq_fp16") if role in files}
    runners = {name: OnnxModelRunner(request.out_dir / f) for name, f in references.items()}
    try:
        arrays = verifyset.build(request.dataset, input_size, request.verify_images or verifyset.DEFAULT_IMAGES,
                                 {name: r.run for name, r in runners.items()})
    finally:
        for r in runners.values():
            r.close()
    path = request.out_dir / FILES["verify"]
    verifyset.save(path, arrays)
    vs = verifyset.VerifySet(arrays, path)
    return {"file": FILES["verify"], "images": vs.images, "bytes": path.stat().st_size,
            "references": {name: {"model": references[name], **vs.score(vs.reference(name))} for name in references},
            "evaluator": "edgecsp.cocoap (numpy, pycocotools' bbox AP)"}


# --------------------------------------------------------------------------------------------
# The on-device guide


def trtexec_line(files: dict[str, str], precision: str, build: dict, shape: list[int | str], trt_major: int) -> str:
    """The trtexec command equivalent to edgecsp's on-device build for a TensorRT major version."""
    from edgecsp.backends.tensorrt.build import EngineOptions, plan_build

    batch: int | str = "dynamic" if shape[0] == "dynamic" else int(shape[0])
    opts = EngineOptions.from_build_table(precision, build, batch)
    plan = plan_build(trt_major, files, opts)
    parts = ["/usr/src/tensorrt/bin/trtexec", f"--onnx={plan.onnx}", f"--saveEngine={ENGINE}"]
    if plan.strongly_typed:
        parts.append("--stronglyTyped")
    parts += [f"--{flag.lower()}" for flag in plan.flags]
    if plan.calibration_cache:
        parts.append(f"--calib={plan.calibration_cache}")
    # --workspace is TensorRT 8.2's spelling (8.4+ still accept it); 10 only knows --memPoolSize.
    parts.append(f"--memPoolSize=workspace:{opts.workspace_mb}" if trt_major >= 10 else f"--workspace={opts.workspace_mb}")
    if trt_major >= 10 and opts.optimization_level is not None:
        parts.append(f"--builderOptimizationLevel={opts.optimization_level}")
    if opts.dla_core >= 0:
        parts.append(f"--useDLACore={opts.dla_core}")
        if opts.gpu_fallback:
            parts.append("--allowGPUFallback")
    if batch == "dynamic":
        chw = "x".join(str(d) for d in shape[1:])
        parts += [f"--minShapes=images:1x{chw}", f"--optShapes=images:{opts.opt_batch}x{chw}",
                  f"--maxShapes=images:{opts.max_batch}x{chw}"]
    if opts.timing_cache:
        parts.append(f"--timingCacheFile={TIMING_CACHE}")
    return " ".join(parts)


def guide(profile, precision: str, bundle: dict) -> str:
    hw = profile.hardware
    files, build, shape = bundle["files"], bundle["build"], bundle["input"]["shape"]
    jetpacks = hw.get("jetpack", {}) or {}
    lines = [
        f"# Deploying this model on an NVIDIA Jetson ({precision})",
        "",
        f"Compiled for `{profile.name}` ({hw.get('module', profile.description)}). A TensorRT engine only loads in the",
        "TensorRT version and on the GPU that built it, so the engine is built here, on the device, once.",
        "`manifest.json` holds every file's sha256 and the accuracy of the model TensorRT builds",
        f"(`{bundle['verified_model']}`, measured with ONNX Runtime against the FP32 reference).",
        "",
        "## Build the engine on the device (one command)",
        "",
        "```",
        "pip install 'edgecsp[tensorrt]'   # TensorRT itself comes with JetPack; see docs/jetson.md for cuda-python",
        "cd <this directory>",
        "python -m edgecsp.compile --target jetson --from-bundle .",
        "```",
        "",
        "`--target jetson` detects the Jetson it runs on; name a profile (e.g. `--target jetson-orin-nx`) to override.",
        "It checks the checksums, builds `model.engine` with the installed TensorRT, verifies its accuracy",
        "against the FP32 ONNX and writes a new artifact beside this one (`edgecsp.load` opens it).",
        "",
        "## The same with trtexec",
        "",
    ]
    majors: dict[int, list[str]] = {}
    for jp, trt in jetpacks.items():
        majors.setdefault(10 if int(str(trt).split(".")[0]) >= 10 else 8, []).append(f"JetPack {jp} (TensorRT {trt})")
    if not majors:
        majors = {10: ["TensorRT 10"], 8: ["TensorRT 8.x"]}
    for major in sorted(majors, reverse=True):
        lines += [f"{', '.join(majors[major])}:", "", "```", trtexec_line(files, precision, build, shape, major),
                  "```", ""]
    lines += ["TensorRT 11 has no precision flags: the strongly typed line above is the one that works there.",
              "An engine built with trtexec has no edgecsp manifest; build with edgecsp to load it with `edgecsp.load`.",
              ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# On the device


@dataclass
class DevicePlan:
    """What ``build_from_bundle`` checked before any work: the bundle, the profile and the build."""

    root: Path  # the bundle
    manifest: dict[str, Any]
    bundle: dict[str, Any]  # backend.info.bundle
    profile: Any
    precision: str
    build: dict[str, Any]  # the bundle's build table, the device profile's [build] over it
    stand_in: str | None


def build_from_bundle(bundle_dir: str | Path, target: str = "jetson", out: str | Path | None = None,
                      data: str | Path | None = None, verify_images: int | None = 100,
                      allow_accuracy_drop: bool = False, progress: Callable[[str], None] = print,
                      stand_in: str | None = None, verify: bool = True,
                      sign: Path | None = None) -> tuple[Path, dict]:
    """Build the engine of a bundle with this machine's TensorRT; returns (artifact dir, manifest).

    ``stand_in="onnxruntime"``: no TensorRT build; ONNX Runtime runs the bundle's verified model
    (see the module doc). Only when asked for. ``verify=False`` (--no-verify) keeps the engine
    unmeasured: its manifest says "unverified". The gate and the publishing are the compile's own
    (edgecsp.gate.GateResult, edgecsp.artifact.publish).
    """
    from edgecsp.artifact import publish, staging_dir
    from edgecsp.gate import check_image_count

    check_image_count(verify_images, "--verify-images")
    signing_key = _signing_key(sign)
    plan = _device_plan(bundle_dir, target, stand_in)
    out = Path(out) if out else plan.root.parent / f"{plan.root.name}-engine"
    staging = staging_dir(out)
    done = False
    try:
        _copy_bundle(plan, staging)
        new = _built_manifest(plan, staging, progress)
        host = new.get("accuracy")  # the host's measurement of the model TensorRT builds
        accuracy: dict[str, Any] = host if isinstance(host, dict) else {}
        new["accuracy"] = accuracy
        if verify:
            gate = _verify_on_device(staging, new, data, verify_images, progress)
            accuracy["device"], accuracy["status"] = gate.to_manifest(), gate.status
            gate.enforce(allow_accuracy_drop, data or "the default data",
                         f"the engine loses {gate.ap50_drop_points:.2f} AP50 points against the FP32 ONNX "
                         f"(tolerance {gate.tolerance_points}); try --precision fp16, or pass --allow-accuracy-drop "
                         "to keep it")
        else:
            progress("verify: skipped (--no-verify); the manifest says accuracy status 'unverified'")
            accuracy["status"] = "unverified"  # the host measured the ONNX model, not this engine
        final, manifest = publish(staging, out, new, signing_key)
        done = True  # moved into place
        progress(f"artifact: {final}")
        return final, manifest.raw
    finally:
        if not done:
            shutil.rmtree(staging, ignore_errors=True)


def _signing_key(sign: Path | None) -> Any:
    if sign is None:
        return None
    from edgecsp.signing import load_private_key

    return load_private_key(sign)  # a bad key fails before any work


def _device_plan(bundle_dir: str | Path, target: str, stand_in: str | None) -> DevicePlan:
    """The bundle (checksums, description), the device profile and the precision, checked."""
    from edgecsp.artifact import open_manifest
    from edgecsp.backends.tensorrt.runner import load_tensorrt
    from edgecsp.jetson.profiles import check_device_precision
    from edgecsp.targets import load_target

    root, manifest = open_manifest(bundle_dir)  # every file's sha256, or a one-line error
    bundle = manifest.bundle
    if manifest.backend_name != "tensorrt" or not bundle:
        raise EdgeCSPError(f"{root} is not a TensorRT bundle; make one with python -m edgecsp.compile --target jetson")
    profile = load_target(target)
    if profile.backend != "tensorrt":
        raise EdgeCSPError(f"target {profile.name} is not a TensorRT target; use --target jetson")
    _check_bundle(bundle, manifest.raw, root)
    precision = manifest.precision
    profile.check_precision(precision)
    build = {**bundle["build"], **_build_table(profile.build)}
    check_device_precision(profile, precision, int(build.get("dla_core", -1)))
    if stand_in is not None and stand_in not in STAND_INS:
        raise EdgeCSPError(f"unknown stand-in {stand_in!r}; the one there is: {', '.join(STAND_INS)}")
    if stand_in is None and load_tensorrt() is None:
        raise EdgeCSPError("TensorRT is not installed here; on a Jetson it comes with JetPack "
                           "(sudo apt install python3-libnvinfer); elsewhere pip install tensorrt")
    return DevicePlan(root, manifest.raw, bundle, profile, precision, build, stand_in)


def _copy_bundle(plan: DevicePlan, staging: Path) -> None:
    """The bundle's files (not its engine or manifest) into the new artifact; its timing cache too,
    so a rebuild on the same device reuses the timings."""
    from edgecsp.artifact import MANIFEST

    for name in plan.manifest.get("files", {}):
        if name not in (ENGINE, TIMING_CACHE, MANIFEST):
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(plan.root / name, staging / name)
    if (plan.root / TIMING_CACHE).is_file():
        shutil.copy2(plan.root / TIMING_CACHE, staging / TIMING_CACHE)


def _built_manifest(plan: DevicePlan, staging: Path, progress: Callable[[str], None]) -> dict[str, Any]:
    """Build the engine (or stand in for it) and return the new artifact's draft manifest."""
    from edgecsp.backends.tensorrt.build import EngineOptions, build_engine, plan_build

    opts = EngineOptions.from_build_table(plan.precision, plan.build, plan.bundle.get("batch", 1))
    new = json.loads(json.dumps(plan.manifest))
    new.pop("files", None)
    new["target"] = plan.profile.as_dict()
    new["backend"]["info"]["built_from_bundle"] = str(plan.root)
    if plan.stand_in is None:
        progress(f"build {plan.precision} engine for {plan.profile.name} from {plan.root}")
        facts = build_engine(staging, plan.bundle["files"], opts, plan.bundle["input"]["shape"], ENGINE,
                             TIMING_CACHE, progress=progress)
        new["engine"] = ENGINE
        new["backend"]["version"] = facts["tensorrt_version"]
        new["backend"]["info"]["tensorrt"] = facts
    else:  # the model whose accuracy the host measured: ONNX Runtime's CPU kernels for the
        # FP16-typed Q/DQ model differ between releases (1.19, the last for Python 3.8, loses AP)
        new["engine"] = _stand_in(new, plan.bundle.get("verified_model") or plan_build(10, plan.bundle["files"],
                                                                                       opts).onnx, progress)
    return new


def _stand_in(manifest: dict, model: str, progress: Callable[[str], None]) -> str:
    """Mark the manifest as a stand-in build; its engine is ``model`` (the bundle's verified ONNX model)."""
    import onnxruntime

    progress(f"STAND-IN: no TensorRT engine is built; ONNX Runtime {onnxruntime.__version__} runs {model}, the model "
             "the host verified (--stand-in onnxruntime)")
    manifest["backend"]["version"] = f"stand-in: onnxruntime {onnxruntime.__version__}"
    manifest["backend"]["info"]["stand_in"] = {"runtime": "onnxruntime", "version": onnxruntime.__version__,
                                               "model": model, "note": "no TensorRT engine: a rehearsal of the "
                                               "on-device flow; rebuild on the device for a real engine"}
    return model


def _check_bundle(bundle: Any, manifest: dict, root: Path) -> None:
    """The bundle description drives the build: its shape is checked, and every model it names
    must be a listed (so checksummed, inside the artifact) file."""
    ok = (isinstance(bundle, dict) and isinstance(bundle.get("build"), dict) and isinstance(bundle.get("files"), dict)
          and isinstance(bundle.get("input"), dict) and isinstance(bundle["input"].get("shape"), list))
    if not ok:
        raise EdgeCSPError(f"{root} has a damaged bundle description (backend.info.bundle); rebuild the bundle with "
                           "python -m edgecsp.compile --target jetson")
    listed = manifest.get("files", {})
    for name in bundle["files"].values():
        if isinstance(name, str) and name not in listed:
            raise EdgeCSPError(f"{root}: the bundle names {name!r}, which its manifest does not list and checksum; "
                               "refused: rebuild the bundle")


def _engine_runner(root: Path, manifest: dict) -> Any:
    if manifest["backend"]["info"].get("stand_in"):
        from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner

        return OnnxModelRunner(root / manifest["engine"])
    from edgecsp.backends.tensorrt.runner import TensorRTRunner

    return TensorRTRunner(root / manifest["engine"], manifest)


def _verify_on_device(root: Path, manifest: dict, data: str | Path | None, images: int | None,
                      progress: Callable[[str], None]) -> GateResult:
    """The engine's AP against the host's FP32 ONNX (and the model TensorRT built) on the bundle's
    verification set; with ``data``, on that data set against the FP32 ONNX run here instead."""
    if data is not None:
        return _verify_on_dataset(root, manifest, data, images, progress)
    from edgecsp import verifyset
    from edgecsp.predictor import Predictor

    name = manifest["backend"]["info"]["bundle"]["files"].get("verify")
    if not name:
        raise EdgeCSPError(f"{root.name} carries no verification set (a bundle from an older edgecsp): pass "
                           "--data VAL (needs the host extra) or --verify-images 0, or rebuild the bundle")
    vs = verifyset.load(root / name)
    if images:
        vs = vs.first(int(images))
    progress(f"verify the engine on the bundle's {vs.images} images against the host's reference detections")
    runner = _engine_runner(root, manifest)
    try:
        engine = vs.score(vs.run(Predictor(root, manifest, runner).predict_batch))
    finally:
        runner.close()
    refs = {ref: vs.score(vs.reference(ref)) for ref in vs.references}
    built = {ref: m for ref, m in refs.items() if ref != "fp32"}
    gate = GateResult.measure(refs["fp32"], engine, Manifest.of(manifest).tolerance_points,
                              f"{name} (the bundle's verification set)", vs.images, layout="device",
                              evaluator="edgecsp.cocoap (numpy)", host_models=built)
    _say(gate, progress)
    for ref, m in built.items():
        progress(f"      the host's {ref} model in ONNX Runtime: AP50 {m['AP50']:.4f}, AP {m['AP']:.4f}")
    return gate


def _say(gate: GateResult, progress: Callable[[str], None]) -> None:
    ref, engine = gate.reference or {}, gate.candidate or {}
    progress(f"      engine AP50 {engine['AP50']:.4f} vs FP32 ONNX {ref['AP50']:.4f} "
             f"(drop {gate.ap50_drop_points:+.2f} points); AP {engine['AP']:.4f} vs {ref['AP']:.4f}")


def _verify_on_dataset(root: Path, manifest: dict, data: str | Path, images: int | None,
                       progress: Callable[[str], None]) -> GateResult:
    """Engine AP against the bundle's FP32 ONNX (ONNX Runtime) on the same images of ``data``
    (host extra: ONNX Runtime and pycocotools)."""
    from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner
    from edgecsp.coco_eval import check_classes, evaluate
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.predictor import Predictor

    dataset = resolve_dataset(Path(data))
    check_classes(list(manifest["model"]["class_names"]), dataset, "the bundle")
    size = int(manifest["model"]["input_size"][0])
    progress(f"verify the engine on {images or len(dataset)} images of {data} against the FP32 ONNX")
    metrics = {}
    for key, runner in (("engine", lambda: _engine_runner(root, manifest)),
                        ("reference", lambda: OnnxModelRunner(root / FILES["fp32"]))):
        r = runner()
        try:
            predictor = Predictor(root, manifest, r)
            metrics[key] = evaluate(predictor.predict_batch, dataset, size, progress=False, resize=predictor.resize,
                                    max_images=images)
        finally:
            r.close()
    gate = GateResult.measure(metrics["reference"], metrics["engine"], Manifest.of(manifest).tolerance_points,
                              data, metrics["engine"].get("images"), layout="device")
    _say(gate, progress)
    return gate
