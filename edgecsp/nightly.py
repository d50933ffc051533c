"""python -m edgecsp.nightly --suite benchmarks/nightly.toml [--db URL] [--report DIR] [--device NAME]

The nightly on-device job: for each (model, target, precision) of the suite's matrix that this
machine can run (the rest are skipped with the reason), build or reuse the artifact, check its
accuracy against the FP32 PyTorch reference, benchmark it, store every result in the history
database (a SQLite file by default, or a SQLAlchemy URL), compare with the baseline of this
device's last runs, and write report.md (with trend plots), junit.xml and results.json.

Exit status: 0 all measured and no regression; 1 a regression or a failed job; 2 bad input
(suite, database). Scheduling from cron or CI: docs/benchmarking.md."""

from __future__ import annotations

import argparse
import sys

from edgecsp import cli
from edgecsp import options as opt


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.nightly", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=opt.existing_file(), required=True, help="suite file (e.g. benchmarks/nightly.toml)")
    parser.add_argument("--db", help="history: SQLite file path or SQLAlchemy URL "
                                     "(default: <cache>/nightly/history.sqlite)")
    parser.add_argument("--report", type=opt.OutPath(), help="report folder (default: runs/nightly/<time>)")
    parser.add_argument("--device", help="name this device in the history (default: host name + hardware hash)")
    parser.add_argument("--no-isolate", action="store_true", help="run jobs in this process (debugging)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild every artifact instead of reusing it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from dataclasses import replace

    from edgecsp.bench.nightly import run_suite
    from edgecsp.bench.suite import load_suite

    suite = load_suite(args.suite)
    if args.no_isolate or args.rebuild:
        suite = replace(suite, isolate=suite.isolate and not args.no_isolate, rebuild=suite.rebuild or args.rebuild)
    result = run_suite(suite, db=args.db, report_dir=args.report, device=args.device,
                       progress=lambda line: print(line, flush=True))
    print(f"\n{result.status.upper()}: {len(result.regressions)} regression(s), {len(result.failures)} failed "
          f"job result(s); report {result.files.get('markdown')}, JUnit {result.files.get('junit')}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(cli.run(main))
