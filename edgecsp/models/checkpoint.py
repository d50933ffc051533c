"""Checkpoints: one safetensors file whose metadata carries the model's JSON description.

Weights never go through pickle, so loading a checkpoint cannot execute code. The description
says everything needed to rebuild and use the model: architecture (the full detector config),
classes, input size, anchors, preprocessing, training metadata and the edgecsp version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from edgecsp import __version__
from edgecsp.errors import EdgeCSPError
from edgecsp.models.detector import Detector, DetectorConfig, build_detector

FORMAT = "edgecsp-checkpoint/1"
DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "demo" / "csp-tiny-efm-shapes.safetensors"
PREPROCESSING = {"resize": "letterbox", "pad_value": 114, "color": "RGB", "scale": 1 / 255, "layout": "NCHW"}


def describe(model: Detector, class_names: list[str], training: dict | None = None, name: str = "") -> dict[str, Any]:
    config = dataclasses.asdict(model.config)
    return {
        "format": FORMAT,
        "name": name or model.config.backbone,
        "architecture": {"detector_config": config},
        "num_classes": model.config.num_classes,
        "class_names": list(class_names),
        "input_size": [model.config.input_size, model.config.input_size],
        "anchors": [list(a) for a in model.config.anchors],
        "strides": list(model.config.strides),
        "preprocessing": PREPROCESSING,
        "training": training or {},
        "edgecsp_version": __version__,
    }


def save_checkpoint(path: str | Path, model: Detector, description: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write atomically: a crash mid-write never leaves a half checkpoint at ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in (extra_tensors or {}).items()})
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"edgecsp": json.dumps(description)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise EdgeCSPError(f"checkpoint {path} does not exist; pass a .safetensors checkpoint, a zoo name or 'demo'")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises several types for corrupt files
        raise EdgeCSPError(f"checkpoint {path} is not a readable safetensors file ({err}); re-export or re-download it") from None
    if "edgecsp" not in meta:
        raise EdgeCSPError(f"checkpoint {path} has no edgecsp description in its metadata; save it with edgecsp.train")
    try:
        description = json.loads(meta["edgecsp"])
    except json.JSONDecodeError as err:
        raise EdgeCSPError(f"checkpoint {path} has a corrupt description ({err.msg})") from None
    if description.get("format") != FORMAT:
        raise EdgeCSPError(f"checkpoint {path} has format {description.get('format')!r}, this edgecsp reads {FORMAT}")
    return tensors, description


def load_checkpoint(path: str | Path) -> tuple[Detector, dict[str, Any]]:
    tensors, description = read_checkpoint(path)
    try:
        config = DetectorConfig(**config_from_json(description["architecture"]["detector_config"]))
    except (KeyError, TypeError) as err:
        raise EdgeCSPError(f"checkpoint {path} describes an architecture this edgecsp cannot build ({err})") from None
    model = build_detector(config)
    state = {k: v for k, v in tensors.items() if not k.startswith("train.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise EdgeCSPError(f"checkpoint {path} does not match its architecture: {first}") from None
    model.eval()
    return model, description


def config_from_json(config: dict) -> dict:
    out = dict(config)
    out["anchors"] = tuple(tuple(a) for a in out["anchors"])
    out["strides"] = tuple(out["strides"])
    if isinstance(out.get("scale_xy"), list):  # per-level values come back from JSON as a list
        out["scale_xy"] = tuple(out["scale_xy"])
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model(spec: str | None, num_classes: int | None = None) -> tuple[Detector, dict[str, Any]]:
    """'demo' (or None), a checkpoint path, or a zoo detector name (random weights)."""
    from edgecsp.models.detector import DETECTORS

    if spec in (None, "demo"):
        if not DEMO_CHECKPOINT.is_file():
            raise EdgeCSPError(f"the built-in demo detector is missing ({DEMO_CHECKPOINT}); reinstall edgecsp")
        return load_checkpoint(DEMO_CHECKPOINT)
    if spec in DETECTORS:
        model = build_detector(spec, num_classes=num_classes).eval()
        names = [f"class{i}" for i in range(model.config.num_classes)]
        return model, describe(model, names, name=spec)
    return load_checkpoint(spec)
