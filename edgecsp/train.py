"""python -m edgecsp.train --model NAME --data DIR [--epochs E] [--input-size N] [--out CKPT]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgecsp import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgecsp.train", description=__doc__)
    parser.add_argument("--model", default="csp-tiny-efm", help="zoo detector name (default: csp-tiny-efm)")
    parser.add_argument("--data", required=True, type=Path, help="COCO-format training set directory")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--no-fit-anchors", action="store_true", help="keep the config's anchors")
    parser.add_argument("--stop-after", type=int, help="end this run after epoch N (continue later with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT's .resume.safetensors")
    parser.add_argument("--out", type=Path, default=Path("runs/model.safetensors"))
    args = parser.parse_args(argv)

    from edgecsp.data.coco import resolve_dataset
    from edgecsp.models.detector import build_detector
    from edgecsp.training.trainer import TrainSettings, train

    dataset = resolve_dataset(args.data)
    model = build_detector(args.model, num_classes=dataset.num_classes, input_size=args.input_size)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    settings = TrainSettings(epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads,
                             workers=args.workers, device=device, stop_after=args.stop_after)
    out = train(model, dataset, args.out, settings, name=args.model, resume=args.resume, fit=not args.no_fit_anchors)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
