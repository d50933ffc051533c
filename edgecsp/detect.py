"""python -m edgecsp.detect [--model CKPT] IMAGE... --out DIR

Writes each image with its boxes, class names and scores drawn, plus detections.json. Progress
goes to stderr; stdout gets what was written (with --json: the detections, as in detections.json)."""

from __future__ import annotations

import argparse
import json
import sys

from edgecsp import cli
from edgecsp import options as opt

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def draw(image, det, class_names):
    from PIL import Image, ImageDraw

    im = Image.fromarray(image)
    pen = ImageDraw.Draw(im)
    for box, score, label in zip(det.boxes, det.scores, det.labels):
        color = PALETTE[int(label) % len(PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in box)
        pen.rectangle([x1, y1, x2, y2], outline=color, width=2)
        text = f"{class_names[int(label)]} {score:.2f}"
        tw = pen.textlength(text)
        pen.rectangle([x1, max(0, y1 - 12), x1 + tw + 4, max(12, y1)], fill=color)
        pen.text((x1 + 2, max(0, y1 - 12)), text, fill=(0, 0, 0))
    return im


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.detect", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=opt.existing_file(), metavar="IMAGE")
    cli.add_model_options(parser)
    parser.add_argument("--out", type=opt.OutPath(), required=True, help="folder for the drawn images")
    cli.add_threshold_options(parser)
    cli.add_json_option(parser, "the detections")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from edgecsp.data.preprocess import letterbox, load_image_rgb, to_tensor_batch
    from edgecsp.evaluation import torch_predict_fn
    from edgecsp.models.checkpoint import resize_of, resolve_model
    from edgecsp.postprocess import postprocess

    model, description = resolve_model(cli.model_source(args))
    names = description["class_names"]
    predict = torch_predict_fn(model)
    images = [(path, load_image_rgb(path)) for path in args.images]  # fail on a bad path before writing
    args.out.mkdir(parents=True, exist_ok=True)
    report = []
    for path, image in images:
        lb, info = letterbox(image, model.config.input_size, mode=resize_of(model))
        det = postprocess(predict(to_tensor_batch([lb]))[0], info, args.score, args.iou)
        draw(image, det, names).save(args.out / f"{path.stem}.png")
        report.append({"image": str(path), "detections": [
            {"box_xyxy": [round(float(v), 2) for v in b], "score": round(float(s), 4), "class": names[int(c)]}
            for b, s, c in zip(det.boxes, det.scores, det.labels)]})
        cli.say(f"{path}: {len(det)} detections")
    (args.out / "detections.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report) if args.json else f"wrote {len(report)} images and detections.json to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
