"""Parse Darknet .cfg files into sections that remember where each value came from.

Every error names ``file.cfg:LINE`` so a user can jump to the offending line. Keys and
section names are matched case-insensitively and whitespace inside values is dropped, as
Darknet itself strips every blank from a line before reading it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from edgecsp.errors import EdgeCSPError, shown

INT_MAX = 2**31 - 1  # Darknet's ints are 32-bit

# Section aliases Darknet accepts, mapped to the name this package uses.
_ALIASES = {
    "network": "net",
    "conv": "convolutional",
    "conn": "connected",
    "max": "maxpool",
    "avg": "avgpool",
    "local_avg": "local_avgpool",
    "soft": "softmax",
}

# Keys Darknet reads on every layer; none changes inference except the two load switches.
_COMMON = {
    "clip", "onlyforward", "dont_update", "burnin_update", "stopbackward", "train_only_bn",
    "learning_rate", "stream", "wait_stream",
}
_COMMON_UNSUPPORTED: dict[str, str | None] = {"dontload": "0", "dontloadscales": "0"}

_NET = {
    "batch", "subdivisions", "max_batches", "learning_rate", "learning_rate_min", "sgdr_cycle",
    "sgdr_mult", "momentum", "decay", "time_steps", "track", "augment_speed",
    "sequential_subdivisions", "try_fix_nan", "weights_reject_freq", "equidistant_point",
    "badlabels_rejection_percentage", "num_sigmas_reject_badlabels", "ema_alpha",
    "use_cuda_graph", "loss_scale", "dynamic_minibatch", "optimized_memory",
    "workspace_size_limit_mb", "adam", "b1", "b2", "eps", "height", "width", "channels",
    "inputs", "max_crop", "min_crop", "flip", "blur", "gaussian_noise", "mixup", "cutmix",
    "mosaic", "letter_box", "mosaic_bound", "contrastive", "contrastive_jit_flip",
    "contrastive_color", "unsupervised", "label_smooth_eps", "resize_step", "attention",
    "adversarial_lr", "max_chart_loss", "angle", "aspect", "saturation", "exposure", "hue",
    "power", "policy", "burn_in", "step", "scale", "steps", "scales", "seq_scales", "gamma",
    "show_receptive_field", "center", "random", "notruth", "max_ratio",
}

_YOLO = {
    "mask", "anchors", "classes", "num", "jitter", "ignore_thresh", "truth_thresh", "random",
    "scale_x_y", "iou_thresh", "cls_normalizer", "iou_normalizer", "obj_normalizer",
    "delta_normalizer", "iou_loss", "iou_thresh_kind", "nms_kind", "beta_nms", "max_delta",
    "new_coords", "max", "counters_per_class", "label_smooth_eps", "objectness_smooth",
    "resize", "focal_loss", "track_history_size", "sim_thresh", "dets_for_track",
    "dets_for_show", "track_ciou_norm", "embedding_layer", "map", "show_details",
    # Present in published CSPNet cfgs; Darknet reads neither in [yolo] ("Unused field").
    "uc_normalizer", "beta1",
}

# type -> (keys used or harmlessly ignored, {key: default} for features refused when set to
# anything but the default; None: refused whenever set)
_SCHEMA: dict[str, tuple[set[str], dict[str, str | None]]] = {
    "net": (_NET, {}),
    "convolutional": (
        {"filters", "size", "stride", "stride_x", "stride_y", "pad", "padding", "groups",
         "batch_normalize", "cbn", "activation", "dilation", "angle", "grad_centr",
         "assisted_excitation", "dot", "xnor", "share_index", "bin_output"},
        {"binary": "0", "sway": "0", "rotate": "0",
         "stretch": "0", "stretch_sway": "0", "antialiasing": "0",
         "coordconv": "0", "flipped": "0", "reverse": "0", "deform": "0"},
    ),
    "maxpool": (
        {"size", "stride", "stride_x", "stride_y", "padding", "maxpool_depth", "out_channels"},
        {"antialiasing": "0", "maxpool_zero_nonmax": "0"},
    ),
    "local_avgpool": ({"size", "stride", "stride_x", "stride_y", "padding"}, {}),
    "reorg3d": ({"stride"}, {"reverse": "0"}),
    "avgpool": (set(), {}),
    "route": ({"layers", "groups", "group_id"}, {}),
    "shortcut": ({"from", "activation"}, {"weights_type": "none", "weights_normalization": "none"}),
    "upsample": ({"stride", "scale"}, {}),
    "yolo": (_YOLO, {}),
    "sam": ({"from", "activation"}, {}),
    "scale_channels": ({"from", "scale_wh", "activation"}, {}),
    "softmax": ({"groups", "temperature", "spatial", "noloss"}, {"tree": None}),
    "connected": ({"output", "activation", "batch_normalize"}, {}),
    "dropout": ({"probability", "dropblock", "dropblock_size_rel", "dropblock_size_abs"}, {}),
    "reorg": ({"stride", "reverse"}, {}),
    "cost": ({"type", "scale", "ratio", "noobject_scale", "thresh"}, {}),
}

# Real Darknet layer types this importer does not build: a clearer message than "unknown".
_DARKNET_UNSUPPORTED = {
    "local", "activation", "crnn", "gru", "lstm", "conv_lstm", "history", "rnn", "crop",
    "detection", "region", "gaussian_yolo", "lrn",
    "normalization", "batchnorm", "contrastive", "empty", "silence", "implicit",
    "deconvolutional",
}


# Layer types of detectors edgecsp does not take, with what they are (named in the refusal).
_OUT_OF_SCOPE = {
    "region": "a YOLOv2 head", "detection": "a YOLOv1 head", "gaussian_yolo": "Gaussian YOLOv3's head",
    "crnn": "a recurrent layer of a tracking cfg", "contrastive": "a training-time embedding layer",
}


@dataclass(frozen=True)
class Option:
    key: str
    value: str
    line: int


@dataclass
class Section:
    """One ``[type]`` block: its options and where each came from."""

    type: str
    path: str
    line: int
    options: dict[str, Option] = field(default_factory=dict)
    index: int = -1  # layer index (Darknet numbering); -1 for [net]

    def where(self, key: str | None = None) -> str:
        line = self.options[key].line if key in self.options else self.line
        return f"{shown(Path(self.path).name)}:{line}"

    def error(self, message: str, key: str | None = None) -> EdgeCSPError:
        """An EdgeCSPError prefixed with file:line and the section, ready to raise."""
        return EdgeCSPError(f"{self.where(key)}: [{self.type}] {message}")

    def has(self, key: str) -> bool:
        return key in self.options

    def raw(self, key: str) -> str | None:
        opt = self.options.get(key)
        return None if opt is None else opt.value

    # Typed getters: with a default they always return a value, without one None if unset.
    @overload
    def get_str(self, key: str) -> str | None: ...
    @overload
    def get_str(self, key: str, default: str) -> str: ...
    def get_str(self, key, default=None):
        value = self.raw(key)
        return default if value is None else value.lower()

    @overload
    def get_int(self, key: str) -> int | None: ...
    @overload
    def get_int(self, key: str, default: int) -> int: ...
    def get_int(self, key, default=None):
        value = self.raw(key)
        return default if value is None else self._to_int(key, value)

    @overload
    def get_float(self, key: str) -> float | None: ...
    @overload
    def get_float(self, key: str, default: float) -> float: ...
    def get_float(self, key, default=None):
        value = self.raw(key)
        return default if value is None else self._to_float(key, value)

    @overload
    def get_ints(self, key: str) -> list[int] | None: ...
    @overload
    def get_ints(self, key: str, default: list[int]) -> list[int]: ...
    def get_ints(self, key, default=None):
        parts = self._parts(key)
        return default if parts is None else [self._to_int(key, p) for p in parts]

    @overload
    def get_floats(self, key: str) -> list[float] | None: ...
    @overload
    def get_floats(self, key: str, default: list[float]) -> list[float]: ...
    def get_floats(self, key, default=None):
        parts = self._parts(key)
        return default if parts is None else [self._to_float(key, p) for p in parts]

    def _to_int(self, key: str, text: str) -> int:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None or not number.is_integer():
            raise self.error(f"{key}={self.raw(key)} is not an integer; write a whole number", key)
        if abs(number) > INT_MAX:  # Darknet reads C ints; larger values would wrap there
            raise self.error(f"{key}={self.raw(key)} is out of range; Darknet integers are at most {INT_MAX}", key)
        return int(number)

    def _to_float(self, key: str, text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):  # nan/inf would slip past every range check
            raise self.error(f"{key}={self.raw(key)} is not a finite number; write a number", key)
        return number

    def _parts(self, key: str) -> list[str] | None:
        value = self.raw(key)
        if value is None:
            return None
        parts = value.split(",")
        if parts[-1] == "":  # Darknet tolerates one trailing comma
            parts = parts[:-1]
        if not parts or "" in parts:
            raise self.error(f"{key}={value} is not a comma-separated list", key)
        return parts


@dataclass
class DarknetCfg:
    """A parsed cfg: the [net] section and the layers in Darknet order (index 0 first)."""

    path: str
    net: Section
    layers: list[Section]

    @property
    def height(self) -> int:
        return self.net.get_int("height", 0)

    @property
    def width(self) -> int:
        return self.net.get_int("width", 0)

    @property
    def channels(self) -> int:
        return self.net.get_int("channels", 0)


def parse_cfg(path: str | Path) -> DarknetCfg:
    """Read and check a Darknet .cfg file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        raise EdgeCSPError(f"{shown(path)}: cfg file not found; check the path") from None
    except OSError as err:
        raise EdgeCSPError(f"{shown(path)}: cannot read cfg file ({err.strerror}); check the path") from None
    return parse_cfg_text(text, str(path))


