"""python -m edgecsp.compile --target T [--model CKPT] [--precision P] [--calibration RECIPE] [--data VAL] [--out DIR]

Export, calibrate, compile and verify a detector for a target device. The result is an
artifact directory (and its .tar.gz) with the engine files and manifest.json. The steps are
reported on stderr; stdout gets the artifact's directory (with --json: its manifest)."""

from __future__ import annotations

import argparse
import json
import sys

from edgecsp import cli
from edgecsp import options as opt
from edgecsp.errors import EdgeCSPError


def build_parser() -> argparse.ArgumentParser:
    from edgecsp.targets import list_targets

    parser = opt.Parser(prog="python -m edgecsp.compile", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help=f"profile name ({', '.join(list_targets())}) or a .toml path")
    cli.add_model_options(parser)
    parser.add_argument("--precision", help="fp32, fp16, bf16 or int8 (default: the target's)")
    parser.add_argument("--calibration", help="calibration recipe name (calibration/*.toml) or path (default: default)")
    parser.add_argument("--data", type=opt.existing_path(), help="validation set for the accuracy check (default: shapes val split)")
    parser.add_argument("--out", type=opt.OutPath(), help="artifact directory (default: artifacts/<model>-<target>-<precision>)")
    cli.add_batch_option(parser, dynamic=True, help="engine batch: N or 'dynamic' (default: the target's)")
    parser.add_argument("--verify-images", type=opt.positive_int(opt.MAX_IMAGES), help="verify on the first N validation images only")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the accuracy check; the manifest then says accuracy status 'unverified' and "
                             "edgecsp.load warns about it")
    parser.add_argument("--allow-accuracy-drop", action="store_true",
                        help="keep the artifact even if its AP50 drop exceeds the target's tolerance (or the FP32 "
                             "reference detects nothing on the data); the manifest's accuracy status says so")
    parser.add_argument("--sign", type=opt.existing_file(), metavar="KEY",
                        help="sign the artifact with this Ed25519 private key (python -m edgecsp.verify --keygen DIR); "
                             "devices check it with edgecsp.load(..., trusted_keys=...) or python -m edgecsp.verify")
    cli.add_json_option(parser, "the artifact's manifest")
    parser.add_argument("--nms", action="store_true",
                        help="also in-graph NMS where the backend has it (TensorRT: EfficientNMS plugin)")
    parser.add_argument("--from-bundle", type=opt.existing_dir(), metavar="DIR",
                        help="on the device: build the TensorRT engine of a Jetson bundle (docs/jetson.md)")
    parser.add_argument("--stand-in", choices=["onnxruntime"],
                        help="with --from-bundle where there is no TensorRT (CI, rehearsals): build no engine, run "
                             "the model TensorRT would build with ONNX Runtime; the artifact says so")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = cli.say

    if args.stand_in and args.from_bundle is None:
        raise EdgeCSPError("--stand-in goes with --from-bundle DIR (it stands in for the engine build on the device)")
    if args.from_bundle is not None:  # Jetson: engine from a bundle compiled elsewhere
        from edgecsp.backends.tensorrt.bundle import build_from_bundle

        out, manifest = build_from_bundle(args.from_bundle, target=args.target, out=args.out, data=args.data,
                                          verify_images=100 if args.verify_images is None else args.verify_images,
                                          allow_accuracy_drop=args.allow_accuracy_drop, progress=progress,
                                          verify=not args.no_verify, sign=args.sign, stand_in=args.stand_in)
        _print_result(out, manifest, args.json)
        return 0

    from edgecsp.models.checkpoint import check_model_source
    from edgecsp.pipeline import CompileOptions, compile_artifact

    check_model_source(cli.model_source(args))  # a missing checkpoint is refused before any work (step lines)
    opts = CompileOptions(target=args.target, model=cli.model_source(args), precision=args.precision, calibration=args.calibration,
                          data=args.data, out=args.out, allow_accuracy_drop=args.allow_accuracy_drop, batch=args.batch,
                          verify_images=args.verify_images, nms=args.nms, verify=not args.no_verify,
                          sign=args.sign)
    out, manifest = compile_artifact(opts, progress=progress)
    _print_result(out, manifest, args.json)
    return 0


def _print_result(out, manifest: dict, as_json: bool) -> None:
    """The result on stdout: the artifact's directory, or its manifest with --json."""
    print(json.dumps(manifest, indent=1) if as_json else out)


if __name__ == "__main__":
    sys.exit(cli.run(main))
