"""The compile pipeline: export -> calibrate -> build -> verify -> artifact.

Every step reports progress; any failure raises EdgeCSPError and leaves no artifact behind
(the artifact is assembled in a staging directory and renamed into place only when complete).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable  # typing's: collections.abc.Callable[...] is not subscriptable at run time on 3.8

from edgecsp import __version__
from edgecsp.errors import EdgeCSPError
from edgecsp.faults import failpoint
from edgecsp.fsutil import atomic_write, os_problem, private_tmpdir, publish_dir_once, remove_stale

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


def model_hash_of(model) -> str:
    import hashlib

    from edgecsp.models.checkpoint import config_as_json

    h = hashlib.sha256(json.dumps(config_as_json(model), sort_keys=True, default=str).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def reference_metrics(model, model_hash: str, dataset, size: int, max_images: int | None) -> dict:
    """FP32 PyTorch AP on the validation set, cached by model + data + size."""
    from edgecsp.artifact import sha256_file
    from edgecsp.evaluation import evaluate, torch_predict_fn
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


def _cache_write(write: Callable[[], object]) -> None:
    """Caches only save time: a cache that cannot be written (disk full, read-only) is skipped."""
    try:
        write()
    except OSError as err:
        print(f"note: cache not written ({err.strerror}: {err.filename}); the next compile redoes this step",
              file=sys.stderr)


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
    from edgecsp.backends import BuildRequest, get_backend
    from edgecsp.gate import check_image_count
    from edgecsp.targets import load_target

    t_start = time.time()
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

    from edgecsp.data.coco import resolve_dataset
    from edgecsp.models.checkpoint import is_darknet, resize_of, resolve_model
    from edgecsp.paths import validation_data

    opts.data = validation_data(opts.data, progress)
    dataset = resolve_dataset(opts.data)
    # An untrained Darknet cfg takes the data's class count; any trained model must match it.
    model, description = resolve_model(opts.model, num_classes=dataset.num_classes)
    if is_darknet(model) and not getattr(opts.model, "names", None):
        description["class_names"] = list(dataset.class_names)  # no .names: the data set's names
    resize = resize_of(model)  # letterbox, or stretch for Darknet cfgs trained that way
    size = profile.input_size or model.config.input_size
    batch = opts.batch if opts.batch is not None else profile.batch
    _check_batch(batch, size)
    model_hash = model_hash_of(model)
    model_name = description.get("name", opts.model)
    out = Path(opts.out or Path("artifacts") / f"{Path(str(opts.model or 'demo')).stem}-{profile.name}-{precision}")
    if dataset.num_classes != model.config.num_classes:
        raise EdgeCSPError(f"validation set {opts.data} has {dataset.num_classes} classes, "
                           f"the model has {model.config.num_classes}; pass the model's own validation data with --data")
    from edgecsp.evaluation import check_classes, check_evaluable

    check_classes(list(description["class_names"]), dataset, f"model {model_name}")
    if opts.verify:
        check_evaluable(dataset, opts.verify_images)  # before any build: a gate on no boxes would pass vacuously

    timings: dict[str, float] = {}
    staging: Path | None = None
    work: Path | None = None
    try:
        # The staging directory comes first: an unwritable or full output location fails before any work.
        staging = _staging(out)
        remove_stale(Path(tempfile.gettempdir()), "edgecsp-compile-")  # what killed compiles left
        work = private_tmpdir(Path(tempfile.gettempdir()), "edgecsp-compile-")

        # 1. export
        t = time.time()
        progress(f"[1/4] export {model_name} to ONNX (input {size}x{size}, batch {batch})")
        from edgecsp.onnx_export import export_onnx

        parity = [dataset[i][0] for i in range(min(4, len(dataset)))]  # real images of the user's data
        report = export_onnx(model, work / "model.onnx", batch=batch, input_size=size, nms=False,
                             parity_images=parity, description=description)
        timings["export_s"] = round(time.time() - t, 2)
        progress(f"      parity vs PyTorch: max abs diff {report.max_abs_diff:.2e} ({timings['export_s']} s)")

        # 2. calibrate (int8 only)
        recipe = calib = None
        if precision == "int8":
            from edgecsp.calibration import calibration_set, load_recipe

            t = time.time()
            recipe = load_recipe(opts.calibration)
            progress(f"[2/4] calibration data: recipe {recipe.name} ({recipe.method}, {recipe.num_images} images)")
            calib = calibration_set(recipe, size, resize)
            timings["calibration_data_s"] = round(time.time() - t, 2)
        else:
            progress(f"[2/4] calibration: not needed for {precision}")

        # 3. build (or reuse the cached quantized engine)
        from edgecsp.evaluation import evaluate

        assert staging is not None
        t = time.time()
        extra = ["nms"] if opts.nms else []
        if backend.name == "tensorrt":  # the bundle carries a verification subset of the validation set
            from edgecsp.artifact import sha256_file

            extra.append(f"verify:{sha256_file(Path(dataset.annotations_path))[:16]}:{opts.verify_images}")
        cache_key = _cache_key(model_hash, profile, precision, backend.name, backend_version, recipe, calib, size, batch,
                               extra="|".join(extra))
        cached = _cached_engine(cache_key)
        if cached is not None:
            progress(f"[3/4] {backend.name} {precision}: reusing the cached build {cache_key} (same model, data, recipe)")
            result_meta = json.loads((cached / "result.json").read_text())
            result_meta.pop("sha256", None)
            for name in result_meta["files"]:
                shutil.copy2(cached / name, staging / name)
        else:
            progress(f"[3/4] build {backend.name} {precision} engine")

            def validate(predict) -> float:
                return evaluate(predict, dataset, size, progress=False, max_images=opts.verify_images,
                                resize=resize)["AP50"]

            request = BuildRequest(onnx_path=work / "model.onnx", precision=precision, profile=profile,
                                   out_dir=staging, calibration=calib, validate=validate,
                                   max_ap50_drop=profile.max_ap50_drop / 100,
                                   options={**profile.build, "recipe": recipe, **({"nms": True} if opts.nms else {})},
                                   dataset=dataset, verify_images=opts.verify_images)
            result = backend.build(request)
            failpoint("build.engine_written")
            result_meta = {"engine": result.engine, "files": result.files, "info": result.info}
            _cache_write(lambda: _store_engine(cache_key, staging, result_meta))
        timings["build_s"] = round(time.time() - t, 2)

        # 4. verify
        draft = _manifest(model, description, model_hash, opts, profile, precision, backend.name, backend_version,
                          result_meta, report, recipe, calib, size, batch)
        if opts.verify:
            t = time.time()
            draft["accuracy"] = _verify(opts, model, model_hash, dataset, size, profile, backend, staging, draft,
                                        progress)
            timings["verify_s"] = round(time.time() - t, 2)
        else:
            progress("[4/4] verify: skipped (--no-verify); the manifest says accuracy status 'unverified'")
            draft["accuracy"] = {"status": "unverified", "dataset": None, "images": None, "passed": False,
                                 "tolerance_points": profile.max_ap50_drop}
        timings["total_s"] = round(time.time() - t_start, 2)
        draft["timings"] = timings
        from edgecsp.artifact import finalize

        final = finalize(staging, out, draft, signing_key=signing_key)
        staging = None
        progress(f"artifact: {final} (+ {final.name}.tar.gz), {timings['total_s']} s in all")
        return final, json.loads((final / "manifest.json").read_text())
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def _verify(opts, model, model_hash, dataset, size, profile, backend, staging, draft, progress) -> dict[str, Any]:
    """The gate: the engine's AP50 against the FP32 PyTorch reference on the validation images."""
    from edgecsp.evaluation import evaluate
    from edgecsp.gate import vacuous_message, verdict
    from edgecsp.predictor import Predictor

    progress(f"[4/4] verify accuracy on {len(dataset) if not opts.verify_images else opts.verify_images} "
             f"validation images against FP32 PyTorch")
    reference = reference_metrics(model, model_hash, dataset, size, opts.verify_images)
    runner = backend.open_runner(staging / draft["engine"], draft)
    try:
        predictor = Predictor(staging, draft, runner)
        measured = evaluate(predictor.predict_batch, dataset, size, progress=False, max_images=opts.verify_images,
                            resize=predictor.resize)
    finally:
        runner.close()
    drop = round((reference["AP50"] - measured["AP50"]) * 100, 3)
    status = verdict(reference["AP50"], drop, profile.max_ap50_drop)
    progress(f"      AP50 {measured['AP50']:.4f} vs reference {reference['AP50']:.4f} "
             f"(drop {drop:+.2f} points, tolerance {profile.max_ap50_drop}); AP {measured['AP']:.4f} vs "
             f"{reference['AP']:.4f}: {status}")
    if status != "passed" and not opts.allow_accuracy_drop:
        if status == "vacuous-reference":
            raise EdgeCSPError(vacuous_message(reference["AP50"], opts.data))
        raise EdgeCSPError(
            f"{draft['precision']} artifact loses {drop:.2f} AP50 points (tolerance {profile.max_ap50_drop}) on "
            f"{opts.data}; try --calibration percentile or another precision, or pass --allow-accuracy-drop to keep it")
    if status != "passed":
        progress(f"      kept with --allow-accuracy-drop: the manifest says accuracy status '{status}'")
    return {
        "status": status, "dataset": str(dataset.annotations_path), "images": measured.get("images"),
        "reference": {k: reference[k] for k in ("AP", "AP50", "AP75")},
        "artifact": {k: measured[k] for k in ("AP", "AP50", "AP75")},
        "ap50_drop_points": drop, "tolerance_points": profile.max_ap50_drop, "passed": status == "passed",
    }


