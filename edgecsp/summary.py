"""python -m edgecsp.summary MODEL [--input-size N] [--json] [--width W] [--depth D]
python -m edgecsp.summary --markdown [--pairs] MODEL [MODEL ...]

Per-stage complexity of a model: trainable params, MACs, Darknet BFLOPs, CIO and output shapes.
MODEL is a zoo backbone (its ImageNet classifier, 1000 classes), a zoo detector or a Darknet .cfg
path. Default input: 256 for the cfg backbone families, 224 for MobileNet-v2, DenseNet and
PeleeNet (as the paper reports them), a detector's configured size, a cfg's own size.

--markdown prints one table row per model, with the paper's figures and the difference where
the paper gives them; --pairs reads the models two by two (baseline, CSP version) and prints
the change from each baseline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edgecsp import cli
from edgecsp.errors import EdgeCSPError, first_line
from edgecsp.models.backbone import Backbone
from edgecsp.models.detector import Detector

# The paper's figures (csp-paper-numbers.md): params in millions, BFLOPs, at the model's default
# input size. The reference README counts convolution kernels only ("conv"); for the families
# without a published cfg the figures match all trainable parameters ("trainable").
PAPER: dict[str, tuple[float, float, str]] = {
    "resnet50": (22.73, 9.74, "conv"),
    "cspresnet50": (21.57, 8.97, "conv"),
    "resnext50": (22.19, 10.11, "conv"),
    "cspresnext50": (20.50, 7.93, "conv"),
    "darknet53": (41.57, 18.57, "conv"),
    "cspdarknet53": (27.61, 13.07, "conv"),
    "mobilenetv2": (3.47, 0.858, "conv"),
    "cspmobilenetv2": (2.51, 0.764, "conv"),
    "densenet201-elastic": (19.48, 8.77, "trainable"),
    "cspdensenet201-elastic": (20.17, 7.13, "trainable"),
    "peleenet": (2.79, 1.017, "trainable"),
    "csppeleenet": (2.83, 0.888, "trainable"),
}

# The published cfg (../darknet-cfg of the reference) each zoo model reproduces layer for layer.
SOURCES: dict[str, str] = {
    "resnet50": "resnet50.cfg",
    "cspresnet50": "csresnet50.cfg",
    "resnext50": "resnext50.cfg",
    "cspresnext50": "csresnext50.cfg",
    "darknet53": "darknet53.cfg",
    "cspdarknet53": "csdarknet53.cfg",
    "mobilenetv2": "mobilenet-v2.cfg",
    "cspmobilenetv2": "csmobilenet-v2.cfg",
    "cspresnet50-panet-spp": "csresnet50-panet-spp.cfg",
    "cspresnext50-panet-spp": "csresnext50-panet-spp.cfg",
    "cspresnext50-panet-spp-optimal": "csresnext50-panet-spp-original-optimal.cfg",
    "cspdarknet53-panet-spp": "csdarknet53-panet-spp.cfg",
}

IMAGENET_CLASSES = 1000


@dataclass
class _Plan:
    """What to count: the module, its input, how module names map to table rows, where shapes come from."""

    kind: str  # "backbone", "detector" or "cfg"
    module: nn.Module
    input_size: tuple[int, int]
    in_channels: int
    labels: list[str]  # row order
    assign: Callable[[str], str]  # module name -> row label
    # (row label, module, "out" or "in"): the row's output shape is that module's output (or input)
    shape_hooks: list[tuple[str, nn.Module, str]] = field(default_factory=list)
    width: float | None = None
    depth: float | None = None


class _Predict(nn.Module):
    """Runs a detector's ``predict`` so the decoded output shape shows in the head row."""

    def __init__(self, model: Detector):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


def summarize(model: str, input_size: int | None = None, width: float | None = None,
              depth: float | None = None) -> dict:
    """Complexity of a zoo backbone (ImageNet classifier), zoo detector or Darknet cfg, as a JSON-ready dict.

    Keys: ``name``, ``kind``, ``input_size`` [h, w], ``params`` (trainable), ``conv_params`` (conv
    kernels only, the reference README's count), ``macs``, ``bflops`` (Darknet's: 2 x conv MACs / 1e9),
    ``cio``, ``cio_with_pooling``, ``stages`` (rows: name, params, macs, bflops, cio, output shapes)
    and ``paper`` (the paper's figures, when it has them for this model at this size).
    """
    plan = _plan(model, input_size, width, depth)
    result, shapes = _profile_with_shapes(model, plan)
    h, w = plan.input_size
    stages = _stage_rows(plan, result, shapes)
    summary = {
        "name": model,
        "kind": plan.kind,
        "source": _source(model, plan.kind),
        "input_size": [h, w],
        "params": result["params"],
        "conv_params": result["conv_params"],
        "macs": result["macs"],
        "bflops": result["bflops"],
        "cio": result["cio"],
        "cio_with_pooling": result["cio_with_pooling"],
        "stages": stages,
    }
    if plan.width is not None:
        summary["width"], summary["depth"] = plan.width, plan.depth
    paper = _paper(model, plan)
    if paper is not None:
        summary["paper"] = paper
    return summary


