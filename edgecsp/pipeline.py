"""The compile pipeline as steps: prepare -> export -> calibrate -> build -> verify -> publish.

Each step is a function with a small typed input and result, used alike by ``compile``,
``compile --from-bundle`` (verify's gate and publish), ``benchmark --target`` and the nightly
(edgecsp.bench.on_demand). Every step reports progress; any failure raises EdgeCSPError and
leaves no artifact behind (the artifact is assembled in a staging directory and renamed into
place only when complete).

A warm compile does only what changed: export, calibration data, engine and verification are
each kept in the cache under a key of everything they depend on (model hash, options, backend
and edgecsp versions, data), reused when the key matches and their files still match their
sha256, and each reuse is said in one progress line and recorded in the manifest (``reused``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable  # typing's: collections.abc.Callable[...] is not subscriptable at run time on 3.8

from edgecsp import __version__
from edgecsp.errors import EdgeCSPError
from edgecsp.faults import failpoint
from edgecsp.fsutil import atomic_write, os_problem, private_tmpdir, publish_dir_once, remove_stale
from edgecsp.gate import GateResult

Progress = Callable[[str], None]


@dataclass
class CompileOptions:
    target: str
    model: str | None = "demo"
    precision: str | None = None
    calibration: str | None = None  # recipe name or path
    data: Path | None = None  # validation set (default: the shapes val split, generated on demand)
    out: Path | None = None
    allow_accuracy_drop: bool = False
    batch: int | str | None = None
    nms: bool = False
    verify_images: int | None = None  # None: the whole validation set
    sign: Path | None = None  # Ed25519 private key (edgecsp.signing): the artifact gets manifest.sig
    verify: bool = True  # False: --no-verify, the manifest says "unverified"


# -- step inputs and results --------------------------------------------------------------------


@dataclass
class Plan:
    """What ``prepare`` resolved and checked before any work: the input of every later step."""

    opts: CompileOptions
    profile: Any  # edgecsp.targets.TargetProfile
    precision: str
    backend: Any  # edgecsp.backends.Backend
    backend_version: str
    dataset: Any  # the validation set (edgecsp.data.coco.DetectionDataset)
    data_hash: str  # of its annotations: part of every cache key that reads it
    model: Any
    description: dict[str, Any]
    model_hash: str
    size: int
    batch: int | str
    resize: str  # letterbox, or stretch (Darknet cfgs trained that way)
    out: Path
    signing_key: Any = None

    @property
    def model_name(self) -> Any:
        return self.description.get("name", self.opts.model)


@dataclass
class Exported:
    path: Path  # model.onnx in the work folder
    facts: dict[str, Any]  # the export report, as the manifest's "export"
    graph: dict[str, int]  # MACs and CIO per frame, for the benchmark on a device without torch
    reused: str | None = None  # the cache key when reused


@dataclass
class Calibrated:
    recipe: Any  # edgecsp.calibration.CalibrationRecipe
    data_hash: str
    names: list[str]
    images: Any = None  # (N, 3, H, W) float32, loaded only when a build needs them
    reused: str | None = None

    def load(self, plan: Plan) -> Calibrated:
        """With the images in memory (a reused step only knows their hash)."""
        if self.images is None:
            from edgecsp.calibration import calibration_set

            calib = calibration_set(self.recipe, plan.size, plan.resize)
            self.images, self.data_hash, self.names = calib.images, calib.data_hash, calib.sources
        return self


@dataclass
class Built:
    engine: str
    files: list[str]
    info: dict[str, Any]
    digests: dict[str, str] = field(default_factory=dict)  # sha256 per file
    reused: str | None = None


@dataclass
class Verified:
    gate: GateResult
    reused: str | None = None


# -- the steps ---------------------------------------------------------------------------------


def compile_artifact(opts: CompileOptions, progress: Progress = print) -> tuple[Path, dict[str, Any]]:
    """Build one artifact; any failure is an EdgeCSPError and leaves nothing at the output path."""
    try:
        return _compile(opts, progress)
    except OSError as err:  # disk full, read-only or unwritable output: the user's to fix, one line
        problem = os_problem(err, opts.out)
        if problem is None:
            raise
        raise problem from None


def _compile(opts: CompileOptions, progress: Progress) -> tuple[Path, dict[str, Any]]:
    from edgecsp.artifact import staging_dir

    t_start = time.time()
    plan = prepare(opts, progress)
    timings: dict[str, float] = {}
    # The staging directory comes first: an unwritable or full output location fails before any work.
    staging: Path | None = staging_dir(plan.out)
    remove_stale(Path(tempfile.gettempdir()), "edgecsp-compile-")  # what killed compiles left
    work = private_tmpdir(Path(tempfile.gettempdir()), "edgecsp-compile-")
    try:
        exported = _timed(timings, "export_s", lambda: export(plan, work, progress))
        calibrated = _timed(timings, "calibration_data_s", lambda: calibrate(plan, progress))
        if calibrated is None:
            del timings["calibration_data_s"]
        built = _timed(timings, "build_s", lambda: build(plan, exported, calibrated, staging, progress))
        draft = manifest_of(plan, exported, calibrated, built)
        verified = _timed(timings, "verify_s", lambda: verify(plan, built, staging, draft, progress))
        draft["accuracy"] = verified.gate.to_manifest()
        draft["reused"] = _reuse_record(exported, calibrated, built, verified)
        timings["total_s"] = round(time.time() - t_start, 2)
        draft["timings"] = timings
        final, manifest = publish(staging, plan.out, draft, plan.signing_key)
        staging = None
        progress(f"artifact: {final} (+ {final.name}.tar.gz), {timings['total_s']} s in all")
        return final, manifest
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _timed(timings: dict[str, float], key: str, step: Callable[[], Any]) -> Any:
    t = time.time()
    result = step()
    timings[key] = round(time.time() - t, 2)
    return result


def prepare(opts: CompileOptions, progress: Progress) -> Plan:
    """Resolve target, backend, data and model, and check them all before any work."""
    from edgecsp.backends import get_backend
    from edgecsp.gate import check_image_count
    from edgecsp.targets import load_target

    check_image_count(opts.verify_images, "--verify-images")
    signing_key = None
    if opts.sign is not None:
        from edgecsp.signing import load_private_key

        signing_key = load_private_key(opts.sign)  # a bad key fails before any work
    profile = load_target(opts.target)
    precision = profile.check_precision(opts.precision)
    backend = get_backend(profile.backend)
    backend_version = backend.version()  # fails here, with the install hint, before any work
    if precision not in backend.precisions:
        raise EdgeCSPError(f"backend {backend.name} cannot build {precision}; it builds {', '.join(backend.precisions)}")
    dataset, model, description = _data_and_model(opts, progress)
    size = profile.input_size or model.config.input_size
    batch = opts.batch if opts.batch is not None else profile.batch
    _check_batch(batch, size)
    from edgecsp.artifact import sha256_file
    from edgecsp.models.checkpoint import resize_of

    out = Path(opts.out or Path("artifacts") / f"{Path(str(opts.model or 'demo')).stem}-{profile.name}-{precision}")
    return Plan(opts, profile, precision, backend, backend_version, dataset,
                sha256_file(Path(dataset.annotations_path))[:16], model, description, model_hash_of(model), size,
                batch, resize_of(model), out, signing_key)


def _data_and_model(opts: CompileOptions, progress: Progress) -> tuple[Any, Any, dict[str, Any]]:
    """The validation set and the model, checked against each other."""
    from edgecsp.coco_eval import check_classes, check_evaluable
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.shapes import validation_data
    from edgecsp.models.checkpoint import is_darknet, resolve_model

    opts.data = validation_data(opts.data, progress)
    dataset = resolve_dataset(opts.data)
    # An untrained Darknet cfg takes the data's class count; any trained model must match it.
    model, description = resolve_model(opts.model, num_classes=dataset.num_classes)
    if is_darknet(model) and not getattr(opts.model, "names", None):
        description["class_names"] = list(dataset.class_names)  # no .names: the data set's names
    if dataset.num_classes != model.config.num_classes:
        raise EdgeCSPError(f"validation set {opts.data} has {dataset.num_classes} classes, "
                           f"the model has {model.config.num_classes}; pass the model's own validation data with --data")
    check_classes(list(description["class_names"]), dataset, f"model {description.get('name', opts.model)}")
    if opts.verify:
        check_evaluable(dataset, opts.verify_images)  # before any build: a gate on no boxes would pass vacuously
    return dataset, model, description


def export(plan: Plan, work: Path, progress: Progress) -> Exported:
    """Step 1: the model as ONNX (with its parity check against PyTorch), or the cached export."""
    key = _key("export", plan.model_hash, plan.size, plan.batch, plan.data_hash, _torch_versions(),
               json.dumps(plan.description, sort_keys=True, default=str))
    hit = _cache_get("exports", key)
    if hit is not None:
        shutil.copy2(hit[0] / "model.onnx", work / "model.onnx")
        progress(f"[1/4] export: reused (cache {key}: same model, input size, batch and data)")
        return Exported(work / "model.onnx", hit[1]["export"], hit[1].get("graph") or _graph_counts(plan), key)
    from edgecsp.onnx_writer import export_onnx

    progress(f"[1/4] export {plan.model_name} to ONNX (input {plan.size}x{plan.size}, batch {plan.batch})")
    t = time.time()
    parity = [plan.dataset[i][0] for i in range(min(4, len(plan.dataset)))]  # real images of the user's data
    report = export_onnx(plan.model, work / "model.onnx", batch=plan.batch, input_size=plan.size, nms=False,
                         parity_images=parity, description=plan.description)
    progress(f"      parity vs PyTorch: max abs diff {report.max_abs_diff:.2e} ({round(time.time() - t, 2)} s)")
    facts = {k: v for k, v in report.as_dict().items() if k != "path"}
    graph = _graph_counts(plan)
    _cache_write(lambda: _cache_put("exports", key, work, ["model.onnx"], {"export": facts, "graph": graph}))
    return Exported(work / "model.onnx", facts, graph)


def _graph_counts(plan: Plan) -> dict[str, int]:
    from edgecsp.complexity import profile

    counts = profile(plan.model, plan.size)
    return {"macs": int(counts["macs"]), "cio": int(counts["cio"])}


def calibrate(plan: Plan, progress: Progress) -> Calibrated | None:
    """Step 2 (INT8 only): the recipe's calibration images; a warm compile knows their hash and
    loads them only if the engine must be built again."""
    if plan.precision != "int8":
        progress(f"[2/4] calibration: not needed for {plan.precision}")
        return None
    from edgecsp.calibration import load_recipe, selected_files
    from edgecsp.paths import cache_dir

    recipe = load_recipe(plan.opts.calibration)
    files = selected_files(recipe)
    key = _key("calibration", recipe.digest(), plan.size, plan.resize,
               *(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files))
    path = cache_dir() / "calibration" / f"{key}.json"
    try:
        cached = json.loads(path.read_text())
        progress(f"[2/4] calibration data: reused (cache {key}: recipe {recipe.name}, the same {len(files)} files)")
        return Calibrated(recipe, str(cached["data_hash"]), list(cached["names"]), reused=key)
    except (OSError, ValueError, KeyError, TypeError):  # absent or damaged: read the images
        pass
    progress(f"[2/4] calibration data: recipe {recipe.name} ({recipe.method}, {recipe.num_images} images)")
    calibrated = Calibrated(recipe, "", []).load(plan)
    _cache_write(lambda: atomic_write(path, json.dumps({"data_hash": calibrated.data_hash,
                                                        "names": calibrated.names})))
    return calibrated


def build(plan: Plan, exported: Exported, calibrated: Calibrated | None, staging: Path,
          progress: Progress) -> Built:
    """Step 3: the backend's engine files in ``staging`` (or the cached build of the same inputs)."""
    key = _engine_key(plan, calibrated)
    name, precision = plan.backend.name, plan.precision
    hit = _cache_get("engines", key)
    if hit is not None:
        progress(f"[3/4] {name} {precision}: reused (cache {key}; reusing the cached build of the same model, data "
                 "and recipe)")
        for f in hit[1]["files"]:
            shutil.copy2(hit[0] / f, staging / f)
        return Built(hit[1]["engine"], hit[1]["files"], hit[1]["info"], hit[1]["sha256"], reused=key)
    progress(f"[3/4] build {name} {precision} engine")
    result = plan.backend.build(_build_request(plan, exported, calibrated, staging))
    failpoint("build.engine_written")
    meta = {"engine": result.engine, "files": result.files, "info": result.info}
    if not result.info.get("no_cache"):
        _cache_write(lambda: _cache_put("engines", key, staging, result.files, meta))
    return Built(result.engine, result.files, result.info, _digests(staging, result.files))


