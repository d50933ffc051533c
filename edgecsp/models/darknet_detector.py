"""Any Darknet ``[yolo]``-headed detector as an edgecsp detector.

The cfg's graph runs as Darknet computes it (edgecsp.darknet.DarknetModel); each ``[yolo]``
layer becomes one output level of the same YOLO head the native detectors use, so the decoded
output contract (docs/onnx-contract.md), the loss, export, calibration, every backend and the
evaluation work unchanged. The model is described by the cfg text itself (kept in checkpoints
and manifests), so it writes back to ``.cfg`` + ``.weights`` exactly.

Scaled-YOLOv4's ``new_coords=1`` levels apply the logistic in the conv before ``[yolo]``; here
that activation moves into the head (sigmoid(conv) either way), so the raw maps are logits as
the loss and the native head expect.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from edgecsp.errors import EdgeCSPError, shown
from edgecsp.models.head import YoloHead


@dataclass(frozen=True)
class YoloLevelInfo:
    """One [yolo] layer as the head needs it."""

    anchors: tuple[tuple[float, float], ...]
    stride: int
    classes: int
    scale_xy: float
    new_coords: bool
    layer: int  # index of the [yolo] layer in the cfg
    line: int


@dataclass(frozen=True)
class DarknetDetectorConfig:
    """A detector described by its Darknet cfg text.

    ``input_size`` 0 means the cfg's own [net] width/height (square inputs only).
    """

    cfg_text: str
    source: str = "model.cfg"  # the file it came from: names and messages only
    input_size: int = 0

    def __post_init__(self) -> None:
        if not self.input_size:
            object.__setattr__(self, "input_size", _net_size(self.parsed()))
        # Derived, not a field: asdict() and the model hash see only the cfg, source and size.
        object.__setattr__(self, "_levels", _read_levels(self))

    # What the rest of edgecsp reads from a detector config ------------------------------------
    @property
    def levels(self) -> tuple[YoloLevelInfo, ...]:
        """Output levels, finest first (the order of the head and the loss)."""
        return self._levels

    @property
    def num_classes(self) -> int:
        return self._levels[0].classes

    @property
    def anchors(self) -> tuple[tuple[float, float], ...]:
        return tuple(a for level in self._levels for a in level.anchors)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(level.stride for level in self._levels)

    @property
    def scale_xy(self) -> tuple[float, ...]:
        return tuple(level.scale_xy for level in self._levels)

    @property
    def new_coords(self) -> bool:
        return self._levels[0].new_coords

    @property
    def letter_box(self) -> bool:
        """Darknet stretches images to the network size unless [net] letter_box=1."""
        return bool(self.parsed().net.get_int("letter_box", 0))

    @property
    def backbone(self) -> str:  # a name for messages and default artifact names
        return Path(self.source).stem

    def parsed(self):
        from edgecsp.darknet.cfg import parse_cfg_text

        return parse_cfg_text(self.cfg_text, self.source)

    def as_json(self) -> dict:
        return {"cfg_text": self.cfg_text, "source": self.source, "input_size": self.input_size}

    def with_overrides(self, **kw) -> DarknetDetectorConfig:
        """input_size, num_classes or anchors; other fields are the cfg's and are refused."""
        kw = {k: v for k, v in kw.items() if v is not None}
        unknown = set(kw) - {"input_size", "num_classes", "anchors"}
        if unknown:
            raise EdgeCSPError(f"a Darknet cfg model cannot override {', '.join(sorted(unknown))}; edit the cfg")
        text = self.cfg_text
        if "num_classes" in kw and kw["num_classes"] != self.num_classes:
            text = rewrite_classes(text, self.source, int(kw["num_classes"]))
        if "anchors" in kw and tuple(map(tuple, kw["anchors"])) != self.anchors:
            text = rewrite_anchors(text, self.source, kw["anchors"], self)
        size = int(kw.get("input_size", self.input_size))
        return replace(self, cfg_text=text, input_size=size)


def config_from_cfg_text(text: str, source: str, input_size: int | None = None) -> DarknetDetectorConfig:
    return DarknetDetectorConfig(text, source=Path(source).name, input_size=int(input_size or 0))


def _net_size(cfg) -> int:
    if cfg.height != cfg.width:
        raise cfg.net.error(f"height={cfg.height}, width={cfg.width}: edgecsp needs a square input; "
                            "set both to the same multiple of 32")
    if cfg.height < 32 or cfg.height % 32:
        raise cfg.net.error(f"height={cfg.height}: the input size must be a multiple of 32 (e.g. 416)")
    return cfg.height