def parse_cfg_text(text: str, path: str = "<cfg>") -> DarknetCfg:
    """Parse cfg text; ``path`` is only used in messages."""
    name = shown(Path(path).name)
    sections: list[Section] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = "".join(raw_line.split())  # Darknet drops every blank in a line
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise EdgeCSPError(f"{name}:{number}: '{line}' is not a section header; write [type]")
            sections.append(_new_section(line[1:-1].lower(), path, number, name))
            continue
        if not sections:
            raise EdgeCSPError(f"{name}:{number}: '{line}' comes before any [section]; start with [net]")
        key, sep, value = line.partition("=")
        if not sep or not key:
            raise EdgeCSPError(f"{name}:{number}: '{line}' is not key=value; fix or comment it out with #")
        key = key.lower()
        value = value.split("#", 1)[0]  # Darknet's number readers stop at an inline comment
        section = sections[-1]
        _check_key(section, key, number, name)
        _check_joined_numbers(raw_line, section.type, key, number, name)
        if key in section.options:
            if section.type == "net":
                # Darknet's option_find walks the options front to back: the first value wins.
                # Published cfgs rely on it in [net] ("# Testing" then "# Training" batch=...).
                continue
            first = section.options[key].line
            raise EdgeCSPError(
                f"{name}:{number}: [{section.type}] {key} is set twice (first at line {first}); Darknet "
                "would silently use the first; keep one"
            )
        section.options[key] = Option(key, value, number)

    if not sections:
        raise EdgeCSPError(f"{name}: cfg has no sections; is this a Darknet .cfg file?")
    net, layers = sections[0], sections[1:]
    if net.type != "net":
        raise EdgeCSPError(f"{name}:{net.line}: first section is [{net.type}]; a Darknet cfg starts with [net]")
    for index, section in enumerate(layers):
        if section.type == "net":
            raise EdgeCSPError(f"{name}:{section.line}: a second [net] section; keep only the first")
        section.index = index
        _check_unsupported_values(section)
    if not layers:
        raise EdgeCSPError(f"{name}: cfg has a [net] section but no layers")
    return DarknetCfg(path, net, layers)