def _build_request(plan: Plan, exported: Exported, calibrated: Calibrated | None, staging: Path) -> Any:
    from edgecsp.backends import BuildRequest
    from edgecsp.coco_eval import evaluate

    def validate(predict) -> float:
        return evaluate(predict, plan.dataset, plan.size, progress=False, max_images=plan.opts.verify_images,
                        resize=plan.resize)["AP50"]

    recipe = calibrated.recipe if calibrated else None
    calib = None
    if calibrated is not None:
        from edgecsp.calibration import CalibrationSet

        calibrated.load(plan)
        calib = CalibrationSet(calibrated.images, calibrated.data_hash, calibrated.names)
    return BuildRequest(onnx_path=exported.path, precision=plan.precision, profile=plan.profile, out_dir=staging,
                        calibration=calib, validate=validate, max_ap50_drop=plan.profile.max_ap50_drop / 100,
                        options={**plan.profile.build, "recipe": recipe, **({"nms": True} if plan.opts.nms else {})},
                        dataset=plan.dataset, verify_images=plan.opts.verify_images)


def verify(plan: Plan, built: Built, staging: Path, draft: dict[str, Any], progress: Progress) -> Verified:
    """Step 4, the gate: the engine's AP50 against the FP32 PyTorch reference on the validation images."""
    tolerance = plan.profile.max_ap50_drop
    if not plan.opts.verify:
        progress("[4/4] verify: skipped (--no-verify); the manifest says accuracy status 'unverified'")
        return Verified(GateResult.unverified(tolerance))
    key = _key("verify", plan.model_hash, plan.backend.name, plan.backend_version, plan.data_hash, plan.size,
               plan.resize, plan.opts.verify_images, json.dumps(built.digests, sort_keys=True),
               json.dumps(draft.get("preprocessing"), sort_keys=True))
    gate, reused = _cached_gate(key, tolerance), key
    if gate is not None:
        progress(f"[4/4] verify: reused (cache {key}: the same engine files on the same data)")
    else:
        reused = None
        images = plan.opts.verify_images or len(plan.dataset)
        progress(f"[4/4] verify accuracy on {images} validation images against FP32 PyTorch")
        gate = _measure(plan, staging, draft)
        _cache_write(lambda: _store_gate(key, gate))
    ref, cand = gate.reference or {}, gate.candidate or {}
    progress(f"      AP50 {cand['AP50']:.4f} vs reference {ref['AP50']:.4f} (drop {gate.ap50_drop_points:+.2f} "
             f"points, tolerance {tolerance}); AP {cand['AP']:.4f} vs {ref['AP']:.4f}: {gate.status}")
    gate.enforce(plan.opts.allow_accuracy_drop, plan.opts.data,
                 f"{plan.precision} artifact loses {gate.ap50_drop_points:.2f} AP50 points (tolerance {tolerance}) on "
                 f"{plan.opts.data}; try --calibration percentile or another precision, or pass "
                 "--allow-accuracy-drop to keep it")
    if not gate.passed:
        progress(f"      kept with --allow-accuracy-drop: the manifest says accuracy status '{gate.status}'")
    return Verified(gate, reused)


