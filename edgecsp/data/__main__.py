"""Command line for datasets: `python -m edgecsp.data {shapes,yolo2coco,info} ...`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

from edgecsp import cli
from edgecsp import options as opt


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shapes", help="generate the synthetic shapes detection set (docs/shapes-dataset.md)")
    p.add_argument("--out", required=True, type=opt.OutPath(), help="output directory; gets train/ and val/")
    p.add_argument("--train", type=opt.positive_int(1_000_000), default=1000,
                   help="number of training images (default 1000)")
    p.add_argument("--val", type=opt.positive_int(1_000_000), default=200,
                   help="number of validation images (default 200)")
    p.add_argument("--seed", type=opt.IntRange(0, 2**32 - 1), default=0, help="random seed (default 0)")
    p.add_argument("--workers", type=opt.positive_int(opt.MAX_WORKERS), default=None, help="worker processes (default: CPU count, at most 8)")

    p = sub.add_parser("yolo2coco", help="convert a YOLO txt dataset (images/ + labels/) to COCO JSON")
    p.add_argument("root", type=opt.existing_dir(), help="dataset directory holding images/, labels/ and classes.txt")
    p.add_argument("--out", type=opt.OutPath(), default=None, help="output JSON (default ROOT/annotations.json)")
    p.add_argument("--names", default=None, help="comma-separated class names instead of classes.txt")

    p = sub.add_parser("info", help="validate a COCO dataset and print a summary")
    p.add_argument("data", nargs="?", type=opt.existing_path(), default=None, help="dataset directory")
    p.add_argument("--annotations", type=opt.existing_file(), default=None, help="COCO annotation JSON")
    p.add_argument("--images", type=opt.existing_dir(), default=None, help="images directory")
    return parser


def _shapes(args: argparse.Namespace) -> None:
    from edgecsp.data.shapes import generate_shapes

    start = time.perf_counter()
    dirs = generate_shapes(args.out, args.train, args.val, args.seed, args.workers)
    took = time.perf_counter() - start
    print(f"wrote {args.train} train + {args.val} val images in {took:.1f} s: {dirs['train']}, {dirs['val']}")


def _yolo2coco(args: argparse.Namespace) -> None:
    from edgecsp.data.yolo_txt import yolo_to_coco

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    print(f"wrote {yolo_to_coco(args.root, args.out, names)}")


def _info(args: argparse.Namespace) -> None:
    from edgecsp.data.coco import resolve_dataset

    ds = resolve_dataset(args.data, args.annotations, args.images)
    counts = np.zeros(ds.num_classes, dtype=np.int64)
    for i in range(len(ds)):
        counts += np.bincount(ds.targets(i)[1], minlength=ds.num_classes)
    print(f"{ds.annotations_path}: {len(ds)} images, {int(counts.sum())} boxes, {ds.num_classes} classes")
    for cid, name, c in zip(ds.category_ids, ds.class_names, counts):
        print(f"  {cid:>4} {name}: {c}")


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    {"shapes": _shapes, "yolo2coco": _yolo2coco, "info": _info}[args.command](args)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """User errors (EdgeCSPError, a full disk, a bad path) are one line and exit code 2."""
    return cli.run(_main, None if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
