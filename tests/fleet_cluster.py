"""The fleet test's cluster, run by tests/test_fleet.py inside a network namespace of its own
(``unshare -n``, only loopback): a PostgreSQL server, a Ray head and four worker nodes on
127.0.0.1, nightly runs with faults injected. It writes what happened to <work>/facts.json; the
test asserts on it.

usage: python tests/fleet_cluster.py WORK_DIR
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pgserver

PY = sys.executable
RAY = str(Path(PY).with_name("ray"))
PORT = 6379  # the namespace is ours: no other Ray listens here
SMALL = ["--object-store-memory=100000000"]

SUITE = """
[suite]
name = "fleet-test"
models = ["demo"]
targets = ["onnxruntime", "jetson-orin-nano", "intel-cpu"]
precisions = ["fp32"]
scenarios = ["latency"]
eval_images = 4
job_timeout_s = {timeout}

[benchmark]
duration_s = {duration}
warmup_s = 0.1
min_queries = 5

[fleet]
placement = "{placement}"
on_device_lost = "{on_lost}"

[baseline]
min_runs = 1
"""

procs: dict[str, subprocess.Popen] = {}
log_dir: Path


def start(name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
    """A node in its own session, so killing its process group kills the node (raylet and workers)."""
    with open(log_dir / f"{name}.log", "ab") as log:  # the node keeps its own copy of the descriptor
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, **(env or {})})
    procs[name] = p
    return p


def wait_nodes(n: int, timeout: float = 120) -> None:
    import ray

    ray.init(address=f"127.0.0.1:{PORT}", logging_level="warning", log_to_driver=False)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(1 for x in ray.nodes() if x["Alive"]) >= n:
                return
            time.sleep(0.5)
        raise RuntimeError(f"only {sum(1 for x in ray.nodes() if x['Alive'])} of {n} Ray nodes came up")
    finally:
        ray.shutdown()


NODES = ("builder", "x86-a", "x86-b", "orin-sim")


def ports(name: str) -> list[str]:
    """Several nodes on one address: each needs its own ports (some of Ray's defaults are fixed)."""
    base = 20000 + 200 * NODES.index(name)
    return [f"--node-manager-port={base + 1}", f"--object-manager-port={base + 2}",
            f"--dashboard-agent-grpc-port={base + 3}", f"--dashboard-agent-listen-port={base + 4}",
            f"--metrics-export-port={base + 5}", f"--runtime-env-agent-port={base + 6}",
            f"--min-worker-port={base + 10}", f"--max-worker-port={base + 199}"]


def worker(name: str, *args: str) -> None:
    start(name, [PY, "-m", "edgecsp.worker", "--head", f"127.0.0.1:{PORT}", "--name", name,
                 "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--block", *args, "--", *SMALL, *ports(name)])


def kill(name: str) -> None:
    p = procs.pop(name)
    os.killpg(p.pid, signal.SIGKILL)  # as a power cut or the OOM killer would
    p.wait()


def nightly(work: Path, db: str, night: str, suite: Path, tag: str) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "edgecsp.nightly", "--suite", str(suite), "--cluster", f"127.0.0.1:{PORT}",
                             "--db", db, "--night", night, "--report", str(work / tag)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_line(p: subprocess.Popen, needle: str, lines: list[str], timeout: float = 300) -> str:
    deadline = time.time() + timeout
    assert p.stdout is not None
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if needle in line:
            return line
    raise RuntimeError(f"no line with {needle!r} from the nightly:\n" + "\n".join(lines[-40:]))


def finish(p: subprocess.Popen, lines: list[str], timeout: float = 300) -> int:
    out, _ = p.communicate(timeout=timeout)
    lines += out.splitlines()
    return p.returncode


def rows(db: str, night: str) -> list[dict]:
    from edgecsp.bench.history import History

    with History(db) as h:
        return [{k: r[k] for k in ("id", "device", "job", "status", "fps", "latency_p99_ms", "ap50", "error",
                                   "details")} for r in h.night_results(night)]


def suite_file(work: Path, tag: str, **kw) -> Path:
    values = {"timeout": 300, "duration": 0.3, "placement": "every-device", "on_lost": "fail", **kw}
    path = work / f"{tag}.toml"
    path.write_text(SUITE.format(**values))
    return path


def main() -> None:
    global log_dir
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a test timeout still stops every node
    work = Path(sys.argv[1])
    log_dir = work / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    facts: dict = {"timings": {}}
    t0 = time.time()
    ray_tmp = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    # Fast death detection: a killed node is declared dead after ~3 s instead of ~30 s.
    os.environ.update(RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                      RAY_health_check_failure_threshold="3", RAY_USAGE_STATS_ENABLED="0")
    try:
        with pgserver.postgres() as db:
            facts["db"] = db
            start("head", [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={PORT}", "--num-cpus=0",
                           "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={ray_tmp}", "--block",
                           *SMALL])
            wait_nodes(1)
            # One at a time: nodes starting together on one address race for ports.
            worker("builder", "--only-build")
            wait_nodes(2)
            worker("x86-a", "--target", "onnxruntime", "--no-build")
            wait_nodes(3)
            worker("x86-b", "--target", "onnxruntime", "--no-build")
            wait_nodes(4)
            worker("orin-sim", "--target", "jetson-orin-nano", "--tensorrt-standin", "onnxruntime", "--no-build")
            wait_nodes(5)
            facts["timings"]["cluster_up_s"] = time.time() - t0
            facts["worker_logs"] = {n: (log_dir / f"{n}.log").read_text()[:3000] for n in ("x86-a", "orin-sim")}

            # Night 1: every job on every device of its target; intel-cpu has no device.
            t = time.time()
            lines: list[str] = []
            p = nightly(work, db, "n1", suite_file(work, "n1"), "n1")
            facts["n1"] = {"rc": finish(p, lines), "out": lines, "rows": rows(db, "n1")}
            facts["timings"]["n1_s"] = time.time() - t

            # Night 2: the head (the nightly process) is killed after its first result, then rerun.
            t = time.time()
            lines = []
            suite2 = suite_file(work, "n2", duration=1.0)
            p = nightly(work, db, "n2", suite2, "n2")
            wait_line(p, " FPS", lines)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            before = rows(db, "n2")
            lines2: list[str] = []
            p = nightly(work, db, "n2", suite2, "n2b")
            facts["n2"] = {"out_killed": lines, "rows_at_kill": before, "rc": finish(p, lines2), "out": lines2,
                           "rows": rows(db, "n2")}
            facts["timings"]["n2_s"] = time.time() - t

            # Night 3: a device is SIGKILLed mid-job; one-device placement retries its job elsewhere.
            t = time.time()
            lines = []
            p = nightly(work, db, "n3", suite_file(work, "n3", duration=8.0, placement="one-device",
                                                   on_lost="retry"), "n3")
            line = wait_line(p, "run demo/onnxruntime/fp32 on x86-", lines)
            victim = line.strip().split(" on ")[-1].split()[0]
            time.sleep(2)  # inside the benchmark
            kill(victim)
            facts["n3"] = {"victim": victim, "rc": finish(p, lines), "out": lines, "rows": rows(db, "n3")}
            facts["timings"]["n3_s"] = time.time() - t

            # Night 4: the same with every-device placement and no retry: that job fails, the rest finish.
            t = time.time()
            worker(victim, "--target", "onnxruntime", "--no-build")
            wait_nodes(5)
            lines = []
            p = nightly(work, db, "n4", suite_file(work, "n4", duration=8.0), "n4")
            wait_line(p, f"run demo/onnxruntime/fp32 on {victim}", lines)
            time.sleep(2)
            kill(victim)
            facts["n4"] = {"victim": victim, "rc": finish(p, lines), "out": lines, "rows": rows(db, "n4")}
            facts["timings"]["n4_s"] = time.time() - t

            # Night 5: a job timeout shorter than the jobs: the head cancels each job on its device.
            t = time.time()
            lines = []
            p = nightly(work, db, "n5", suite_file(work, "n5", duration=10.0, timeout=3), "n5")
            facts["n5"] = {"rc": finish(p, lines), "out": lines, "rows": rows(db, "n5")}
            facts["timings"]["n5_s"] = time.time() - t

            html = work / "site"
            r = subprocess.run([PY, "-m", "edgecsp.nightly", "report", "--db", db, "--html", str(html)],
                               check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            facts["report"] = {"rc": r.returncode, "out": r.stdout}
    except Exception as err:  # noqa: BLE001 - the test reports it with the logs
        import traceback

        facts["error"] = f"{err}\n{traceback.format_exc()}"
    finally:
        for name in list(procs):
            try:
                os.killpg(procs[name].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        facts["timings"]["total_s"] = time.time() - t0
        (work / "facts.json").write_text(json.dumps(facts, indent=1, default=str))
        if "error" in facts:
            facts["ray_logs"] = ray_tmp  # kept for a look
        else:
            import shutil

            shutil.rmtree(ray_tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
