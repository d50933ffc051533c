"""How far one head goes: a simulated fleet night (docs/fleet.md, "Scaling").

    python benchmarks/fleet_scale.py [--devices 100] [--jobs 50] [--targets 5] [--builders 4]
                                     [--build-s 40] [--run-s 90] [--artifact-mb 30] [--nights 14]
                                     [--db URL]

Two parts:
1. The schedule, simulated: the head's policy (each artifact built once, builds queued over the
   builders; each device runs its own jobs one at a time as their artifacts become ready) as a
   discrete-event simulation with the given build and run times: how long the night takes, how many
   bytes the object store moves, how many rows the history gets. No Ray here: Ray's own cost per
   task (milliseconds) is far below the minutes a job takes.
2. The head's database and dashboard, measured: write --nights nights of the fleet's result rows
   through edgecsp.bench.history (one commit per row, as the head does), then build the dashboard
   from them; prints rows/s and the dashboard's seconds. --db: a SQLAlchemy URL (PostgreSQL for the
   real thing; default a temporary SQLite file).
"""

from __future__ import annotations

import argparse
import heapq
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def simulate(devices: int, jobs: int, targets: int, builders: int, build_s: float, run_s: float) -> dict:
    """Makespan of one night under the head's policy (all times in seconds)."""
    # Each target's devices share that target's `jobs` artifacts; each artifact is built once.
    per_target = [devices // targets + (1 if t < devices % targets else 0) for t in range(targets)]
    builds = [(t, j) for j in range(jobs) for t in range(targets)]  # interleaved: every target starts early
    free = [0.0] * builders
    ready = {}
    for b in builds:
        start = heapq.heappop(free)
        ready[b] = start + build_s
        heapq.heappush(free, start + build_s)
    end = 0.0
    for t, n in enumerate(per_target):
        for _ in range(n):  # each device runs its target's jobs in order, one at a time
            clock = 0.0
            for j in range(jobs):
                clock = max(clock, ready[(t, j)]) + run_s
            end = max(end, clock)
    return {"jobs": devices * jobs, "builds": len(builds), "night_s": end, "last_build_s": max(ready.values())}


def measure_history(url: str, devices: int, jobs: int, nights: int, scenarios: int) -> dict:
    from edgecsp.bench.history import History, Record
    from edgecsp.fleet.dashboard import collect, write_site

    out = {}
    with History(url) as h:
        t0 = time.perf_counter()
        rows = 0
        for n in range(nights):
            for d in range(devices):
                run = h.start_run(f"dev-{d:03d}", "scale", {"device": {"name": f"dev-{d:03d}"}}, night=f"night-{n:02d}")
                for j in range(jobs):
                    for s in range(scenarios):
                        h.record(run, f"dev-{d:03d}", Record(
                            job=f"model{j % 10}/target{d % 5}/p{j // 10}/sc{s}", status="ok", model=f"model{j % 10}",
                            target=f"target{d % 5}", precision=f"p{j // 10}", scenario=f"sc{s}",
                            fps=100.0 + (n * 7 + d + j) % 13, latency_p99_ms=10.0, ap50=0.9, achieved_gbs=1.0))
                        rows += 1
                h.finish_run(run, "ok")
        out["rows"] = rows
        out["write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        data = collect(h, nights=nights)
        out["collect_s"] = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as site:
        t0 = time.perf_counter()
        files = write_site(data, Path(site))
        out["site_s"] = time.perf_counter() - t0
        out["site_mb"] = sum(f.stat().st_size for f in files) / 1e6
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--jobs", type=int, default=50, help="jobs per device (model x precision x ... of its target)")
    p.add_argument("--targets", type=int, default=5)
    p.add_argument("--builders", type=int, default=4)
    p.add_argument("--build-s", type=float, default=40.0, help="seconds to build one artifact or bundle")
    p.add_argument("--run-s", type=float, default=90.0, help="seconds one job takes on its device")
    p.add_argument("--artifact-mb", type=float, default=30.0, help="bytes sent per job (the packed artifact)")
    p.add_argument("--scenarios", type=int, default=2)
    p.add_argument("--nights", type=int, default=14, help="nights written in the measured part (0: skip it)")
    p.add_argument("--db", help="SQLAlchemy URL for the measured part (default: a temporary SQLite file)")
    args = p.parse_args()

    sim = simulate(args.devices, args.jobs, args.targets, args.builders, args.build_s, args.run_s)
    print(f"simulated night: {args.devices} devices x {args.jobs} jobs = {sim['jobs']} jobs, {sim['builds']} builds "
          f"on {args.builders} builders (last ready at {sim['last_build_s'] / 60:.1f} min); night takes "
          f"{sim['night_s'] / 3600:.2f} h; artifacts moved {sim['jobs'] * args.artifact_mb / 1e3:.1f} GB; "
          f"history rows {sim['jobs'] * args.scenarios} per night")
    if args.nights:
        with tempfile.TemporaryDirectory() as tmp:
            url = args.db or f"sqlite:///{tmp}/scale.sqlite"
            m = measure_history(url, args.devices, args.jobs, args.nights, args.scenarios)
        print(f"history: {m['rows']} rows ({args.nights} nights) written one commit each in {m['write_s']:.1f} s "
              f"({m['rows'] / m['write_s']:.0f} rows/s); dashboard: collect {m['collect_s']:.1f} s, write "
              f"{m['site_s']:.1f} s, {m['site_mb']:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
