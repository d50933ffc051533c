"""The fleet nightly on a real local Ray cluster and a real PostgreSQL server (tests/fleet_cluster.py,
run in a network namespace of its own where only loopback exists): a head, a builder and three
devices (two ``onnxruntime`` x86 workers, one ``jetson-orin-nano`` worker whose bundle runs with
ONNX Runtime standing in for TensorRT); four nights with faults injected."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pgserver
import pytest
from fleetenv import need
from testpaths import REPO

HERE = REPO / "tests"  # where fleet_cluster.py lives
SERVES = {"x86-a": {"onnxruntime"}, "x86-b": {"onnxruntime"}, "orin-sim": {"jetson-orin-nano"}}


def cluster_missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install -e '.[fleet]')"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare and ip (util-linux, iproute2) are needed for the cluster's network namespace"
    if os.geteuid() != 0:
        return "the cluster test makes a network namespace: it runs as root (as .ci/run does)"
    return pgserver.missing()


@pytest.fixture(scope="module")
def facts(tmp_path_factory) -> dict:
    need(cluster_missing())
    work = tmp_path_factory.mktemp("fleet")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    cmd = f"ip link set lo up && exec {sys.executable} {HERE / 'fleet_cluster.py'} {work}"
    proc = subprocess.run(["unshare", "-n", "sh", "-c", cmd], check=False, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    path = work / "facts.json"
    assert path.exists(), proc.stdout[-5000:]
    data = json.loads(path.read_text())
    if "error" in data:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((work / "logs").glob("*.log")))
        pytest.fail(f"the cluster script failed: {data['error']}\n{logs}")
    print("fleet cluster timings:", data["timings"])
    data["work"] = str(work)
    return data


def by_device_job(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["device"], r["job"]), []).append(r)
    return out


def test_every_job_runs_on_every_device_of_its_target_and_a_target_without_one_is_reported(facts):
    n1 = facts["n1"]
    rows = by_device_job(n1["rows"])
    assert set(rows) == {("x86-a", "demo/onnxruntime/fp32/latency"), ("x86-b", "demo/onnxruntime/fp32/latency"),
                         ("orin-sim", "demo/jetson-orin-nano/fp32/latency"),
                         ("(no live device)", "demo/intel-cpu/fp32/latency")}, n1["out"]
    for (device, job), [r] in rows.items():
        if device == "(no live device)":
            assert r["status"] == "no-device" and "no live device serves target intel-cpu" in r["error"]
            continue
        assert r["status"] == "ok", r
        assert job.split("/")[1] in SERVES[device]  # the job ran on a node that holds its target
        details = json.loads(r["details"])
        assert details["ran_on"] == device  # the node itself says who it is
        assert r["fps"] > 0 and r["latency_p99_ms"] > 0 and 0 <= r["ap50"] <= 1
    orin = json.loads(rows[("orin-sim", "demo/jetson-orin-nano/fp32/latency")][0]["details"])
    assert orin["engine"].startswith("onnxruntime (stand-in for TensorRT")
    assert orin["facts"]["backend"] == "tensorrt" and orin["facts"]["builder"] == "builder"  # built once, elsewhere
    assert n1["rc"] == 1  # intel-cpu had no device: the night is not clean
    assert any("no live device for intel-cpu" in line for line in n1["out"])


def test_a_head_killed_mid_night_and_restarted_runs_only_the_missing_jobs(facts):
    n2 = facts["n2"]
    at_kill = {(r["device"], r["job"]) for r in n2["rows_at_kill"] if r["status"] == "ok"}
    assert at_kill, "the head was killed before any result was written"
    rows = by_device_job(n2["rows"])
    for key in at_kill:
        assert len(rows[key]) == 1, key  # not run again
    assert {r["id"] for r in n2["rows_at_kill"]} <= {r["id"] for r in n2["rows"]}  # nothing lost
    done = {k for k, rs in rows.items() if any(r["status"] == "ok" for r in rs)}
    assert done == {("x86-a", "demo/onnxruntime/fp32/latency"), ("x86-b", "demo/onnxruntime/fp32/latency"),
                    ("orin-sim", "demo/jetson-orin-nano/fp32/latency")}
    assert any("already recorded: not run again" in line for line in n2["out"]), n2["out"]


def test_a_device_killed_mid_job_is_retried_once_on_another_device(facts):
    n3 = facts["n3"]
    victim = n3["victim"]
    other = ({"x86-a", "x86-b"} - {victim}).pop()
    ok = [r for r in n3["rows"] if r["job"] == "demo/onnxruntime/fp32/latency" and r["status"] == "ok"]
    assert [r["device"] for r in ok] == [other], n3["out"]
    assert json.loads(ok[0]["details"])["retry_of"] == victim
    assert any(f"device lost ({victim})" in line for line in n3["out"])
    orin = [r for r in n3["rows"] if r["device"] == "orin-sim"]
    assert [r["status"] for r in orin] == ["ok"]  # the rest went on


def test_a_device_killed_mid_job_fails_that_job_and_the_others_finish(facts):
    n4 = facts["n4"]
    victim = n4["victim"]
    rows = by_device_job(n4["rows"])
    [lost] = rows[(victim, "demo/onnxruntime/fp32/latency")]
    assert lost["status"] == "failed" and lost["error"].startswith("device lost"), lost
    for device in {"x86-a", "x86-b", "orin-sim"} - {victim}:
        job = "demo/jetson-orin-nano/fp32/latency" if device == "orin-sim" else "demo/onnxruntime/fp32/latency"
        assert [r["status"] for r in rows[(device, job)]] == ["ok"]
    assert n4["rc"] == 1


def test_the_head_enforces_job_timeouts_on_every_device(facts):
    n5 = facts["n5"]
    live = {"x86-a", "x86-b", "orin-sim"} - {facts["n4"]["victim"]}
    rows = [r for r in n5["rows"] if r["device"] != "(no live device)"]
    assert {r["device"] for r in rows} == live, n5["out"]
    for r in rows:
        assert r["status"] == "failed" and r["error"] == "timed out after 3 s (suite job_timeout_s)", r


def test_the_dashboard_is_written_from_the_postgresql_history(facts):
    assert facts["report"]["rc"] == 0, facts["report"]["out"]
    data = json.loads((Path(facts["work"]) / "site" / "data.json").read_text())
    assert data["last_night"] == "n5"
    statuses = {(r["device"], r["job"]): r["status"] for r in data["rows"]}
    assert statuses[(facts["n4"]["victim"], "demo/onnxruntime/fp32/latency")] == "failed"  # its last night
    assert data["devices"][facts["n4"]["victim"]]["alive_last_night"] is False
    assert (Path(facts["work"]) / "site" / "devices" / "orin-sim.html").exists()
