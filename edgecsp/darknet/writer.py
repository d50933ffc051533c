"""Write an edgecsp detector as Darknet files: ``.cfg``, ``.weights`` and ``.names``.

A native zoo detector (edgecsp.models.detector.Detector) is walked in forward order; each module
emits the Darknet layers that compute what it computes ([convolutional], [route] with
``groups``/``group_id`` for channel splits, [shortcut], [maxpool] (channel maxout with
``maxpool_depth=1``), [upsample], [sam], [yolo]). The .weights list the convolutions in the
order the cfg does, so the two files agree by construction. A detector built from a cfg
(DarknetDetector) writes its own cfg text back with its weights.

A native block that Darknet has no layer for is refused with its name (e.g. Elastic's bilinear
upsampling, a channel slice that Darknet's equal [route] groups cannot cut).

``new_coords=1`` [yolo] layers get ``activation=logistic`` on the conv before them: Darknet (and
edgecsp's reader) apply the sigmoid there, the native head applies it itself.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecsp.errors import EdgeCSPError, shown

# Darknet training settings written into [net] and [yolo] so the files train in Darknet as they
# are (Scaled-YOLOv4's choices for new_coords models, YOLOv4's otherwise); edgecsp ignores them.
_NET_TRAINING = {"momentum": "0.949", "decay": "0.0005", "learning_rate": "0.001", "burn_in": "1000",
                 "policy": "steps", "scales": "0.1,0.1", "angle": "0", "saturation": "1.5",
                 "exposure": "1.5", "hue": ".1"}
_YOLO_TRAINING = {"jitter": ".1", "ignore_thresh": ".7", "truth_thresh": "1", "iou_loss": "ciou",
                  "iou_normalizer": "0.07", "max_delta": "5"}
_YOLO_TRAINING_NEW_COORDS = {"jitter": ".1", "ignore_thresh": ".7", "truth_thresh": "1", "iou_loss": "ciou",
                             "iou_normalizer": "0.05", "obj_normalizer": "1.0", "cls_normalizer": "0.5",
                             "max_delta": "20"}


@dataclass(frozen=True)
class DarknetFiles:
    """A detector as Darknet files, in memory: cfg text, .weights bytes and class names."""

    name: str
    cfg_text: str
    weights: bytes
    class_names: tuple[str, ...]

    @property
    def names_text(self) -> str:
        return "".join(f"{n}\n" for n in self.class_names)

    def paths(self, out_dir: Path) -> dict[str, Path]:
        return {ext: Path(out_dir) / f"{self.name}.{ext}" for ext in ("cfg", "weights", "names")}


def darknet_files(model, class_names: Sequence[str], name: str) -> DarknetFiles:
    """The Darknet files of ``model``: a native zoo Detector or a DarknetDetector."""
    from edgecsp.models.checkpoint import is_darknet

    names = tuple(str(n) for n in class_names)
    if len(names) != model.config.num_classes:
        raise EdgeCSPError(f"{len(names)} class names for a model of {model.config.num_classes} classes")
    bad = [n for n in names if not n.strip() or "\n" in n or "\r" in n]
    if bad:
        raise EdgeCSPError(f"class name {shown(bad[0])!r} cannot be a line of a .names file; rename the class")
    if is_darknet(model):
        from edgecsp.models.darknet_detector import rewrite_net_size

        c = model.config
        text = rewrite_net_size(c.cfg_text, c.source, c.input_size)
        return DarknetFiles(_file_stem(name), text, _weights_bytes(model.body), names)
    from edgecsp.models.detector import Detector

    if not isinstance(model, Detector):
        raise EdgeCSPError(f"{type(model).__name__} is not an edgecsp detector; the Darknet writer takes zoo "
                           "detectors and detectors built from a Darknet cfg")
    emitter = _Emitter(model)
    emitter.detector()
    return DarknetFiles(_file_stem(name), emitter.cfg_text(name), _weights_bytes(emitter.units), names)


def _file_stem(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    return stem[:100]


def _weights_bytes(module: nn.Module) -> bytes:
    from edgecsp.darknet.weights import save_darknet_weights_from

    with tempfile.TemporaryDirectory(prefix="edgecsp-darknet-") as tmp:
        path = Path(tmp) / "model.weights"
        save_darknet_weights_from(module, path)
        return path.read_bytes()


def read_back(files: DarknetFiles):
    """The files as edgecsp reads a Darknet model (DarknetDetector, eval mode): the round trip."""
    from edgecsp.models.darknet_detector import DarknetDetector, config_from_cfg_text

    model = DarknetDetector(config_from_cfg_text(files.cfg_text, f"{files.name}.cfg"))
    with tempfile.TemporaryDirectory(prefix="edgecsp-darknet-") as tmp:
        path = Path(tmp) / f"{files.name}.weights"
        path.write_bytes(files.weights)
        model.load_darknet_weights(path)
    return model.eval()


def output_difference(a, b, batch: np.ndarray) -> tuple[float, float]:
    """Max abs difference of two detectors' decoded outputs on a batch: (boxes in px, scores).

    Both run in eval mode (BatchNorm running statistics); each model's own mode is restored after."""
    modes = a.training, b.training
    try:
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            pa, pb = a.eval().predict(x), b.eval().predict(x)
    finally:
        a.train(modes[0])
        b.train(modes[1])
    if pa.shape != pb.shape:
        raise EdgeCSPError(f"the Darknet files give {tuple(pb.shape)} outputs where the model gives {tuple(pa.shape)}")
    box = float((pa[..., :4] - pb[..., :4]).abs().max())
    score = float((pa[..., 4:] - pb[..., 4:]).abs().max())
    return box, score


