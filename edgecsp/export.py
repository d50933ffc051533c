"""python -m edgecsp.export [--model CKPT|demo|NAME] [--out model.onnx] [--opset N] [--batch 1|dynamic]
                          [--nms [--iou T] [--score T] [--max-det N]] [--input-size N] [--no-simplify]

Exports a detector to ONNX (input "images", output "predictions", or "detections" +
"num_detections" with --nms; see docs/onnx-contract.md), checks it against PyTorch on real
validation images and writes the file only when the check passes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgecsp import cli
from edgecsp import options as opt


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.export", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="checkpoint path, zoo detector name, or 'demo' (default)")
    parser.add_argument("--out", type=opt.OutPath(), default=Path("model.onnx"), help="output file (default model.onnx)")
    parser.add_argument("--opset", type=opt.IntRange(11, 20), default=17, help="ONNX opset, 11 to 20 (default 17)")
    parser.add_argument("--batch", type=opt.Batch(), default=1, help="fixed batch size or 'dynamic' (default 1)")
    parser.add_argument("--input-size", type=opt.InputSize(), help="square input size (default: the model's own)")
    parser.add_argument("--nms", action="store_true", help="end the graph in NonMaxSuppression: fixed-size detections")
    parser.add_argument("--iou", type=opt.probability(), default=0.5, help="NMS IoU threshold (default 0.5)")
    parser.add_argument("--score", type=opt.probability(), default=0.25, help="NMS score threshold (default 0.25)")
    parser.add_argument("--max-det", type=opt.positive_int(10_000), default=100,
                        help="detections per image with --nms (default 100)")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from edgecsp.models.checkpoint import resolve_model
    from edgecsp.onnx_export import NMSOptions, export_onnx

    options = NMSOptions(iou=args.iou, score=args.score, max_det=args.max_det) if args.nms else None
    model, description = resolve_model(args.model)
    opt.check_batch_pixels(args.batch, args.input_size or model.config.input_size)
    report = export_onnx(model, args.out, opset=args.opset, batch=args.batch, input_size=args.input_size,
                         nms=args.nms, nms_options=options, simplify=not args.no_simplify, description=description)
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print("\n".join(report.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
