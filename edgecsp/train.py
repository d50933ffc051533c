"""python -m edgecsp.train (--model NAME | --darknet-cfg CFG [--darknet-weights W]) --data DIR [--epochs E] [--out CKPT]

Trains a zoo detector from scratch, or fine-tunes a published Darknet detector: the cfg is matched
to its native zoo twin, its .weights load by layer order, and with a different number of classes
every layer but the prediction convolutions keeps its weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgecsp import cli
from edgecsp import options as opt


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.train", description=__doc__)
    parser.add_argument("--model", default="csp-tiny-efm", help="zoo detector name (default: csp-tiny-efm)")
    parser.add_argument("--darknet-cfg", type=opt.existing_file(), help="fine-tune from a Darknet detector cfg (CSP PANet-SPP family)")
    parser.add_argument("--darknet-weights", type=opt.existing_file(), help="its .weights (default: train the cfg from scratch)")
    parser.add_argument("--data", required=True, type=opt.existing_path(), help="COCO-format training set directory")
    parser.add_argument("--epochs", type=opt.positive_int(100_000), default=30)
    parser.add_argument("--batch", type=opt.positive_int(opt.MAX_BATCH), default=32)
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
    if args.darknet_cfg is not None:
        from edgecsp.models.from_darknet import detector_from_cfg

        model, twin = detector_from_cfg(args.darknet_cfg, args.darknet_weights, num_classes=dataset.num_classes)
        if args.input_size:
            model.config = model.config.with_overrides(input_size=args.input_size)
        args.model, fit = twin, False  # the cfg's anchors go with its weights
        print(f"{args.darknet_cfg.name} is the zoo's {twin}; fine-tuning it on {dataset.num_classes} classes")
    elif args.darknet_weights is not None:
        parser.error("--darknet-weights needs --darknet-cfg")
    else:
        model = build_detector(args.model, num_classes=dataset.num_classes, input_size=args.input_size)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    opt.check_device(device)
    settings = TrainSettings(epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                             workers=args.workers, device=device, stop_after=args.stop_after)
    out = train(model, dataset, args.out, settings, name=args.model, resume=args.resume, fit=fit)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