def _profile_with_shapes(model: str, plan: _Plan) -> tuple[dict, dict[str, list[list[int]]]]:
    """The complexity profile of the plan's module, and the shapes each stage's hooks saw."""
    from edgecsp.complexity import profile

    shapes: dict[str, list[list[int]]] = {label: [] for label in plan.labels}

    def shape_hook(label: str, mode: str):
        def hook(module, args, output):
            t = args[0] if mode == "in" else output
            shapes[label].append(list(t.shape[1:]))
        return hook

    handles = [m.register_forward_hook(shape_hook(label, mode)) for label, m, mode in plan.shape_hooks]
    h, w = plan.input_size
    try:
        return profile(plan.module, (h, w), plan.in_channels), shapes
    except RuntimeError as err:  # shapes that do not fit the architecture (odd sizes, too small)
        raise EdgeCSPError(f"{model} cannot run at {h}x{w} ({first_line(err)}); try a larger multiple of 32") from None
    finally:
        for handle in handles:
            handle.remove()


def _stage_rows(plan: _Plan, result: dict, shapes: dict[str, list[list[int]]]) -> list[dict]:
    """Params, MACs, BFLOPs (Darknet's: conv MACs only), CIO and output shapes per stage of the plan."""
    rows = {label: {"name": label, "params": 0, "macs": 0, "bflops": 0.0, "cio": 0} for label in plan.labels}
    conv_macs = dict.fromkeys(plan.labels, 0)

    def row(name: str) -> dict:
        label = plan.assign(name)
        if label not in rows:  # anything a plan does not place still shows, so rows sum to the totals
            rows[label] = {"name": label, "params": 0, "macs": 0, "bflops": 0.0, "cio": 0}
            conv_macs[label] = 0
        return rows[label]

    for name, n in result["module_params"].items():
        row(name)["params"] += n
    for r in result["rows"]:
        target = row(r.name)
        target["macs"] += r.macs
        if r.is_conv:
            target["cio"] += r.cio
            conv_macs[target["name"]] += r.macs
    stages = []
    for label, target in rows.items():
        target["bflops"] = 2 * conv_macs[label] / 1e9
        target["output"] = shapes.get(label, [])
        stages.append(target)
    return stages


def _source(model: str, kind: str) -> str:
    if kind == "cfg":
        return Path(model).name
    return SOURCES.get(model, "papers (no cfg published)" if kind == "backbone" else "edgecsp design")


def _paper(model: str, plan: _Plan) -> dict | None:
    from edgecsp.models.zoo import default_input_size

    if plan.kind != "backbone" or model not in PAPER or (plan.width, plan.depth) != (1.0, 1.0):
        return None
    size = default_input_size(model)
    if plan.input_size != (size, size):
        return None
    params_m, bflops, counts = PAPER[model]
    return {"params": round(params_m * 1e6), "bflops": bflops, "params_counted": counts}


# --- what to build and how to group it -------------------------------------------------------


def _plan(model: str, input_size: int | None, width: float | None, depth: float | None) -> _Plan:
    from edgecsp.models.detector import DETECTORS
    from edgecsp.models.zoo import BACKBONES

    if input_size is not None and input_size < 1:
        raise EdgeCSPError(f"--input-size must be a positive number of pixels, got {input_size}")
    if model in BACKBONES:
        return _backbone_plan(model, input_size, 1.0 if width is None else width, 1.0 if depth is None else depth)
    if model in DETECTORS:
        return _detector_plan(model, input_size, width, depth)
    if model.lower().endswith(".cfg") or Path(model).is_file():
        if width is not None or depth is not None:
            raise EdgeCSPError("--width and --depth scale zoo models; a Darknet cfg is counted as written")
        return _cfg_plan(Path(model), input_size)
    raise EdgeCSPError(
        f"unknown model {model!r}; give a zoo backbone ({', '.join(BACKBONES)}), a zoo detector "
        f"({', '.join(DETECTORS)}) or the path of a Darknet .cfg file"
    )