def _read_levels(config: DarknetDetectorConfig) -> tuple[YoloLevelInfo, ...]:
    """The [yolo] layers of the cfg, shape-inferred on the meta device (nothing allocated)."""
    from edgecsp.darknet.model import ConvLayer, DarknetModel, YoloLayer

    cfg = config.parsed()
    size = config.input_size
    if not isinstance(size, int) or size < 32 or size % 32 or size > 8192:
        raise EdgeCSPError(f"{shown(config.source)}: input size {size!r} must be a multiple of 32 in 32..8192")
    with torch.device("meta"):
        body = DarknetModel(cfg, input_size=size)
    yolo = [(i, m) for i, m in enumerate(body.layers) if isinstance(m, YoloLayer)]
    if not yolo:
        raise EdgeCSPError(f"{shown(config.source)} has no [yolo] layer; edgecsp detectors need a YOLO-headed cfg "
                           "(a classifier cfg works with python -m edgecsp.summary only)")
    levels = []
    for i, layer in yolo:
        section = cfg.layers[i]
        if layer.new_coords:
            before = body.layers[i - 1] if i > 0 else None
            if not isinstance(before, ConvLayer) or before.act.name != "logistic":
                raise section.error("new_coords=1 needs activation=logistic on the [convolutional] just before "
                                    "this [yolo] (as Scaled-YOLOv4 cfgs have)")
        levels.append(YoloLevelInfo(tuple((float(w), float(h)) for w, h in layer.anchors), int(layer.stride),
                                    int(layer.classes), float(layer.scale_x_y), bool(layer.new_coords), i,
                                    section.line))
    first = levels[0]
    for level in levels[1:]:
        if level.classes != first.classes:
            raise EdgeCSPError(f"{shown(config.source)}:{level.line}: classes={level.classes} differs from the first "
                               f"[yolo] layer's {first.classes}; every [yolo] layer needs the same classes")
        if level.new_coords != first.new_coords:
            raise EdgeCSPError(f"{shown(config.source)}:{level.line}: new_coords differs between [yolo] layers; "
                               "edgecsp needs one decoding for the whole model")
    if len({lv.stride for lv in levels}) != len(levels):
        raise EdgeCSPError(f"{shown(config.source)}: two [yolo] layers work at the same stride; "
                           "edgecsp needs one output level per stride")
    return tuple(sorted(levels, key=lambda lv: lv.stride))


class DarknetDetector(nn.Module):
    """A Darknet cfg's graph plus the YOLO head: ``forward`` gives raw maps, ``predict`` decoded rows."""

    def __init__(self, config: DarknetDetectorConfig):
        super().__init__()
        from edgecsp.darknet.model import DarknetActivation, DarknetModel

        self.config = config
        self.body = DarknetModel(config.parsed(), input_size=config.input_size)
        cfg_order = [j for j, m in enumerate(self.body.layers) if type(m).__name__ == "YoloLayer"]
        # body.forward returns [yolo] inputs in cfg order; this picks them finest first.
        self._order = [cfg_order.index(lv.layer) for lv in config.levels]
        if config.new_coords:  # the logistic moves from the conv into the head (see the module doc)
            for lv in config.levels:
                self.body.layers[lv.layer - 1].act = DarknetActivation("linear")
        self.head = YoloHead([list(lv.anchors) for lv in config.levels], list(config.strides), config.num_classes,
                             config.scale_xy, config.new_coords)
        self._init_prediction_biases()

    def prediction_convs(self) -> list[nn.Conv2d]:
        """The convs feeding the [yolo] layers, finest level first (they start fresh for new classes)."""
        return [self.body.layers[lv.layer - 1].conv for lv in self.config.levels]

    @torch.no_grad()
    def _init_prediction_biases(self) -> None:
        # As the native detectors: few objects per image, uniform classes, so training from
        # scratch does not spend its first epochs lowering every cell's objectness.
        c = self.config
        for conv, lv in zip(self.prediction_convs(), c.levels):
            if conv.bias is None or conv.bias.is_meta:
                continue
            bias = conv.bias.view(len(lv.anchors), 5 + c.num_classes)
            bias[:, 4] += math.log(8 / (c.input_size / lv.stride) ** 2)
            bias[:, 5:] += math.log(0.6 / max(c.num_classes - 0.99, 0.01))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        raws = self.body(x)
        return [raws[i] for i in self._order]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(x))

    def load_darknet_weights(self, path: str | Path):
        from edgecsp.darknet.weights import load_darknet_weights_into

        return load_darknet_weights_into(self.body, path)

    def save_darknet(self, cfg_path: str | Path, weights_path: str | Path, seen: int = 0) -> None:
        """Write the model back as Darknet files: the cfg text (at this input size) and .weights."""
        from edgecsp.darknet.weights import read_weights, save_darknet_weights_from
        from edgecsp.fsutil import atomic_write

        text = rewrite_net_size(self.config.cfg_text, self.config.source, self.config.input_size)
        weights_path = Path(weights_path)
        tmp = weights_path.with_name(f".{weights_path.name}.{os.getpid()}.tmp")
        try:  # .weights built beside the target, then both files replaced whole (never half-written)
            save_darknet_weights_from(self.body, tmp, seen=seen)
            read_weights(tmp)  # the bytes read back as a .weights file
            atomic_write(Path(cfg_path), text)
            os.replace(tmp, weights_path)
        finally:
            if tmp.exists():
                tmp.unlink()


