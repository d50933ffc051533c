"""Checkpoints: one safetensors file whose metadata carries the model's JSON description.

Weights never go through pickle, so loading a checkpoint cannot execute code. The description
says everything needed to rebuild and use the model: architecture (the full detector config),
classes, input size, anchors, preprocessing, training metadata and the edgecsp version.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from edgecsp import __version__
from edgecsp.errors import EdgeCSPError, shown
from edgecsp.models.detector import Detector, DetectorConfig, build_detector

FORMAT = "edgecsp-checkpoint/1"
DEMO_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "demo" / "csp-tiny-efm-shapes.safetensors"
PREPROCESSING = {"resize": "letterbox", "pad_value": 114, "color": "RGB", "scale": 1 / 255, "layout": "NCHW"}


def is_darknet(model) -> bool:
    """Whether ``model`` is a detector described by a Darknet cfg (edgecsp.models.darknet_detector)."""
    return hasattr(model.config, "cfg_text")


def architecture_of(model) -> dict[str, Any]:
    """The checkpoint's ``architecture``: a zoo detector config, or the Darknet cfg it was built from."""
    if is_darknet(model):
        return {"darknet_config": model.config.as_json()}
    return {"detector_config": dataclasses.asdict(model.config)}


def config_as_json(model) -> dict[str, Any]:
    return next(iter(architecture_of(model).values()))