def _check_batch(batch: object, size: int) -> None:
    """The options' checks again for library callers: bounded before export allocates anything."""
    from edgecsp.options import MAX_BATCH, check_batch_pixels

    if batch != "dynamic" and (isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH):
        raise EdgeCSPError(f"batch must be 1 to {MAX_BATCH} or 'dynamic', got {str(batch)[:40]!r}")
    check_batch_pixels(batch, size)


def _staging(out: Path) -> Path:
    from edgecsp.artifact import staging_dir

    return staging_dir(out)


def _cache_key(model_hash, profile, precision, backend, version, recipe, calib, size, batch, extra: str = "") -> str:
    import hashlib

    parts = [model_hash, backend, version, precision, str(size), str(batch), json.dumps(profile.build, sort_keys=True),
             recipe.digest() if recipe else "-", calib.data_hash if calib else "-", __version__]
    if extra:  # build options outside the profile (e.g. --nms)
        parts.append(extra)
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _cached_engine(key: str) -> Path | None:
    """A complete cache entry whose files still match their recorded sha256, else None."""
    from edgecsp.artifact import sha256_file
    from edgecsp.paths import cache_dir

    path = cache_dir() / "engines" / key
    try:
        meta = json.loads((path / "result.json").read_text())
        digests = meta["sha256"]
        if all(sha256_file(path / name) == digests[name] for name in meta["files"]):
            return path
    except (OSError, ValueError, KeyError, TypeError):
        pass
    if path.exists():  # damaged (or written by an older edgecsp): drop it and build again
        shutil.rmtree(path, ignore_errors=True)
    return None