def _stage_label(parts: list[str]) -> str:
    # "stem.0.conv" -> "stem", "stages.3.blocks.1" -> "stages.3", "classifier.0" -> "classifier"
    return ".".join(parts[:2]) if parts[0] == "stages" and len(parts) > 1 else parts[0]


def _backbone_rows(backbone: Backbone) -> tuple[list[str], list[tuple[str, nn.Module, str]]]:
    labels: list[str] = []
    hooks: list[tuple[str, nn.Module, str]] = []
    if len(backbone.stem):  # PeleeNet's stem block is its stage 0, its stem list is empty
        labels.append("stem")
        hooks.append(("stem", backbone.stem, "out"))
    for i, stage in enumerate(backbone.stages):
        labels.append(f"stages.{i}")
        hooks.append((f"stages.{i}", stage, "out"))
    return labels, hooks


def _backbone_plan(name: str, input_size: int | None, width: float, depth: float) -> _Plan:
    from edgecsp.models.zoo import build_backbone, default_input_size

    size = input_size or default_input_size(name)
    with torch.device("meta"):  # shapes only: no weights to initialise, no arithmetic
        model = build_backbone(name, width=width, depth=depth, num_classes=IMAGENET_CLASSES).eval()
    labels, hooks = _backbone_rows(model)
    assert model.classifier is not None  # built with num_classes
    labels.append("classifier")
    hooks.append(("classifier", model.classifier, "out"))
    return _Plan("backbone", model, (size, size), 3, labels, lambda n: _stage_label(n.split(".")), hooks,
                 width, depth)


def _detector_plan(name: str, input_size: int | None, width: float | None, depth: float | None) -> _Plan:
    from edgecsp.models.detector import build_detector, detector_config

    config = detector_config(name).with_overrides(width=width, depth=depth)
    size = input_size or config.input_size
    stride = max(config.strides)
    if size % stride:
        raise EdgeCSPError(f"detector input size must be a multiple of {stride}, got {size}")
    with torch.device("meta"):
        detector = build_detector(config).eval()
    labels, hooks = _backbone_rows(detector.backbone)
    preds = detector.neck.prediction_convs()
    names = {m: n for n, m in detector.named_modules()}
    pred_names = tuple(names[p] for p in preds)
    labels += ["neck", "head"]
    hooks += [("neck", p, "in") for p in preds] + [("head", detector.head, "out")]

    def assign(name: str) -> str:
        name = name[len("model."):] if name.startswith("model.") else name
        if name == "model":
            return "head"
        if any(name == p or name.startswith(p + ".") for p in (*pred_names, "head")):
            return "head"  # the 1x1 prediction convs live in the neck module (Darknet's layer order)
        parts = name.split(".")
        return _stage_label(parts[1:]) if parts[0] == "backbone" else parts[0]

    return _Plan("detector", _Predict(detector), (size, size), 3, labels, assign, hooks,
                 config.width, config.depth)


def _cfg_head(cfg, types: list[str]) -> set[int]:
    """The layers of the head: the convs feeding [yolo] layers (and the [yolo] layers), or for a
    classifier everything from the global [avgpool] on."""
    head: set[int] = set()
    for i, kind in enumerate(types):
        if kind == "yolo":
            head.add(i)
            if i and types[i - 1] == "convolutional":
                head.add(i - 1)
    pool = next((i for i, kind in enumerate(types) if kind == "avgpool"), None)
    if pool is not None and not head:
        head.update(range(pool, len(types)))
        before = cfg.layers[pool - 1] if pool else None
        # A classifier conv right before the pooling (resnet50.cfg's): no BN, linear.
        if before is not None and before.type == "convolutional" and not before.get_int("batch_normalize", 0) \
                and before.get_str("activation", "logistic") == "linear":
            head.add(pool - 1)
    return head


def _cfg_stage_labels(infos, head: set[int], neck_from: int, h: int) -> tuple[list[str], dict[int, str]]:
    """Backbone runs of layers at one stride, then the neck, then the head: labels in order and
    the label of every layer."""
    label_of: dict[int, str] = {}
    runs: list[tuple[int, int, int]] = []  # (stride, first, last) of backbone runs
    for i, info in enumerate(infos):
        if i in head or i >= neck_from:
            continue
        stride = max(1, round(h / info.out_shape[1])) if info.out_shape[1] else 0
        if runs and runs[-1][0] == stride:
            runs[-1] = (stride, runs[-1][1], i)
        else:
            runs.append((stride, i, i))
    labels = []
    for stride, first, last in runs:
        label = f"stride {stride} [{first}-{last}]" if first != last else f"stride {stride} [{first}]"
        labels.append(label)
        label_of.update(dict.fromkeys(range(first, last + 1), label))
    neck_layers = [i for i in range(neck_from, len(infos)) if i not in head]
    if neck_layers:
        labels.append(f"neck [{neck_layers[0]}-{neck_layers[-1]}]")
        label_of.update(dict.fromkeys(neck_layers, labels[-1]))
    if head:
        labels.append("head")
        label_of.update(dict.fromkeys(head, "head"))
    return labels, label_of