def output_rows(model, size: int | tuple[int, int]) -> int:
    """K of the decoded (N, K, 5 + C) output at an input size: anchors x cells, summed over levels."""
    h, w = (size, size) if isinstance(size, int) else size
    c = model.config
    per_level = ([len(lv.anchors) for lv in c.levels] if is_darknet(model)
                 else [len(c.anchors) // len(c.strides)] * len(c.strides))
    return sum(a * (h // s) * (w // s) for a, s in zip(per_level, c.strides))


def input_size_of(model) -> int:
    return int(model.config.input_size)


def resize_of(model) -> str:
    """How images become this model's input: Darknet stretches unless [net] letter_box=1."""
    return "stretch" if is_darknet(model) and not model.config.letter_box else "letterbox"


def preprocessing_of(model) -> dict[str, Any]:
    return {**PREPROCESSING, "resize": resize_of(model)}


def describe(model: Detector, class_names: list[str], training: dict | None = None, name: str = "") -> dict[str, Any]:
    return {
        "format": FORMAT,
        "name": name or model.config.backbone,
        "architecture": architecture_of(model),
        "num_classes": model.config.num_classes,
        "class_names": list(class_names),
        "input_size": [model.config.input_size, model.config.input_size],
        "anchors": [list(a) for a in model.config.anchors],
        "strides": list(model.config.strides),
        "preprocessing": preprocessing_of(model),
        "training": training or {},
        "edgecsp_version": __version__,
    }


def save_checkpoint(path: str | Path, model: Detector, description: dict[str, Any],
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write atomically: a crash mid-write never leaves a half checkpoint at ``path``."""
    from safetensors.torch import save

    from edgecsp.fsutil import atomic_write

    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in (extra_tensors or {}).items()})
    return atomic_write(Path(path), save(tensors, metadata={"edgecsp": json.dumps(description)}))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    _check_file(path)
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


def _check_file(path: Path) -> None:
    try:
        what = None if path.is_file() else "is a directory" if path.is_dir() else "does not exist"
    except OSError as err:  # e.g. a name too long for the file system
        what = f"cannot be opened ({err.strerror})"
    if what:
        raise EdgeCSPError(f"checkpoint {shown(path)} {what}; pass a .safetensors checkpoint, a zoo name or 'demo'")


def load_checkpoint(path: str | Path) -> tuple[Detector, dict[str, Any]]:
    tensors, description = read_checkpoint(path)
    architecture = description.get("architecture")
    try:
        model = build_from_architecture(architecture)  # checks every field and the size before allocating
        config = model.config
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


def build_from_architecture(architecture: Any):
    """A detector from a checkpoint's (or manifest's) architecture description, weights uninitialised."""
    if isinstance(architecture, dict) and "darknet_config" in architecture:
        from edgecsp.models.darknet_detector import DarknetDetector, darknet_config_from_json

        return DarknetDetector(darknet_config_from_json(architecture["darknet_config"]))
    if not isinstance(architecture, dict) or "detector_config" not in architecture:
        raise EdgeCSPError("has no architecture.detector_config")
    return build_detector(DetectorConfig(**config_from_json(architecture["detector_config"])))


def model_from_config_json(config: Any):
    """A detector (weights uninitialised) from a manifest's ``model.config``: a zoo config or a Darknet cfg."""
    if isinstance(config, dict) and "cfg_text" in config:
        return build_from_architecture({"darknet_config": config})
    return build_from_architecture({"detector_config": config})


def source_of(manifest: dict) -> ModelSource:
    """The FP32 model an artifact was built from, as its manifest names it (model, weights, names)."""
    model = manifest.get("model") or {}
    return ModelSource(str(model.get("source") or "demo"), model.get("weights"), model.get("names"))


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


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """What ``--model [--weights] [--names]`` name: a checkpoint, zoo name or 'demo', or a Darknet
    cfg with its .weights and .names. ``str()`` is the model path or name."""

    model: str = "demo"
    weights: str | None = None
    names: str | None = None

    def __post_init__(self) -> None:  # paths from argparse types: kept as text (they go into manifests)
        for key in ("weights", "names"):
            if getattr(self, key) is not None:
                object.__setattr__(self, key, str(getattr(self, key)))

    def __str__(self) -> str:
        return self.model

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items() if v is not None}


def resolve_model(spec: str | ModelSource | None, num_classes: int | None = None, weights: str | Path | None = None,
                  names: str | Path | None = None) -> tuple[Detector, dict[str, Any]]:
    """'demo' (or None), a checkpoint path, a zoo detector name (random weights), or a Darknet
    ``.cfg`` with optional ``weights`` (.weights) and ``names`` (.names; else class0..N-1)."""
    if isinstance(spec, ModelSource):
        spec, weights, names = spec.model, weights or spec.weights, names or spec.names
    kind = _kind(spec, weights, names)
    if kind == "darknet":
        from edgecsp.models.darknet_detector import load_darknet_detector

        # An untrained cfg takes the data's class count; trained weights keep theirs (the caller
        # compares it with the data: changing it is fine-tuning, python -m edgecsp.train).
        return load_darknet_detector(Path(str(spec)), weights, names, num_classes if weights is None else None)
    if kind == "demo":
        if not DEMO_CHECKPOINT.is_file():
            raise EdgeCSPError(f"the built-in demo detector is missing ({DEMO_CHECKPOINT}); reinstall edgecsp")
        return load_checkpoint(DEMO_CHECKPOINT)
    if kind == "zoo":
        model = build_detector(str(spec), num_classes=num_classes).eval()
        return model, describe(model, [f"class{i}" for i in range(model.config.num_classes)], name=str(spec))
    return load_checkpoint(str(spec))


def check_model_source(source: ModelSource) -> None:
    """Refuse, before any work, a model option that names no model: --weights or --names without a
    .cfg, a Darknet file in --model's place, a checkpoint that is not there (resolve_model says the
    same when it loads)."""
    if _kind(source.model, source.weights, source.names) == "checkpoint":
        _check_file(Path(source.model))


def _kind(spec: str | Path | None, weights: str | Path | None, names: str | Path | None) -> str:
    """What a model option names: 'darknet' (a .cfg), 'demo', 'zoo' or 'checkpoint'."""
    from edgecsp.models.detector import DETECTORS

    if spec is not None and _is_darknet_spec(spec):
        return "darknet"
    if weights is not None:
        raise EdgeCSPError(f"--weights {shown(weights)} is a Darknet .weights file; it goes with a Darknet .cfg "
                           f"as --model, not with {shown(spec or 'demo')}")
    if names is not None:
        raise EdgeCSPError(f"--names {shown(names)} names the classes of a Darknet .cfg model; "
                           f"{shown(spec or 'demo')} carries its own class names")
    if spec in (None, "demo"):
        return "demo"
    if spec in DETECTORS:
        return "zoo"
    _refuse_wrong_type(Path(spec))
    return "checkpoint"


def _is_darknet_spec(spec: str | Path) -> bool:
    from edgecsp.models.darknet_detector import looks_like_cfg

    path = Path(spec)
    try:
        return path.is_file() and looks_like_cfg(path)
    except OSError:
        return False


def _refuse_wrong_type(path: Path) -> None:
    """A Darknet .weights or .names given where a checkpoint is expected: say which file goes where."""
    suffix = path.suffix.lower()
    if suffix == ".weights":
        raise EdgeCSPError(f"{shown(path)} is a Darknet .weights file; pass its .cfg as --model and this file "
                           "as --weights")
    if suffix == ".names":
        raise EdgeCSPError(f"{shown(path)} is a Darknet .names file; pass it as --names with a .cfg --model")
    if suffix in (".onnx", ".pt", ".pth", ".pkl"):
        raise EdgeCSPError(f"{shown(path)} is not a model edgecsp reads: --model takes an edgecsp .safetensors "
                           "checkpoint, a Darknet .cfg (with --weights), a zoo name or 'demo'")
