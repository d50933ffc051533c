"""Checkpoints: one safetensors file whose metadata carries the model's JSON description.

Weights never go through pickle, so loading a checkpoint cannot execute code. The description
says everything needed to rebuild and use the model: architecture (the full detector config),
classes, input size, anchors, preprocessing, training metadata and the edgecsp version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from edgecsp import __version__
from edgecsp.errors import EdgeCSPError, shown
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
    try:
        what = None if path.is_file() else "is a directory" if path.is_dir() else "does not exist"
    except OSError as err:  # e.g. a name too long for the file system
        what = f"cannot be opened ({err.strerror})"
    if what:
        raise EdgeCSPError(f"checkpoint {shown(path)} {what}; pass a .safetensors checkpoint, a zoo name or 'demo'")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for corrupt files
        reason = " ".join(str(err).split())[:200] or type(err).__name__  # its messages may span lines
        raise EdgeCSPError(f"checkpoint {shown(path)} is not a readable safetensors file ({reason}); "
                           "re-export or re-download it") from None
    if "edgecsp" not in meta:
        raise EdgeCSPError(f"checkpoint {shown(path)} has no edgecsp description in its metadata; save it with edgecsp.train")
    try:
        description = json.loads(meta["edgecsp"])
    except json.JSONDecodeError as err:
        raise EdgeCSPError(f"checkpoint {shown(path)} has a corrupt description ({err.msg})") from None
    except (RecursionError, ValueError):  # deep nesting, or an integer of over 4300 digits
        raise EdgeCSPError(f"checkpoint {shown(path)} has a corrupt description (nested too deeply or "
                           "a number too long)") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise EdgeCSPError(f"checkpoint {shown(path)} has format {found!r:.60}, this edgecsp reads {FORMAT}")
    return tensors, description


def load_checkpoint(path: str | Path) -> tuple[Detector, dict[str, Any]]:
    tensors, description = read_checkpoint(path)
    architecture = description.get("architecture")
    try:
        if not isinstance(architecture, dict) or "detector_config" not in architecture:
            raise EdgeCSPError("has no architecture.detector_config")
        config = DetectorConfig(**config_from_json(architecture["detector_config"]))
        model = build_detector(config)  # checks every field and the size before allocating
    except EdgeCSPError as err:  # add which file: the config checks do not know it
        raise EdgeCSPError(f"checkpoint {shown(path)}: {err}; re-export it with edgecsp.train") from None
    names = description.get("class_names")
    if not isinstance(names, list) or len(names) != config.num_classes or not all(isinstance(n, str) for n in names):
        raise EdgeCSPError(f"checkpoint {shown(path)} needs class_names, a list of {config.num_classes} names; "
                           "re-export it with edgecsp.train")
    state = {k: v for k, v in tensors.items() if not k.startswith("train.")}
    expected = model.state_dict()
    for key, tensor in state.items():
        # load_state_dict would silently cast e.g. int8 or bool data into float weights
        if key in expected and tensor.dtype.is_floating_point != expected[key].dtype.is_floating_point:
            raise EdgeCSPError(f"checkpoint {shown(path)} stores {key!r} as {tensor.dtype}, expected {expected[key].dtype}; "
                               "the file is damaged")
        if tensor.dtype.is_floating_point and not bool(torch.isfinite(tensor).all()):
            raise EdgeCSPError(f"checkpoint {shown(path)} has NaN or infinite values in {key!r}; "
                               "the training diverged or the file is damaged")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise EdgeCSPError(f"checkpoint {shown(path)} does not match its architecture: {first[:300]}") from None
    model.eval()
    return model, description


def config_from_json(config: dict) -> dict:
    """DetectorConfig keyword arguments from its JSON form; check_config checks the values."""
    if not isinstance(config, dict):
        raise EdgeCSPError(f"detector config must be a JSON object, not {type(config).__name__}")
    fields = {f.name for f in dataclasses.fields(DetectorConfig)}
    unknown = sorted(set(config) - fields)
    if unknown:
        raise EdgeCSPError(f"detector config has unknown field(s) {', '.join(map(repr, unknown))[:100]}")
    missing = [f for f in ("backbone", "neck") if f not in config]
    if missing:
        raise EdgeCSPError(f"detector config misses {', '.join(missing)}")
    out = dict(config)
    if isinstance(out.get("anchors"), list):  # JSON gives lists; DetectorConfig holds tuples
        out["anchors"] = tuple(tuple(a) if isinstance(a, list) else a for a in out["anchors"])
    for key in ("strides", "scale_xy"):  # scale_xy: one value, or a list of per-level values
        if isinstance(out.get(key), list):
            out[key] = tuple(out[key])
    return out


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