def _cfg_hooks(model, types: list[str], head: set[int], labels: list[str],
               label_of: dict[int, str]) -> list[tuple[str, nn.Module, str]]:
    """Where each row's output shapes are read: its last layer; the [yolo] maps for the head, the
    maps the prediction convs read for the neck (as for the zoo detectors)."""
    hooks: list[tuple[str, nn.Module, str]] = []
    for label in labels:
        last = max(i for i, lab in label_of.items() if lab == label)
        if label == "head":
            yolo = [i for i in sorted(head) if types[i] == "yolo"]
            hooks += [("head", model.layers[i], "out") for i in yolo] or [("head", model.layers[last], "out")]
        elif label.startswith("neck") and head:
            hooks += [(label, model.layers[i], "in") for i in sorted(head) if types[i] == "convolutional"]
        else:
            hooks.append((label, model.layers[last], "out"))
    return hooks


def _cfg_plan(path: Path, input_size: int | None) -> _Plan:
    """Rows for a cfg: runs of layers at one stride up to the first [upsample] (the backbone), then
    the neck; the convs feeding [yolo] layers, or everything from a global [avgpool] on, are the head."""
    from edgecsp.darknet import DarknetModel, parse_cfg

    cfg = parse_cfg(path)
    with torch.device("meta"):
        model = DarknetModel(cfg, input_size=input_size).eval()
    c, h, w = model.input_shape
    types = [s.type for s in cfg.layers]
    head = _cfg_head(cfg, types)
    neck_from = next((i for i, kind in enumerate(types) if kind == "upsample"), len(types))
    labels, label_of = _cfg_stage_labels(model.layer_info, head, neck_from, h)
    hooks = _cfg_hooks(model, types, head, labels, label_of)

    def assign(name: str) -> str:
        parts = name.split(".")
        if parts[0] == "layers" and len(parts) > 1 and parts[1].isdigit():
            return label_of.get(int(parts[1]), "other")
        return "other"

    return _Plan("cfg", model, (h, w), c, labels, assign, hooks)


# --- output ------------------------------------------------------------------------------------


def _shape_text(shapes: list[list[int]]) -> str:
    return ", ".join("x".join(str(d) for d in s) for s in shapes)


def format_table(summary: dict) -> str:
    """The text report: one row per stage, then totals."""
    h, w = summary["input_size"]
    what = {"backbone": f"zoo backbone, ImageNet classifier ({IMAGENET_CLASSES} classes)",
            "detector": "zoo detector", "cfg": "Darknet cfg"}[summary["kind"]]
    scaled = f", width {summary['width']:g}, depth {summary['depth']:g}" if "width" in summary else ""
    lines = [f"{summary['name']}: {what}{scaled}, input {h}x{w}",
             f"{'stage':<24}{'params':>13}{'MMACs':>11}{'BFLOPs':>9}{'CIO (M)':>10}  output"]
    for s in summary["stages"]:
        lines.append(f"{s['name']:<24}{s['params']:>13,}{s['macs'] / 1e6:>11.1f}{s['bflops']:>9.3f}"
                     f"{s['cio'] / 1e6:>10.2f}  {_shape_text(s['output'])}")
    lines.append(f"{'total':<24}{summary['params']:>13,}{summary['macs'] / 1e6:>11.1f}{summary['bflops']:>9.3f}"
                 f"{summary['cio'] / 1e6:>10.2f}")
    lines.append(f"conv params (kernels only, the reference README's count): {summary['conv_params']:,}")
    if "paper" in summary:
        lines.append(f"paper: {_paper_text(summary)}")
    return "\n".join(lines)


def _compared_params(summary: dict) -> int:
    counts = summary.get("paper", {}).get("params_counted", "trainable")
    return summary["conv_params"] if counts == "conv" else summary["params"]


def _paper_text(summary: dict) -> str:
    p = summary["paper"]
    ours = _compared_params(summary)
    return (f"{p['params'] / 1e6:.2f}M params ({p['params_counted']}; ours {ours / 1e6:.2f}M, "
            f"{_pct(ours, p['params'])}), {p['bflops']:g} BFLOPs (ours {_pct(summary['bflops'], p['bflops'])})")


