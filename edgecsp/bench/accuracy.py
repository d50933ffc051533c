"""Accuracy regression: an artifact's AP/AP50 on the validation set against the FP32 PyTorch
reference, with the tolerance from its target profile. Same evaluation code as the compile gate
(edgecsp.coco_eval + the cached reference of edgecsp.pipeline), so the numbers agree with it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError
from edgecsp.gate import GateResult


def tolerance_points(manifest: dict) -> float:
    """The target profile's max AP50 drop (points): the current profile file, else the manifest's copy."""
    from edgecsp.targets import load_target

    target = manifest.get("target") or {}
    try:
        return float(load_target(target.get("name", "")).max_ap50_drop)
    except EdgeCSPError:
        return float(target.get("max_ap50_drop", 1.0))


def check_accuracy(predict_batch: Any, manifest: dict, data: Path | None = None, max_images: int | None = None,
                   model_spec: str | None = None) -> GateResult:
    """The gate of ``predict_batch`` against the FP32 reference: the compile's GateResult
    (``status`` as in edgecsp.gate: a reference that detects nothing fails too)."""
    from edgecsp.coco_eval import evaluate
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.gate import check_image_count
    from edgecsp.models.checkpoint import resolve_model
    from edgecsp.pipeline import model_hash_of, reference_metrics

    check_image_count(max_images, "--eval-images")
    from edgecsp.models.checkpoint import source_of

    spec = model_spec or source_of(manifest)
    try:
        model, description = resolve_model(spec)
    except EdgeCSPError as err:
        raise EdgeCSPError(f"the accuracy check needs the artifact's FP32 model ({err}); pass it with --model") from None
    model_hash = model_hash_of(model)
    want = (manifest.get("model") or {}).get("hash")
    if want and model_hash != want:
        raise EdgeCSPError(f"model {spec} (hash {model_hash}) is not the one the artifact was built from "
                           f"(hash {want}); pass the artifact's checkpoint with --model")
    from edgecsp.data.shapes import validation_data

    data = validation_data(data)
    dataset = resolve_dataset(data)
    size = int(manifest["model"]["input_size"][0])
    if dataset.num_classes != model.config.num_classes:
        raise EdgeCSPError(f"validation set {data} has {dataset.num_classes} classes, the model has "
                           f"{model.config.num_classes}; pass the model's own validation data with --data")
    from edgecsp.coco_eval import check_classes

    check_classes(list((manifest.get("model") or {}).get("class_names") or description["class_names"]), dataset,
                  f"artifact {manifest.get('model', {}).get('name', spec)}")
    reference = reference_metrics(model, model_hash, dataset, size, max_images)
    from edgecsp.data.preprocess import resize_mode

    measured = evaluate(predict_batch, dataset, size, progress=False, max_images=max_images,
                        resize=resize_mode(manifest.get("preprocessing")))
    return GateResult.measure(reference, measured, tolerance_points(manifest), dataset.annotations_path,
                              measured.get("images"))
