"""python -m edgecsp.benchmark (--artifact DIR | --target T [--model M] [--precision P])
       [--scenario latency|throughput|both] [--duration S] [--warmup S] [--min-queries N] [--batch N]
       [--compare torch,onnxruntime-fp32] [--accuracy] [--out DIR] [--json] [--json-out FILE]
python -m edgecsp.benchmark --artifact DIR --scenario e2e (--images DIR | --video FILE) [--duration S]

Benchmark a compiled artifact where it runs, MLPerf-style: warm-up, then at least --duration
seconds and --min-queries queries (defaults from the target profile's [benchmark] table).
Reports latency percentiles and FPS, first-inference and load time, peak memory, the model's
memory traffic and achieved GB/s against this machine's measured peak, measured memory-controller
traffic where the platform has counters, and each figure as a ratio to the --compare baselines.
Writes benchmark.json, benchmark.csv and latency/throughput/roofline PNGs to --out
(default runs/benchmark/<artifact>-<time>/). Progress goes to stderr; stdout gets the table (with
--json: the report as one JSON object, as in benchmark.json).

--scenario e2e measures what an application sees: files in, detections out, one at a time and
through detector.stream, against the engine alone on the same frames in the same run, with the
time per stage (decode, preprocess, inference, postprocess). See docs/benchmarking.md."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable  # typing's: subscriptable at run time on 3.8

from edgecsp import cli
from edgecsp import options as opt
from edgecsp.errors import EdgeCSPError


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.benchmark", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--artifact", type=opt.existing_path(), help="compiled artifact directory or .tar.gz")
    source.add_argument("--target", help="build (or reuse) the artifact for this target, then benchmark it")
    cli.add_model_options(parser, default=None,
                          help="with --target: the model to compile (default demo; a checkpoint, zoo name or Darknet "
                               ".cfg); with --artifact: its FP32 model for baselines/accuracy (default: the "
                               "manifest's source)")
    parser.add_argument("--precision", help="with --target: fp32, fp16, bf16 or int8 (default: the target's)")
    parser.add_argument("--scenario", choices=["latency", "throughput", "both", "e2e"],
                        help="default: the target profile's [benchmark] scenario; e2e: files in, detections out")
    frames = parser.add_mutually_exclusive_group()
    frames.add_argument("--images", type=opt.existing_path(), help="e2e: a folder of images to feed")
    frames.add_argument("--video", type=opt.existing_file(), help="e2e: a video file to feed")
    parser.add_argument("--max-frames", type=opt.positive_int(opt.MAX_IMAGES), help="e2e: the first N frames only")
    parser.add_argument("--workers", type=opt.positive_int(64), default=2,
                        help="e2e: decode/preprocess threads of the stream (default 2)")
    parser.add_argument("--duration", type=opt.FloatRange(0.0, 86_400.0, open_lo=True), help="minimum measured seconds (default: profile's duration_s)")
    parser.add_argument("--warmup", type=opt.FloatRange(0.0, 3_600.0), help="warm-up seconds (default: profile's warmup_s)")
    parser.add_argument("--min-queries", type=opt.positive_int(10_000_000), help="minimum measured queries (default: profile's min_queries)")
    cli.add_batch_option(parser, help="frames per query (an artifact's fixed batch must match)")
    parser.add_argument("--streams", type=opt.positive_int(256), help="throughput: parallel requests (default: the backend's best)")
    parser.add_argument("--compare", default="", help="baselines on the same model: torch, onnxruntime-fp32 (comma-separated)")
    parser.add_argument("--accuracy", action="store_true", help="also AP/AP50 against the FP32 PyTorch reference")
    parser.add_argument("--eval-images", type=opt.positive_int(opt.MAX_IMAGES), help="with --accuracy: the first N validation images only")
    parser.add_argument("--data", type=opt.existing_path(), help="validation set for inputs and accuracy (default: shapes val split)")
    cli.add_json_option(parser, "the report")
    parser.add_argument("--json-out", type=opt.OutPath(), metavar="FILE", help="also write the JSON report to FILE")
    parser.add_argument("--out", type=opt.OutPath(), help="report folder (default: runs/benchmark/<artifact>-<time>)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-platform", action="store_true", help="skip the platform peak (no %% of peak)")
    parser.add_argument("--remeasure-platform", action="store_true", help="measure the platform peak again")
    parser.add_argument("--artifacts-dir", type=opt.OutPath(), default=Path("artifacts"), help="with --target: where artifacts live")
    parser.add_argument("--quiet", action="store_true", help="no progress lines, only the table")
    cli.add_library_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_old_json_file(list(sys.argv[1:] if argv is None else argv)))

    from edgecsp.bench import report as rep
    from edgecsp.bench.run import BenchmarkOptions, run_benchmark

    if args.scenario == "e2e" or args.images or args.video:
        return _e2e(args)
    scenarios = None if args.scenario is None else (["latency", "throughput"] if args.scenario == "both"
                                                     else [args.scenario])
    model = cli.model_source(args) if args.model else None
    if model is None and (args.weights or args.names):
        raise EdgeCSPError("--weights and --names go with a Darknet .cfg --model")
    opts = BenchmarkOptions(artifact=args.artifact, target=args.target, model=model, precision=args.precision,
                            scenarios=scenarios, duration_s=args.duration, warmup_s=args.warmup,
                            min_queries=args.min_queries, batch=args.batch, streams=args.streams,
                            compare=args.compare, accuracy=args.accuracy, eval_images=args.eval_images,
                            data=args.data, platform=not args.no_platform, refresh_platform=args.remeasure_platform,
                            artifacts_dir=args.artifacts_dir, libraries=args.library)
    progress = (lambda line: None) if args.quiet else cli.say
    report = run_benchmark(opts, progress=progress)
    out = args.out or Path("runs") / "benchmark" / f"{report['artifact']['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    written = list(rep.write_all(report, out, plots=not args.no_plots).values())
    return _print_report(args, report, written, rep.format_table, progress)


def _e2e(args: argparse.Namespace) -> int:
    from edgecsp.bench import e2e
    from edgecsp.bench import report as rep

    if args.scenario != "e2e":
        raise EdgeCSPError("--images and --video go with --scenario e2e")
    if args.artifact is None:
        raise EdgeCSPError("--scenario e2e takes --artifact DIR (compile first: python -m edgecsp.compile)")
    if args.images is None and args.video is None:
        raise EdgeCSPError("--scenario e2e needs --images DIR or --video FILE")
    opts = e2e.E2EOptions(artifact=args.artifact, images=args.images, video=args.video,
                          duration_s=args.duration if args.duration is not None else 10.0,
                          warmup_s=args.warmup if args.warmup is not None else 1.0, max_frames=args.max_frames,
                          workers=args.workers, batch=args.batch, libraries=args.library)
    progress = (lambda line: None) if args.quiet else cli.say
    report = e2e.run_e2e(opts, progress=progress)
    out = args.out or Path("runs") / "benchmark" / f"{report['artifact']['name']}-e2e-{time.strftime('%Y%m%d-%H%M%S')}"
    written = [rep.write_json(report, Path(out) / "benchmark-e2e.json")]
    return _print_report(args, report, written, e2e.format_table, progress)


def _print_report(args: argparse.Namespace, report: dict, written: list[Path],
                  table: Callable[[dict], str], progress: Callable[[str], None]) -> int:
    """The result on stdout (the table, or with --json the report), the files written after it;
    --json-out FILE adds a copy of the JSON report."""
    from edgecsp.bench import report as rep

    if args.json_out:
        written.append(rep.write_json(report, args.json_out))
    files = f"report: {', '.join(str(p) for p in written)}"
    if args.json:
        print(json.dumps(report, default=str))
        progress(files)
    else:
        print(table(report))
        print(f"\n{files}")
    return 0


def _old_json_file(argv: list[str]) -> list[str]:
    """``--json FILE``, this command's spelling before --json meant the same in every command, as
    ``--json-out FILE`` with a warning (the command takes no positional argument it could be)."""
    out = []
    for i, arg in enumerate(argv):
        old = arg.startswith("--json=") or (arg == "--json" and i + 1 < len(argv) and not argv[i + 1].startswith("-"))
        if old:
            print("warning: --json FILE is now --json-out FILE (--json alone prints the report on stdout)",
                  file=sys.stderr)
            arg = "--json-out" + arg[len("--json"):]
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(cli.run(main))