# ------------------------------------------------------------------------------ cfg text edits


def _set_key(lines: list[str], section, key: str, value: str) -> None:
    """Set ``key=value`` in one section: replace its line, or add it after the header."""
    option = section.options.get(key)
    if option is not None:
        lines[option.line - 1] = f"{key}={value}"
    else:
        lines[section.line - 1] = lines[section.line - 1].rstrip() + f"\n{key}={value}"


def _edit(text: str, source: str, edit) -> str:
    from edgecsp.darknet.cfg import parse_cfg_text

    cfg = parse_cfg_text(text, source)
    lines = text.splitlines()
    edit(cfg, lines)
    return "\n".join(lines) + "\n"


def rewrite_classes(text: str, source: str, classes: int) -> str:
    """Another class count: ``classes=`` of every [yolo] and ``filters=`` of the conv before it."""
    if not 1 <= classes <= 100_000:
        raise EdgeCSPError(f"class count {classes} must be in 1..100000")

    def edit(cfg, lines):
        for s in cfg.layers:
            if s.type != "yolo":
                continue
            before = cfg.layers[s.index - 1] if s.index > 0 else None
            if before is None or before.type != "convolutional":
                raise s.error("needs a [convolutional] just before it to change the class count")
            num = s.get_int("num", 1)
            masks = len(s.get_ints("mask", list(range(num))))
            _set_key(lines, s, "classes", str(classes))
            _set_key(lines, before, "filters", str(masks * (classes + 5)))

    return _edit(text, source, edit)


def rewrite_net_size(text: str, source: str, size: int) -> str:
    def edit(cfg, lines):
        _set_key(lines, cfg.net, "width", str(size))
        _set_key(lines, cfg.net, "height", str(size))

    return _edit(text, source, edit)


def rewrite_anchors(text: str, source: str, anchors, config: DarknetDetectorConfig) -> str:
    """New anchors (finest level first, as ``config.anchors``) written into each [yolo] layer."""
    anchors = [tuple(float(v) for v in a) for a in anchors]
    if len(anchors) != len(config.anchors):
        raise EdgeCSPError(f"{len(anchors)} anchors for a cfg with {len(config.anchors)}")
    per_layer, k = {}, 0
    for lv in config.levels:
        per_layer[lv.layer] = anchors[k:k + len(lv.anchors)]
        k += len(lv.anchors)
    ordered = [a for layer in sorted(per_layer) for a in per_layer[layer]]
    value = ", ".join(f"{_num(w)},{_num(h)}" for w, h in ordered)

    def edit(cfg, lines):
        offset = 0
        for s in cfg.layers:
            if s.type != "yolo":
                continue
            n = len(per_layer[s.index])
            _set_key(lines, s, "anchors", value)
            _set_key(lines, s, "num", str(len(ordered)))
            _set_key(lines, s, "mask", ",".join(str(offset + j) for j in range(n)))
            offset += n

    return _edit(text, source, edit)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def looks_like_cfg(path: Path) -> bool:
    """A Darknet cfg by name or by content (its first section header), read from the first 64 KB."""
    if path.suffix.lower() == ".cfg":
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    if b"\0" in head:
        return False
    text = head.decode("utf-8", "replace")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip()[0] not in "#;"]
    return bool(lines) and lines[0].replace(" ", "").lower() in ("[net]", "[network]")