@dataclass(frozen=True)
class DarknetExportReport:
    files: dict[str, Path]
    layers: int
    floats: int
    classes: int
    parity_images: int
    max_box_diff: float
    max_score_diff: float

    def as_dict(self) -> dict:
        return {"format": "darknet", **{k: str(v) for k, v in self.files.items()}, "layers": self.layers,
                "floats": self.floats, "classes": self.classes, "parity_images": self.parity_images,
                "max_box_diff": self.max_box_diff, "max_score_diff": self.max_score_diff}

    def lines(self) -> list[str]:
        f = self.files
        wrote = (f"wrote {f['cfg']} ({self.layers} layers), {f['weights']} ({self.floats:,} floats), "
                 f"{f['names']} ({self.classes} classes)")
        parity = (f"  read back as a Darknet model vs PyTorch on {self.parity_images} images: boxes "
                  f"{self.max_box_diff:.2e} px, scores {self.max_score_diff:.2e}")
        return [wrote, parity]


def export_darknet(model, description: dict, out_dir: str | Path, input_size: int | None = None,
                   parity_images: Sequence[np.ndarray] | None = None) -> DarknetExportReport:
    """Write ``out_dir/<name>.cfg``, ``.weights`` and ``.names``, after checking that the files,
    read back as edgecsp reads any Darknet model, give the model's outputs on real images.

    Nothing is written when the check fails; each file is replaced atomically.
    """
    from edgecsp.fsutil import atomic_write
    from edgecsp.models.checkpoint import resize_of
    from edgecsp.models.parity import BOX_TOLERANCE_PX, SCORE_TOLERANCE

    if input_size is not None and input_size != model.config.input_size:
        model = _at_size(model, input_size)
    files = darknet_files(model, description.get("class_names") or [], str(description.get("name") or "model"))
    back = read_back(files)
    batch = _parity_batch(parity_images, back.config.input_size, resize_of(model))
    box, score = output_difference(model, back, batch)
    if not (box <= BOX_TOLERANCE_PX and score <= SCORE_TOLERANCE):  # also catches NaN
        raise EdgeCSPError(f"the Darknet files differ from the model by {box:.3g} px on boxes / {score:.3g} on "
                           f"scores (limits {BOX_TOLERANCE_PX} / {SCORE_TOLERANCE}); nothing written")
    paths = files.paths(Path(out_dir))
    atomic_write(paths["cfg"], files.cfg_text)
    atomic_write(paths["weights"], files.weights)
    atomic_write(paths["names"], files.names_text)
    layers = len(back.body.layers)
    return DarknetExportReport(paths, layers, (len(files.weights) - 20) // 4, len(files.class_names), len(batch),
                               box, score)


