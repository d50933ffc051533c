"""python -m edgecsp.nightly --suite benchmarks/nightly.toml [--db URL] [--report DIR] [--device-name NAME]

The nightly on-device job: for each (model, target, precision) of the suite's matrix that this
machine can run (the rest are skipped with the reason), build or reuse the artifact, check its
accuracy against the FP32 PyTorch reference, benchmark it, store every result in the history
database (a SQLite file by default, or a SQLAlchemy URL), compare with the baseline of this
device's last runs, and write report.md (with trend plots), junit.xml and results.json.

With --cluster HOST:PORT the night runs across a fleet (docs/fleet.md): the matrix goes to the
devices of a Ray cluster (python -m edgecsp.worker on each), each job to every live device of its
target, and this machine, the head, writes every result into --db as it arrives. --night names
the night (default: suite name and UTC date): rerunning the same night runs only missing jobs.

python -m edgecsp.nightly report --db URL --html DIR writes the fleet dashboard (a static site).

Progress goes to stderr; stdout gets the night's outcome line.

Exit status: 0 all measured and no regression; 1 a regression or a failed job (fleet: or a
target with no live device); 2 bad input (suite, database, cluster). Scheduling from cron or CI:
docs/benchmarking.md."""

from __future__ import annotations

import argparse
import sys

from edgecsp import cli
from edgecsp import options as opt
from edgecsp.errors import EdgeCSPError


def build_parser() -> argparse.ArgumentParser:
    parser = opt.Parser(prog="python -m edgecsp.nightly", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", type=opt.existing_file(), required=True, help="suite file (e.g. benchmarks/nightly.toml)")
    parser.add_argument("--db", help="history: SQLite file path or SQLAlchemy URL "
                                     "(default: <cache>/nightly/history.sqlite)")
    parser.add_argument("--report", type=opt.OutPath(), help="report folder (default: runs/nightly/<time>)")
    parser.add_argument("--device-name", metavar="NAME",
                        help="this device's name in the history (default: host name + hardware hash)")
    # Its name before: --device is a torch device elsewhere (train).
    parser.add_argument("--device", dest="device_name", action=cli.Renamed, new="--device-name")
    parser.add_argument("--no-isolate", action="store_true", help="run jobs in this process (debugging)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild every artifact instead of reusing it")
    parser.add_argument("--cluster", metavar="HOST:PORT", help="run across the fleet's Ray cluster (docs/fleet.md)")
    parser.add_argument("--night", help="with --cluster: the night's id (default: <suite name>-<UTC date>); "
                                        "a rerun of a night runs only its missing jobs")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from edgecsp.fleet.dashboard import main as report_main

        return report_main(argv[1:])
    args = build_parser().parse_args(argv)

    from dataclasses import replace

    from edgecsp.bench.nightly import run_suite
    from edgecsp.bench.suite import load_suite

    suite = load_suite(args.suite)
    if args.no_isolate or args.rebuild:
        suite = replace(suite, isolate=suite.isolate and not args.no_isolate, rebuild=suite.rebuild or args.rebuild)
    if args.cluster:
        from edgecsp.fleet.dispatch import run_fleet

        fleet = run_fleet(suite, args.cluster, db=args.db, night=args.night, report_dir=args.report,
                          progress=cli.say)
        print(f"{fleet.status.upper()}: night {fleet.night}, {len(fleet.outcomes)} result(s) written, "
              f"{fleet.already_done} job(s) already done, {len(fleet.regressions)} regression(s), "
              f"{len(fleet.failures)} failed"
              + (f"; no live device for {', '.join(fleet.no_device_targets)}" if fleet.no_device_targets else ""))
        return fleet.exit_code
    if args.night:
        raise EdgeCSPError("--night names a fleet night; it needs --cluster")
    result = run_suite(suite, db=args.db, report_dir=args.report, device=args.device_name, progress=cli.say)
    print(f"{result.status.upper()}: {len(result.regressions)} regression(s), {len(result.failures)} failed "
          f"job result(s); report {result.files.get('markdown')}, JUnit {result.files.get('junit')}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(cli.run(main))