def _measure(plan: Plan, staging: Path, draft: dict[str, Any]) -> GateResult:
    from edgecsp.coco_eval import evaluate
    from edgecsp.predictor import Predictor

    reference = reference_metrics(plan.model, plan.model_hash, plan.dataset, plan.size, plan.opts.verify_images)
    runner = plan.backend.open_runner(staging / draft["engine"], draft)
    try:
        predictor = Predictor(staging, draft, runner)
        measured = evaluate(predictor.predict_batch, plan.dataset, plan.size, progress=False,
                            max_images=plan.opts.verify_images, resize=predictor.resize)
    finally:
        runner.close()
    return GateResult.measure(reference, measured, plan.profile.max_ap50_drop, plan.dataset.annotations_path,
                              measured.get("images"))


def publish(staging: Path, out: Path, manifest: dict[str, Any], signing_key: Any = None) -> tuple[Path, dict[str, Any]]:
    """Step 5: hash every file, write (and sign) the manifest, and move the artifact into place
    (edgecsp.artifact.publish, which the on-device build from a bundle takes too)."""
    from edgecsp.artifact import publish as publish_artifact

    final, manifest_ = publish_artifact(staging, out, manifest, signing_key)
    return final, manifest_.raw


# -- the manifest ------------------------------------------------------------------------------