def _at_size(model, size: int):
    """The model at another input size (its [net] width and height); fully convolutional, same weights."""
    from dataclasses import replace

    from edgecsp.models.checkpoint import is_darknet

    if isinstance(size, bool) or not isinstance(size, int) or size < 32 or size % 32 or size > 8192:
        raise EdgeCSPError(f"--input-size {size!r} must be a multiple of 32 in 32..8192")
    if is_darknet(model):
        from edgecsp.models.darknet_detector import DarknetDetector

        resized: nn.Module = DarknetDetector(model.config.with_overrides(input_size=size))
    else:
        from edgecsp.models.detector import Detector

        resized = Detector(replace(model.config, input_size=size))
    resized.load_state_dict(model.state_dict())
    return resized.eval()


def _parity_batch(images: Sequence[np.ndarray] | None, size: int, resize: str) -> np.ndarray:
    """Real images preprocessed as the model's inputs: the given ones, else the default validation set's first 4."""
    from edgecsp.data.preprocess import letterbox, to_tensor_batch

    if images is None:
        from edgecsp.data import shapes
        from edgecsp.data.coco import resolve_dataset

        dataset = resolve_dataset(shapes.validation_data())
        images = [dataset[i][0] for i in range(min(4, len(dataset)))]
    if len(images) == 0:
        raise EdgeCSPError("no parity images; pass at least one RGB image, or None for the default set")
    return to_tensor_batch([letterbox(im, size, mode=resize)[0] for im in images])


# ------------------------------------------------------------------------------ native detectors


def _act_name(act: nn.Module, where: str) -> str:
    from edgecsp.models.layers import Mish

    if isinstance(act, nn.Identity):
        return "linear"
    if isinstance(act, nn.LeakyReLU):
        if act.negative_slope != 0.1:
            raise EdgeCSPError(f"{where}: LeakyReLU({act.negative_slope}) has no Darknet form (its leaky is 0.1)")
        return "leaky"
    for kind, name in ((nn.ReLU6, "relu6"), (nn.ReLU, "relu"), ((Mish, nn.Mish), "mish"), (nn.SiLU, "swish"),
                       (nn.Sigmoid, "logistic"), (nn.Tanh, "tanh")):
        if isinstance(act, kind):
            return name
    raise EdgeCSPError(f"{where}: activation {type(act).__name__} has no Darknet form")