_JOINED = re.compile(r"[0-9.]([ \t]+)[-+0-9.]")


def _check_joined_numbers(raw_line: str, kind: str, key: str, line: int, name: str) -> None:
    """Refuse two numbers separated only by blanks: Darknet drops the blanks and reads one number
    ("61,45    61,45" becomes 61,4561,45), which is never what the author meant."""
    text = raw_line.split("=", 1)[1].split("#", 1)[0] if "=" in raw_line else ""
    match = _JOINED.search(text)
    if match is None:
        return
    start = text.rfind(",", 0, match.start()) + 1
    end = text.find(",", match.end())
    part = text[start:end if end >= 0 else len(text)].strip()
    raise EdgeCSPError(
        f"{name}:{line}: [{kind}] {key}= has '{part}', two numbers with only a blank between them: a comma "
        f"is missing; Darknet drops blanks and would read one number, {''.join(part.split())}; "
        "put a comma between them"
    )


def _new_section(raw_type: str, path: str, line: int, name: str) -> Section:
    kind = _ALIASES.get(raw_type, raw_type)
    if kind not in _SCHEMA:
        if kind in _OUT_OF_SCOPE:
            raise EdgeCSPError(f"{name}:{line}: [{raw_type}] ({_OUT_OF_SCOPE[kind]}) is outside what edgecsp "
                               "deploys: it takes [yolo]-headed detectors (YOLOv3 generation and later)")
        if kind in _DARKNET_UNSUPPORTED:
            raise EdgeCSPError(
                f"{name}:{line}: Darknet layer [{raw_type}] is not supported by edgecsp; "
                "use a cfg without it"
            )
        raise EdgeCSPError(f"{name}:{line}: unknown section [{raw_type}]; check the spelling")
    return Section(kind, path, line)


def _check_key(section: Section, key: str, line: int, name: str) -> None:
    known, unsupported = _SCHEMA[section.type]
    if key in known or key in unsupported:
        return
    if section.type != "net" and (key in _COMMON or key in _COMMON_UNSUPPORTED):
        return
    raise EdgeCSPError(f"{name}:{line}: unknown option '{key}' in [{section.type}]; check the spelling")


def _check_unsupported_values(section: Section) -> None:
    _, unsupported = _SCHEMA[section.type]
    for key, default in {**unsupported, **_COMMON_UNSUPPORTED}.items():
        value = section.raw(key)
        if value is None or (default is not None and value.lower() == default):
            continue
        if default is not None and _same_number(value, default):
            continue
        raise section.error(
            f"{key}={value} is not supported by edgecsp; remove it (default {default or 'unset'})",
            key,
        )


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False
