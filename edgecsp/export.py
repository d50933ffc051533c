"""python -m edgecsp.export [--model CKPT|demo|NAME|X.cfg --weights X.weights] [--format onnx|darknet] [--out PATH]
                          [--opset N] [--batch 1|dynamic] [--nms [--iou T] [--score T] [--max-det N]]
                          [--input-size N] [--no-simplify]

--format onnx (default) exports a detector to ONNX (input "images", output "predictions", or
"detections" + "num_detections" with --nms; see docs/onnx-contract.md), checks it against PyTorch
on real validation images and writes the file only when the check passes.

--format darknet writes the detector as Darknet files OUT/<name>.cfg, .weights and .names (OUT is
a folder, default the current one): a zoo detector as the Darknet layers that compute it, a model
built or trained from a cfg as its own cfg. The files are read back as edgecsp reads any Darknet
model and written only when they give the model's outputs on real validation images."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecsp import cli
from edgecsp import options as opt
from edgecsp.errors import EdgeCSPError
from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE

# ONNX-only options and their defaults: given with --format darknet they are refused, not ignored.
_ONNX_ONLY = {"opset": 17, "batch": 1, "nms": False, "iou": DEFAULT_IOU, "score": DEFAULT_SCORE, "max_det": 100,
              "no_simplify": False}


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.export", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_model_options(parser)
    parser.add_argument("--format", choices=("onnx", "darknet"), default="onnx",
                        help="onnx (default): one .onnx file; darknet: <name>.cfg, .weights and .names in the --out folder")
    parser.add_argument("--out", type=opt.OutPath(),
                        help="output: the .onnx file (default model.onnx), or with --format darknet the folder "
                             "(default: the current folder)")
    parser.add_argument("--opset", type=opt.IntRange(11, 20), help="ONNX opset, 11 to 20 (default 17)")
    cli.add_batch_option(parser, dynamic=True, help="fixed batch size or 'dynamic' (default 1)")
    parser.add_argument("--input-size", type=opt.InputSize(), help="square input size (default: the model's own)")
    parser.add_argument("--nms", action="store_true", help="end the graph in NonMaxSuppression: fixed-size detections")
    cli.add_threshold_options(parser, "with --nms", defaults=False)
    parser.add_argument("--max-det", type=opt.positive_int(10_000), help="detections per image with --nms (default 100)")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    cli.add_json_option(parser, "the report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.format == "darknet":
        given = [k for k in _ONNX_ONLY if getattr(args, k) is not None and getattr(args, k) is not False]
        if given:
            raise EdgeCSPError(f"--{given[0].replace('_', '-')} is an ONNX export option; --format darknet writes "
                               "a .cfg and .weights (drop it, or use --format onnx)")
    for key, default in _ONNX_ONLY.items():
        if getattr(args, key) is None:
            setattr(args, key, default)

    from edgecsp.models.checkpoint import resolve_model

    model, description = resolve_model(cli.model_source(args))
    if args.format == "darknet":
        from edgecsp.darknet.writer import export_darknet

        out = args.out if args.out is not None else Path(".")
        if out.exists() and not out.is_dir():
            raise EdgeCSPError(f"--out {out} is a file; --format darknet writes three files into a folder")
        darknet = export_darknet(model, description, out, input_size=args.input_size)
        lines, data = darknet.lines(), darknet.as_dict()
    else:
        from edgecsp.onnx_writer import NMSOptions, export_onnx

        options = NMSOptions(iou=args.iou, score=args.score, max_det=args.max_det) if args.nms else None
        opt.check_batch_pixels(args.batch, args.input_size or model.config.input_size)
        report = export_onnx(model, args.out or Path("model.onnx"), opset=args.opset, batch=args.batch,
                             input_size=args.input_size, nms=args.nms, nms_options=options,
                             simplify=not args.no_simplify, description=description)
        lines, data = report.lines(), report.as_dict()
    print(json.dumps(data) if args.json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