def _store_engine(key: str, staging: Path, meta: dict) -> None:
    """Keep the quantized engine so the next compile with the same inputs skips calibration.

    The entry is assembled in a pid-named temporary and renamed into place complete, with each
    file's sha256, so a killed compile leaves no entry that a later one would trust.
    """
    from edgecsp.artifact import sha256_file
    from edgecsp.paths import cache_dir

    if meta["info"].get("no_cache"):
        return
    parent = cache_dir() / "engines"
    remove_stale(parent, ".engine-")
    tmp = private_tmpdir(parent, ".engine-")
    try:
        for name in meta["files"]:
            shutil.copy2(staging / name, tmp / name)
        digests = {name: sha256_file(tmp / name) for name in meta["files"]}
        (tmp / "result.json").write_text(json.dumps({**meta, "sha256": digests}, default=str))
        failpoint("cache.engine_copied")
        publish_dir_once(tmp, parent / key)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _graph_counts(model, size: int) -> dict[str, int]:
    """MACs and CIO per frame, for the benchmark's traffic figures on a device without torch."""
    from edgecsp.bench.traffic import graph_counts

    return graph_counts(model, size)


def _manifest(model, description, model_hash, opts, profile, precision, backend_name, backend_version,
              result_meta, report, recipe, calib, size, batch) -> dict[str, Any]:
    from edgecsp.models.checkpoint import config_as_json, output_rows

    c = model.config
    k = output_rows(model, size)
    files = opts.model.as_dict() if hasattr(opts.model, "as_dict") else {}
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "edgecsp_version": __version__,
        "model": {"name": description.get("name"), "source": str(opts.model or "demo"), "hash": model_hash,
                  **{key: value for key, value in files.items() if key in ("weights", "names")},
                  "class_names": description["class_names"], "num_classes": c.num_classes,
                  "input_size": [size, size], "anchors": [list(a) for a in c.anchors], "strides": list(c.strides),
                  "config": config_as_json(model), "graph": _graph_counts(model, size)},
        "target": profile.as_dict(),
        "backend": {"name": backend_name, "version": backend_version, "info": result_meta["info"]},
        "precision": precision,
        "engine": result_meta["engine"],
        "inputs": [{"name": "images", "shape": [batch, 3, size, size], "dtype": "float32",
                    "layout": "NCHW", "range": [0, 1]}],
        "outputs": [{"name": "predictions", "shape": [batch, k, 5 + c.num_classes], "dtype": "float32",
                     "contract": "x1,y1,x2,y2 (input pixels), objectness, class probabilities"}],
        "preprocessing": description.get("preprocessing"),
        "postprocessing": {"score": "objectness x class probability", "nms": "class-wise, numpy (edgecsp.postprocess)"},
        "calibration": None if recipe is None else {"recipe": asdict(recipe), "recipe_hash": recipe.digest(),
                                                     "data_hash": calib.data_hash, "images": len(calib.images)},
        "export": {k: v for k, v in report.as_dict().items() if k != "path"},
    }
