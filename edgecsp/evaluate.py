"""python -m edgecsp.evaluate (--model CKPT_OR_NAME | --artifact DIR) [--data DIR] [--json]

COCO AP, AP50, AP75 and per-class AP50 (pycocotools) of a checkpoint, a zoo detector, the
built-in demo detector (``--model demo``, the default) or a compiled artifact (any backend)."""

from __future__ import annotations

import argparse
import json
import sys

from edgecsp import cli
from edgecsp import options as opt
from edgecsp.errors import EdgeCSPError


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.evaluate", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    cli.add_model_options(parser, group=source)
    source.add_argument("--artifact", type=opt.existing_path(), help="compiled artifact directory or .tar.gz")
    parser.add_argument("--data", type=opt.existing_path(), help="directory with annotations.json (or instances_*.json) and images/")
    parser.add_argument("--annotations", type=opt.existing_file(), help="COCO annotations JSON (overrides --data's)")
    parser.add_argument("--images", type=opt.existing_dir(), help="image folder (overrides --data's)")
    parser.add_argument("--input-size", type=opt.InputSize(), help="override the model's input size")
    cli.add_batch_option(parser, default=8, help="images per forward pass (default 8)")
    cli.add_library_option(parser)
    cli.add_json_option(parser, "the metrics")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from edgecsp.coco_eval import check_classes, evaluate, torch_predict_fn
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.models.checkpoint import resize_of, resolve_model

    if args.annotations is None:
        from edgecsp.data.shapes import validation_data

        args.data = validation_data(args.data)
    dataset = resolve_dataset(args.data, args.annotations, args.images)
    if args.artifact is not None:
        import edgecsp

        predictor = edgecsp.load(args.artifact, **({"libraries": args.library} if args.library else {}))
        if args.input_size and args.input_size != predictor.input_size:
            raise EdgeCSPError(f"the artifact was built for input {predictor.input_size}; drop --input-size")
        size, predict, resize = predictor.input_size, predictor.predict_batch, predictor.resize
        if predictor.class_names and len(predictor.class_names) != dataset.num_classes:
            raise EdgeCSPError(f"the artifact has {len(predictor.class_names)} classes, {dataset.annotations_path} "
                               f"has {dataset.num_classes}")
        check_classes(predictor.class_names, dataset, f"artifact {args.artifact}")
    else:
        model, description = resolve_model(cli.model_source(args), num_classes=dataset.num_classes)
        check_classes(list(description["class_names"]), dataset, f"model {args.model}")
        size, predict = args.input_size or model.config.input_size, torch_predict_fn(model)
        resize = resize_of(model)
    opt.check_batch_pixels(args.batch, size)
    metrics = evaluate(predict, dataset, size, args.batch, progress=not args.json, resize=resize)
    metrics["model"] = str(args.artifact) if args.artifact else args.model
    metrics["input_size"] = size
    print_metrics(metrics, args.json)
    return 0


def print_metrics(metrics: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(metrics))
        return
    print(f"AP {metrics['AP']:.4f}   AP50 {metrics['AP50']:.4f}   AP75 {metrics['AP75']:.4f}   "
          f"({metrics.get('images', '?')} images, {metrics['detections']} detections)")
    for name, ap50 in metrics["per_class"].items():
        print(f"  {name:<12} AP50 {ap50:.4f}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