def manifest_of(plan: Plan, exported: Exported, calibrated: Calibrated | None, built: Built) -> dict[str, Any]:
    """The draft manifest of the steps' results (accuracy, timings and files come later)."""
    c = plan.model.config
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecsp_version": __version__,
        "model": _model_section(plan, exported.graph),
        "target": plan.profile.as_dict(),
        "backend": {"name": plan.backend.name, "version": plan.backend_version, "info": built.info},
        "precision": plan.precision,
        "engine": built.engine,
        "inputs": [{"name": "images", "shape": [plan.batch, 3, plan.size, plan.size], "dtype": "float32",
                    "layout": "NCHW", "range": [0, 1]}],
        "outputs": [{"name": "predictions", "shape": [plan.batch, _output_rows(plan), 5 + c.num_classes],
                     "dtype": "float32", "contract": "x1,y1,x2,y2 (input pixels), objectness, class probabilities"}],
        "preprocessing": plan.description.get("preprocessing"),
        "postprocessing": {"score": "objectness x class probability", "nms": "class-wise, numpy (edgecsp.postprocess)"},
        "calibration": None if calibrated is None else {
            "recipe": asdict(calibrated.recipe), "recipe_hash": calibrated.recipe.digest(),
            "data_hash": calibrated.data_hash, "images": len(calibrated.names)},
        "export": exported.facts,
    }


