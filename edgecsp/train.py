"""python -m edgecsp.train (--model NAME | --model X.cfg [--weights X.weights] | --darknet-cfg CFG) --data DIR

Trains a zoo detector or any Darknet [yolo] cfg from scratch, or fine-tunes a Darknet detector from
its .weights: with a different number of classes every layer but the convolutions feeding the
[yolo] layers keeps its weights. A model trained from a cfg keeps the cfg in its checkpoint and
writes back to .cfg + .weights (python -m edgecsp.export --format darknet). --darknet-cfg matches a
published CSP cfg to its native zoo twin instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgecsp import cli
from edgecsp import options as opt


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.train", description=__doc__)
    cli.add_model_options(parser, default="csp-tiny-efm",
                          help="zoo detector name (default: csp-tiny-efm) or a Darknet .cfg (with --weights to fine-tune)")
    parser.add_argument("--darknet-cfg", type=opt.existing_file(), help="fine-tune from a Darknet detector cfg (CSP PANet-SPP family)")
    parser.add_argument("--darknet-weights", type=opt.existing_file(), help="its .weights (default: train the cfg from scratch)")
    parser.add_argument("--data", required=True, type=opt.existing_path(), help="COCO-format training set directory")
    parser.add_argument("--epochs", type=opt.positive_int(100_000), default=30)
    cli.add_batch_option(parser, default=32, help="images per training step (default 32)")
    parser.add_argument("--lr", type=opt.FloatRange(0.0, 10.0, open_lo=True), default=2e-3)
    parser.add_argument("--input-size", type=opt.InputSize(), default=None)
    parser.add_argument("--seed", type=opt.IntRange(0, 2**32 - 1), default=0)
    parser.add_argument("--threads", type=opt.IntRange(0, opt.MAX_WORKERS), default=0, help="torch threads (0: default)")
    parser.add_argument("--workers", type=opt.IntRange(0, opt.MAX_WORKERS), default=0,
                        help="data loader processes (default 0)")
    parser.add_argument("--device", type=opt.Device(), default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--no-fit-anchors", action="store_true", help="keep the config's anchors")
    parser.add_argument("--stop-after", type=opt.positive_int(100_000), help="end this run after epoch N (continue later with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT's .resume.safetensors")
    parser.add_argument("--out", type=opt.OutPath(), default=Path("runs/model.safetensors"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    from edgecsp.data.coco import resolve_dataset
    from edgecsp.models.detector import build_detector
    from edgecsp.training.trainer import TrainSettings, train

    dataset = resolve_dataset(args.data)
    fit = not args.no_fit_anchors
    class_names = None
    if args.darknet_cfg is not None:
        from edgecsp.models.from_darknet import detector_from_cfg

        model, twin = detector_from_cfg(args.darknet_cfg, args.darknet_weights, num_classes=dataset.num_classes)
        if args.input_size:
            model.config = model.config.with_overrides(input_size=args.input_size)
        args.model, fit = twin, False  # the cfg's anchors go with its weights
        cli.say(f"{args.darknet_cfg.name} is the zoo's {twin}; fine-tuning it on {dataset.num_classes} classes")
    elif args.darknet_weights is not None:
        parser.error("--darknet-weights needs --darknet-cfg")
    elif _is_cfg(args.model):
        from edgecsp.models.darknet_detector import load_darknet_detector

        model, description = load_darknet_detector(Path(args.model), args.weights, args.names,
                                                   num_classes=dataset.num_classes, input_size=args.input_size)
        class_names = description["class_names"] if args.names else list(dataset.class_names)
        fit = fit and args.weights is None  # trained weights go with their cfg's anchors
        start = f"its weights from {args.weights.name}" if args.weights else "random weights"
        cli.say(f"training {Path(args.model).name} ({model.config.input_size}x{model.config.input_size}, "
                f"{dataset.num_classes} classes) from {start}")
        args.model = Path(args.model).stem
    elif args.weights is not None or args.names is not None:
        parser.error("--weights and --names go with a Darknet .cfg --model")
    else:
        model = build_detector(args.model, num_classes=dataset.num_classes, input_size=args.input_size)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    opt.check_device(device)
    settings = TrainSettings(epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                             workers=args.workers, device=device, stop_after=args.stop_after)
    out = train(model, dataset, args.out, settings, name=args.model, resume=args.resume, fit=fit,
                class_names=class_names)
    print(f"saved {out}")
    return 0


def _is_cfg(model: str) -> bool:
    from edgecsp.models.darknet_detector import looks_like_cfg

    path = Path(model)
    return path.is_file() and looks_like_cfg(path)


if __name__ == "__main__":
    sys.exit(cli.run(main))