# ------------------------------------------------------------------------------ loading


def darknet_config_from_json(data) -> DarknetDetectorConfig:
    """The config from its JSON form (checkpoint metadata, manifests); every field checked."""
    if not isinstance(data, dict) or set(data) != {"cfg_text", "source", "input_size"}:
        raise EdgeCSPError("darknet_config must be an object with exactly cfg_text, source and input_size")
    text, source, size = data["cfg_text"], data["source"], data["input_size"]
    if not isinstance(text, str) or not isinstance(source, str) or len(text) > 4_000_000:
        raise EdgeCSPError("darknet_config cfg_text and source must be strings (cfg_text at most 4 MB)")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= 8192:
        raise EdgeCSPError(f"darknet_config input_size={size!r:.40} must be an integer in 0..8192")
    return DarknetDetectorConfig(text, source=source, input_size=size)


def read_names(path: str | Path) -> list[str]:
    """A Darknet .names file: one class name per line (blank lines at the end ignored)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise EdgeCSPError(f"cannot read class names {shown(path)} ({err.strerror or err}); check --names") from None
    if b"\0" in data[:65536] or len(data) > 16_000_000:
        raise EdgeCSPError(f"{shown(path)} is not a .names file (one class name per line); check --names")
    names = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names or any(not n for n in names):
        raise EdgeCSPError(f"{shown(path)} needs one non-empty class name per line; check --names")
    return names


def _check_weights_file(path: Path) -> None:
    if path.suffix.lower() == ".cfg" or looks_like_cfg(path):
        raise EdgeCSPError(f"{shown(path)} is a text file, not Darknet .weights; --weights takes the binary "
                           ".weights file trained with the cfg")
    if path.suffix.lower() == ".safetensors":
        raise EdgeCSPError(f"{shown(path)} is an edgecsp checkpoint; pass it as --model (without --weights)")


def load_darknet_detector(cfg_path: Path, weights: str | Path | None = None, names: str | Path | None = None,
                          num_classes: int | None = None, input_size: int | None = None):
    """(model, description) from a Darknet cfg, its .weights (else random init) and .names.

    ``num_classes`` different from the cfg's: the prediction convs (those feeding [yolo]) start
    fresh, every other weight comes from ``weights`` (the usual transfer for fine-tuning).
    """
    from edgecsp.models.checkpoint import describe

    try:
        text = cfg_path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise EdgeCSPError(f"cannot read cfg {shown(cfg_path)} ({err.strerror or err}); check --model") from None
    config = config_from_cfg_text(text, str(cfg_path), input_size)
    class_names = read_names(names) if names is not None else None
    if class_names is not None and len(class_names) != config.num_classes and num_classes is None:
        raise EdgeCSPError(f"{shown(Path(str(names)).name)} has {len(class_names)} class names but "
                           f"{shown(config.source)} has classes={config.num_classes}; give the .names the model "
                           "was trained with")
    model = DarknetDetector(config)
    header = None
    if weights is not None:
        weights = Path(weights)
        _check_weights_file(weights)
        header = model.load_darknet_weights(weights)
    if num_classes is not None and num_classes != config.num_classes:
        model = with_new_classes(model, num_classes)
        if class_names is not None and len(class_names) != num_classes:
            raise EdgeCSPError(f"{shown(Path(str(names)).name)} has {len(class_names)} class names, "
                               f"the data has {num_classes} classes")
    model.eval()
    class_names = class_names or [f"class{i}" for i in range(model.config.num_classes)]
    training = {"darknet_weights": Path(weights).name, "seen": header.seen} if header is not None else {}
    return model, describe(model, class_names, training, name=Path(config.source).stem)


def with_new_classes(model: DarknetDetector, num_classes: int) -> DarknetDetector:
    """The same detector for another class count: every weight but the prediction convs kept."""
    from edgecsp.models.transfer import load_all_but

    fresh = DarknetDetector(model.config.with_overrides(num_classes=num_classes))
    if not load_all_but(model, fresh, model.prediction_convs()):
        raise EdgeCSPError(f"could not transfer the weights of {shown(model.config.source)} to {num_classes} classes")
    return fresh