def _model_section(plan: Plan, graph: dict[str, int]) -> dict[str, Any]:
    from edgecsp.models.checkpoint import config_as_json

    c, size = plan.model.config, plan.size
    files = plan.opts.model.as_dict() if hasattr(plan.opts.model, "as_dict") else {}
    return {"name": plan.description.get("name"), "source": str(plan.opts.model or "demo"), "hash": plan.model_hash,
            **{key: value for key, value in files.items() if key in ("weights", "names")},
            "class_names": plan.description["class_names"], "num_classes": c.num_classes,
            "input_size": [size, size], "anchors": [list(a) for a in c.anchors], "strides": list(c.strides),
            "config": config_as_json(plan.model), "graph": dict(graph)}


def _output_rows(plan: Plan) -> int:
    from edgecsp.models.checkpoint import output_rows

    return output_rows(plan.model, plan.size)


def _reuse_record(exported: Exported, calibrated: Calibrated | None, built: Built, verified: Verified) -> dict[str, str]:
    """The steps this compile took from the cache, with their keys (empty: every step ran)."""
    steps = {"export": exported.reused, "calibration": calibrated.reused if calibrated else None,
             "build": built.reused, "verify": verified.reused}
    return {step: key for step, key in steps.items() if key}


# -- shared by the steps and by benchmark --accuracy -------------------------------------------