def _pct(new: float, old: float) -> str:
    change = 100 * (new / old - 1)
    return "0.0%" if abs(change) < 0.05 else f"{change:+.1f}%"  # no "-0.0%"


def markdown_table(summaries: Sequence[dict]) -> str:
    """One row per model: input, params, conv params, BFLOPs, CIO, and the paper's figures where known."""
    lines = [("| model | input | params | conv params | BFLOPs | CIO (M) | paper params | paper BFLOPs | "
              "Δ params | Δ BFLOPs | source |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        h, w = s["input_size"]
        cells = [f"`{Path(s['name']).name}`", f"{h}" if h == w else f"{h}x{w}", f"{s['params'] / 1e6:.2f}M",
                 f"{s['conv_params'] / 1e6:.2f}M", f"{s['bflops']:.3f}", f"{s['cio'] / 1e6:.1f}"]
        if "paper" in s:
            p = s["paper"]
            ours = _compared_params(s)
            cells += [f"{p['params'] / 1e6:.2f}M ({p['params_counted']})", f"{p['bflops']:g}",
                      _pct(ours, p["params"]), _pct(s["bflops"], p["bflops"])]
        else:
            cells += ["–"] * 4
        cells.append(s["source"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_pairs(summaries: Sequence[dict]) -> str:
    """Models two by two (baseline, CSP version): each one's figures and the change; the paper's change where known."""
    if len(summaries) % 2:
        raise EdgeCSPError("--pairs needs an even number of models: baseline, CSP version, baseline, ...")
    lines = ["| baseline → CSP | input | params | Δ params | BFLOPs | Δ BFLOPs | paper Δ BFLOPs | CIO (M) | Δ CIO |",
             "|---|---|---|---|---|---|---|---|---|"]
    for base, csp in zip(summaries[::2], summaries[1::2]):
        paper = "–"
        if "paper" in base and "paper" in csp:
            paper = _pct(csp["paper"]["bflops"], base["paper"]["bflops"])
        lines.append("| " + " | ".join([
            f"`{Path(base['name']).name}` → `{Path(csp['name']).name}`",
            str(csp["input_size"][0]) if base["input_size"] == csp["input_size"]
            else f"{base['input_size'][0]} / {csp['input_size'][0]}",
            f"{base['params'] / 1e6:.2f}M → {csp['params'] / 1e6:.2f}M", _pct(csp["params"], base["params"]),
            f"{base['bflops']:.3f} → {csp['bflops']:.3f}", _pct(csp["bflops"], base["bflops"]), paper,
            f"{base['cio'] / 1e6:.1f} → {csp['cio'] / 1e6:.1f}", _pct(csp["cio"], base["cio"]),
        ]) + " |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from edgecsp import options as opt

    parser = opt.Parser(prog="python -m edgecsp.summary", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="*", metavar="MODEL",
                        help="zoo backbone or detector name, or a Darknet .cfg path (several with --markdown)")
    # The model options of every command; complexity depends on neither --weights nor --names.
    cli.add_model_options(parser, default=None, repeatable=True, help="the same, as in the other commands")
    parser.add_argument("--input-size", type=opt.InputSize(), default=None, help="square input size in pixels")
    parser.add_argument("--width", type=opt.FloatRange(0.0, 2.0, open_lo=True), default=None, help="channel multiplier (zoo models)")
    parser.add_argument("--depth", type=opt.FloatRange(0.0, 2.0, open_lo=True), default=None, help="block-count multiplier (zoo models)")
    out = parser.add_mutually_exclusive_group()
    cli.add_json_option(out, "the model's summary")
    out.add_argument("--markdown", action="store_true", help="print a markdown table of the models")
    parser.add_argument("--pairs", action="store_true", help="with --markdown: compare the models two by two")
    return parser


def _main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.model = list(args.model) + list(args.model_option)
    if not args.model:
        raise EdgeCSPError("name a model: python -m edgecsp.summary MODEL (or --model MODEL)")
    if args.pairs and not args.markdown:
        raise EdgeCSPError("--pairs goes with --markdown")
    if len(args.model) > 1 and not args.markdown:
        raise EdgeCSPError(f"{len(args.model)} models given; summarize one at a time, or add --markdown for a table")
    summaries = [summarize(m, args.input_size, args.width, args.depth) for m in args.model]
    if args.markdown:
        print(markdown_pairs(summaries) if args.pairs else markdown_table(summaries))
    elif args.json:
        print(json.dumps(summaries[0]))
    else:
        print(format_table(summaries[0]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (also the ``edgecsp-summary`` script): user errors are one line, exit code 2."""
    return cli.run(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