class _Emitter:
    """Darknet layers of one native detector, emitted in forward order.

    Layer references are indices of earlier layers (-1: the input image); ``read`` inserts a
    [route] when a layer's input is not the layer just before it.
    """

    def __init__(self, model):
        self.model = model
        self.layers: list[tuple[str, dict[str, str]]] = []
        self.channels: list[int] = []
        self.units = nn.ModuleList()  # the convs with weights, in cfg order
        self.where = {id(m): n for n, m in model.named_modules()}
        self.in_channels = 3
        self.last = -1

    # -- bookkeeping -----------------------------------------------------------------------
    def name(self, m: nn.Module) -> str:
        return f"{type(m).__name__} '{self.where.get(id(m), '?')}'"

    def refuse(self, m: nn.Module, why: str) -> EdgeCSPError:
        return EdgeCSPError(f"cannot write {self.name(m)} as Darknet layers: {why}")

    def ch(self, i: int) -> int:
        return self.in_channels if i == -1 else self.channels[i]

    def rel(self, target: int) -> str:
        return str(target - len(self.layers))  # Darknet's relative reference from the new layer

    def add(self, kind: str, channels: int, **opts: object) -> int:
        self.layers.append((kind, {k: str(v) for k, v in opts.items()}))
        self.channels.append(channels)
        self.last = len(self.layers) - 1
        return self.last

    def read(self, src: int, m: nn.Module) -> None:
        if src == self.last:
            return
        if src == -1:
            raise self.refuse(m, "it reads the input image after other layers did (Darknet cannot route to the input)")
        self.route([src])

    def route(self, sources: list[int], groups: int = 1, group_id: int = 0) -> int:
        if len(sources) == 1 and groups == 1 and sources[0] == self.last:
            return self.last
        opts: dict[str, object] = {"layers": ",".join(self.rel(s) for s in sources)}
        if groups > 1:
            opts.update(groups=groups, group_id=group_id)
        return self.add("route", sum(self.ch(s) for s in sources) // groups, **opts)

    # -- modules ---------------------------------------------------------------------------
    def module(self, m: nn.Module, src: int) -> int:
        from edgecsp.models.blocks import DenseLayer, ElasticDenseLayer, Residual, TwoWayDenseLayer
        from edgecsp.models.csp import CSPStage
        from edgecsp.models.layers import SAM, SPP, ConvBNAct, Maxout

        handlers: tuple[tuple[type, Callable[[Any, int], int]], ...] = (
            (ConvBNAct, self.conv), (nn.Sequential, self.sequence), (nn.Identity, lambda _m, s: s),
            (nn.MaxPool2d, self.maxpool), (nn.AvgPool2d, self.avgpool), (Residual, self.residual),
            (DenseLayer, self.dense), (TwoWayDenseLayer, self.two_way_dense), (ElasticDenseLayer, self.elastic_dense),
            (CSPStage, self.csp_stage), (SPP, self.spp), (SAM, self.sam), (Maxout, self.maxout),
        )
        for kind, handler in handlers:
            if type(m) is kind:
                return handler(m, src)
        raise self.refuse(m, "Darknet has no layer for this block")

    def sequence(self, m: nn.Sequential, src: int) -> int:
        for child in m:
            src = self.module(child, src)
        return src

    def conv(self, m, src: int, act: str | None = None) -> int:
        c = m.conv
        k, s, p, d = c.kernel_size, c.stride, c.padding, c.dilation
        if isinstance(p, str) or k[0] != k[1] or p[0] != p[1] or d != (1, 1) or c.padding_mode != "zeros":
            raise self.refuse(m, f"a {k} kernel with padding {p} and dilation {d}; Darknet convolutions are "
                                 "square with equal zero padding")
        if c.in_channels != self.ch(src):
            raise self.refuse(m, f"it takes {c.in_channels} channels but its input has {self.ch(src)}")
        bn = isinstance(m.bn, nn.BatchNorm2d)
        if not bn and not isinstance(m.bn, nn.Identity):
            raise self.refuse(m, f"normalization {type(m.bn).__name__} has no Darknet form")
        opts: dict[str, object] = {"batch_normalize": 1} if bn else {}
        opts.update(filters=c.out_channels, size=k[0])
        opts.update({"stride": s[0]} if s[0] == s[1] else {"stride_x": s[1], "stride_y": s[0]})
        opts.update({"pad": 1} if p[0] == k[0] // 2 else {"padding": p[0]})
        if c.groups > 1:
            opts["groups"] = c.groups
        opts["activation"] = act or _act_name(m.act, self.name(m))
        self.read(src, m)
        self.units.append(m)
        return self.add("convolutional", c.out_channels, **opts)

    def maxpool(self, m: nn.MaxPool2d, src: int) -> int:
        k, s, p, d = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding, m.dilation))
        square = all(isinstance(v, int) or v[0] == v[1] for v in (m.kernel_size, m.stride, m.padding))
        if not square or d != 1:
            raise self.refuse(m, "Darknet max-pools are square, without dilation")
        if m.ceil_mode and not (k == s == 2 and p == 0):
            raise self.refuse(m, "ceil_mode matches Darknet's padding only for size 2, stride 2")
        padding = 1 if m.ceil_mode else 2 * p  # Darknet pads padding//2 before and the rest after
        self.read(src, m)
        return self.add("maxpool", self.ch(src), size=k, stride=s, padding=padding)

    def avgpool(self, m: nn.AvgPool2d, src: int) -> int:
        k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
        if p or m.ceil_mode or not all(isinstance(v, int) or v[0] == v[1] for v in (m.kernel_size, m.stride)):
            raise self.refuse(m, "only square average pools without padding have a Darknet form ([local_avgpool])")
        self.read(src, m)
        return self.add("local_avgpool", self.ch(src), size=k, stride=s, padding=0)

    def residual(self, m, src: int) -> int:
        y = self.module(m.body, src)
        if y == src:
            raise self.refuse(m, "an empty residual body")
        return self.add("shortcut", self.ch(y), **{"from": self.rel(src), "activation": _act_name(m.post_act, self.name(m))})

    def dense(self, m, src: int) -> int:
        return self.route([src, self.module(m.body, src)])

    def two_way_dense(self, m, src: int) -> int:
        b1 = self.module(m.branch1, src)
        b2 = self.module(m.branch2, src)
        return self.route([src, b1, b2])

    def elastic_dense(self, m, src: int) -> int:
        if m.scale != 1:
            raise self.refuse(m, f"its 1/{m.scale}-scale branch is upsampled bilinearly; Darknet's [upsample] "
                                 "is nearest-neighbour only")
        full = self.module(m.full, src)
        low = self.module(m.low, src)
        if low == full:
            raise self.refuse(m, "empty branches")
        total = self.add("shortcut", self.ch(low), **{"from": self.rel(full), "activation": "linear"})
        return self.route([src, total])

    def channel_slice(self, m, src: int, start: int, stop: int) -> int:
        """Channels [start, stop) of layer ``src`` with [route] groups (equal groups only)."""
        total = self.ch(src)
        step = math.gcd(math.gcd(start, stop), total)
        groups = total // step
        pieces = range(start // step, stop // step)
        if groups > 16:
            raise self.refuse(m, f"its channel slice [{start}:{stop}] of {total} channels (gamma="
                                 f"{m.spec.gamma}) needs {groups} equal [route] groups; Darknet splits channels "
                                 "only into equal groups (pick a width whose channels the split divides)")
        parts = [self.route([src], groups, g) for g in pieces]
        return parts[0] if len(parts) == 1 else self.route(parts)

    def csp_stage(self, m, src: int) -> int:
        x = self.module(m.down, src)
        if m.spec.merge == "plain":
            y = self.module(m.blocks, self.module(m.main, x))
            return self.module(m.transition_out, self.module(m.transition_main, y))
        if m.slice_at:
            main = self.channel_slice(m, x, m.slice_at, self.ch(x))
            y = self.module(m.transition_main, self.module(m.blocks, main))
            cross = self.channel_slice(m, x, 0, m.slice_at)
        else:
            cross = self.module(m.cross, x)
            main = self.module(m.main, x)
            y = self.module(m.transition_main, self.module(m.blocks, main))
        return self.module(m.transition_out, self.route([y, cross]))  # [block path, cross path]

    def spp(self, m, src: int) -> int:
        pools = [self.maxpool(pool, src) for pool in m.pools]  # largest first, then the input
        return self.route([*pools, src])

    def sam(self, m, src: int) -> int:
        self.conv(m.attention, src)
        return self.add("sam", self.ch(src), **{"from": self.rel(src), "activation": "linear"})

    def maxout(self, m, src: int) -> int:
        c = self.ch(src)
        if c % m.groups:
            raise self.refuse(m, f"{c} channels do not split into {m.groups} groups")
        # Native Maxout: output g = max over channels g, g + C/groups, ... (contiguous chunks), which is
        # exactly Darknet's channel maxout with out_channels = C/groups: no channel permutation needed.
        self.read(src, m)
        return self.add("maxpool", c // m.groups, maxpool_depth=1, out_channels=c // m.groups, size=1, stride=1)

    def upsample(self, src: int, m: nn.Module) -> int:
        self.read(src, m)
        return self.add("upsample", self.ch(src), stride=2)

    # -- detector --------------------------------------------------------------------------
    def detector(self) -> None:
        from edgecsp.models.necks import EFM, PANetSPP

        model = self.model
        first = next(mod for mod in model.modules() if isinstance(mod, nn.Conv2d))
        self.in_channels = first.in_channels
        feats = self.backbone(model.backbone)
        neck = model.neck
        if type(neck) is EFM:
            self.efm(neck, feats)
        elif type(neck) is PANetSPP:
            self.panet_spp(neck, feats)
        else:
            raise self.refuse(neck, "the writer knows the EFM and PANet-SPP necks only")
        yolo = sum(kind == "yolo" for kind, _ in self.layers)
        if yolo != len(model.head.levels):
            raise self.refuse(neck, f"it gives {yolo} outputs for {len(model.head.levels)} head levels")

    def backbone(self, b) -> list[int]:
        x = self.module(b.stem, -1)
        feats = []
        for i, stage in enumerate(b.stages):
            x = self.module(stage, x)
            if i in b.spec.features:
                feats.append(x)
        return feats

    def predict(self, conv, src: int, level: int) -> None:
        """A prediction conv and its [yolo] layer (output ``level`` of the head, finest first)."""
        lv = self.model.head.levels[level]
        self.conv(conv, src, act="logistic" if lv.new_coords else None)
        self.yolo(level)

    def yolo(self, level: int) -> None:
        head = self.model.head
        lv = head.levels[level]
        anchors = [a for h in head.levels for a in h.anchors.reshape(-1, 2).tolist()]
        first = sum(h.num_anchors for h in head.levels[:level])
        opts: dict[str, object] = {
            "mask": ",".join(str(first + j) for j in range(lv.num_anchors)),
            "anchors": ", ".join(f"{_float(w)},{_float(h)}" for w, h in anchors),
            "classes": lv.num_classes, "num": len(anchors), "scale_x_y": _float(lv.scale_xy),
        }
        if lv.new_coords:
            opts["new_coords"] = 1
        opts.update(_YOLO_TRAINING_NEW_COORDS if lv.new_coords else _YOLO_TRAINING)
        self.add("yolo", self.ch(self.last), **opts)

    def efm(self, m, feats: list[int]) -> None:
        feats = list(feats)
        if m.spp is not None:
            feats[-1] = self.module(m.spp, self.module(m.spp_pre, feats[-1]))
        p = [self.module(lat, f) for lat, f in zip(m.lateral, feats)]
        for i, fuse in enumerate(m.fuse):
            parts = [p[i]]
            if i > 0:
                parts.insert(0, self.module(m.down[i - 1], p[i - 1]))
            if i < len(p) - 1:
                parts.append(self.upsample(p[i + 1], m))
            self.predict(m.pred[i], self.module(fuse, self.route(parts)), i)

    def panet_spp(self, m, feats: list[int]) -> None:
        x = self.module(m.top_post, self.module(m.spp, self.module(m.top_pre, feats[-1])))
        td_outs = [x]
        for step, feat in zip(m.td, reversed(feats[:-1])):
            up = self.upsample(self.module(step.reduce, x), m)
            lateral = self.module(step.lateral, feat)
            x = self.module(step.convs, self.route([lateral, up]))
            td_outs.append(x)
        self.predict(m.fine_pred, self.module(m.fine_head, x), 0)
        for level, (step, skip) in enumerate(zip(m.bu, reversed(td_outs[:-1])), start=1):
            x = self.module(step.convs, self.route([self.module(step.down, x), skip]))
            self.predict(step.pred, self.module(step.head, x), level)

    # -- text ------------------------------------------------------------------------------
    def cfg_text(self, name: str) -> str:
        from edgecsp import __version__

        c = self.model.config
        size = int(c.input_size)
        lines = [f"# {shown(name)}: {shown(c.description or c.backbone)}",
                 f"# Written by edgecsp {__version__} (python -m edgecsp.export --format darknet) with its .weights;",
                 "# edgecsp letterboxes its inputs (letter_box=1). Training settings are Darknet's usual ones.",
                 "[net]", "batch=64", "subdivisions=8", f"width={size}", f"height={size}",
                 f"channels={self.in_channels}", "letter_box=1"]
        classes = int(c.num_classes)
        max_batches = max(6000, 2000 * classes)  # Darknet's rule of thumb
        lines += [f"max_batches={max_batches}", f"steps={int(max_batches * 0.8)},{int(max_batches * 0.9)}"]
        lines += [f"{k}={v}" for k, v in _NET_TRAINING.items()]
        for i, (kind, opts) in enumerate(self.layers):
            lines += ["", f"# {i}", f"[{kind}]"] + [f"{k}={v}" for k, v in opts.items()]
        return "\n".join(lines) + "\n"


def _float(v: float) -> str:
    """The shortest text that reads back as the same float32 (anchors are float32 buffers)."""
    text = np.format_float_positional(np.float32(v), trim="-")
    return text