def model_hash_of(model) -> str:
    from edgecsp.models.checkpoint import config_as_json

    h = hashlib.sha256(json.dumps(config_as_json(model), sort_keys=True, default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def reference_metrics(model, model_hash: str, dataset, size: int, max_images: int | None) -> dict:
    """FP32 PyTorch AP on the validation set, cached by model + data + size."""
    from edgecsp.artifact import sha256_file
    from edgecsp.coco_eval import evaluate, torch_predict_fn
    from edgecsp.paths import cache_dir

    key = f"{model_hash}-{sha256_file(dataset.annotations_path)[:16]}-{size}-{max_images or 'all'}-v2"
    path = cache_dir() / "reference" / f"{key}.json"
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and {"AP", "AP50", "AP75"} <= cached.keys():
            return cached
    except (OSError, ValueError):  # absent, or damaged by an older crash: measure again
        pass
    from edgecsp.models.checkpoint import resize_of

    metrics = evaluate(torch_predict_fn(model), dataset, size, progress=False, max_images=max_images,
                       resize=resize_of(model))
    _cache_write(lambda: atomic_write(path, json.dumps(metrics)))
    return metrics


def _check_batch(batch: object, size: int) -> None:
    """The options' checks again for library callers: bounded before export allocates anything."""
    from edgecsp.options import MAX_BATCH, check_batch_pixels

    if batch != "dynamic" and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH):
        raise EdgeCSPError(f"batch must be 1 to {MAX_BATCH} or 'dynamic', got {str(batch)[:40]!r}")
    check_batch_pixels(batch, size)


# -- the step cache ----------------------------------------------------------------------------


def _key(*parts: object) -> str:
    return hashlib.sha256("|".join([*map(str, parts), __version__]).encode()).hexdigest()[:16]


def _torch_versions() -> str:
    """The exporter's libraries: a new torch or onnx may export another graph (read from their
    metadata: importing onnx costs seconds a warm compile does not need)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "onnx", "onnxslim"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    return ", ".join(found)


def _engine_key(plan: Plan, calibrated: Calibrated | None) -> str:
    extra = ["nms"] if plan.opts.nms else []
    if plan.backend.name == "tensorrt":  # the bundle carries a verification subset of the validation set
        extra.append(f"verify:{plan.data_hash}:{plan.opts.verify_images}")
    recipe = calibrated.recipe if calibrated else None
    parts = [plan.model_hash, plan.backend.name, plan.backend_version, plan.precision, str(plan.size), str(plan.batch),
             json.dumps(plan.profile.build, sort_keys=True), recipe.digest() if recipe else "-",
             calibrated.data_hash if calibrated else "-", __version__]
    if extra:  # build options outside the profile (e.g. --nms)
        parts.append("|".join(extra))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _digests(folder: Path, files: list[str]) -> dict[str, str]:
    from edgecsp.artifact import sha256_file

    return {name: sha256_file(folder / name) for name in files}


def _cache_get(kind: str, key: str) -> tuple[Path, dict[str, Any]] | None:
    """A complete cache entry whose files still match their recorded sha256, else None."""
    from edgecsp.paths import cache_dir

    path = cache_dir() / kind / key
    try:
        meta = json.loads((path / "result.json").read_text())
        if _digests(path, meta["files"]) == meta["sha256"]:
            return path, meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if path.exists():  # damaged (or written by an older edgecsp): drop it and do the step again
        shutil.rmtree(path, ignore_errors=True)
    return None


def _cache_put(kind: str, key: str, folder: Path, files: list[str], meta: dict[str, Any]) -> None:
    """Keep a step's files for the next compile with the same inputs.

    The entry is assembled in a pid-named temporary and renamed into place complete, with each
    file's sha256, so a killed compile leaves no entry that a later one would trust.
    """
    from edgecsp.paths import cache_dir

    parent = cache_dir() / kind
    remove_stale(parent, ".engine-")
    tmp = private_tmpdir(parent, ".engine-")
    try:
        for name in files:
            shutil.copy2(folder / name, tmp / name)
        (tmp / "result.json").write_text(json.dumps({**meta, "files": files, "sha256": _digests(tmp, files)},
                                                    default=str))
        failpoint(f"cache.{kind.rstrip('s')}_copied")  # cache.engine_copied, cache.export_copied
        publish_dir_once(tmp, parent / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cached_gate(key: str, tolerance: float) -> GateResult | None:
    """A measured gate of the same engine on the same data, judged with today's tolerance."""
    from edgecsp.paths import cache_dir

    try:
        gate = GateResult.from_manifest(json.loads((cache_dir() / "verify" / f"{key}.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return gate.with_tolerance(tolerance) if gate.reference and gate.candidate else None


def _store_gate(key: str, gate: GateResult) -> None:
    from edgecsp.paths import cache_dir

    atomic_write(cache_dir() / "verify" / f"{key}.json", json.dumps(gate.to_manifest()))


def _cache_write(write: Callable[[], object]) -> None:
    """Caches only save time: a cache that cannot be written (disk full, read-only) is skipped."""
    try:
        write()
    except OSError as err:
        print(f"note: cache not written ({err.strerror}: {err.filename}); the next compile redoes this step",
              file=sys.stderr)
