"""Nightly jobs: history database, regression detection, failure isolation, bad input.

Jobs here are planted (an executor returning chosen FPS/AP50), so the tests check the nightly
logic itself in seconds; tests/test_bench.py runs the real benchmark on a real engine.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from testpaths import REPO

from edgecsp.bench import nightly as nightly_mod
from edgecsp.bench.history import History, Record
from edgecsp.bench.nightly import JobFailed, isolated_executor, run_suite
from edgecsp.bench.regression import Thresholds, compare, judge
from edgecsp.bench.suite import Job, load_suite
from edgecsp.errors import EdgeCSPError
from edgecsp.nightly import main as nightly_main

SUITE = """
[suite]
name = "test-nightly"
models = ["demo"]
targets = {targets}
precisions = {precisions}
scenarios = ["latency"]
isolate = false

[baseline]
method = "median"
last_runs = 5
min_runs = 2

[thresholds]
throughput_drop_pct = 10
ap50_drop_points = 0.5
"""


def write_suite(tmp_path: Path, targets=("intel-cpu",), precisions=("int8",), extra: str = "") -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(targets=list(targets), precisions=list(precisions)) + extra)
    return path


def planted(fps: float, ap50: float, p99: float = 12.0, passed: bool = True) -> dict:
    """What run_job returns, with chosen numbers."""
    return {"artifact": "planted", "built": False, "report": {
        "results": [{"name": "planted", "kind": "artifact", "scenario": "latency", "fps": fps,
                     "latency_ms": {"p50": 10.0, "p90": 11.0, "p99": p99, "max": 13.0},
                     "peak_rss_mb": 300.0, "bandwidth": {"achieved_gbs": 1.0}}],
        "accuracy": {"AP": ap50 * 0.6, "AP50": ap50, "reference": {"AP50": 0.80}, "passed": passed,
                     "ap50_drop_points": round((0.80 - ap50) * 100, 3), "tolerance_points": 1.0}}}


class Planted:
    """An executor whose next results are set by the test; ``crash`` names jobs that raise."""

    def __init__(self):
        self.fps, self.ap50, self.crash, self.calls = 100.0, 0.80, set(), []

    def __call__(self, job: Job, suite, job_dir: Path) -> dict:
        self.calls.append(job.name)
        if job.name in self.crash:
            raise RuntimeError(f"planted crash in {job.name}")
        return planted(self.fps, self.ap50)


@pytest.fixture
def always_runnable(monkeypatch):
    # The matrix logic, not this machine's backends, is under test here.
    monkeypatch.setattr(nightly_mod, "skip_reason", lambda job: None)


def night(suite_path: Path, db: Path, report: Path, executor) -> nightly_mod.NightlyResult:
    return run_suite(load_suite(suite_path), db=db, report_dir=report, device="test-device", executor=executor,
                     progress=lambda line: None)


def test_planted_regression_is_detected_and_a_clean_rerun_is_not(tmp_path, always_runnable):
    suite = write_suite(tmp_path)
    db = tmp_path / "history.sqlite"
    ex = Planted()
    for i, fps in enumerate([100.0, 101.0, 99.0, 100.5]):  # clean history
        ex.fps = fps
        r = night(suite, db, tmp_path / f"r{i}", ex)
        assert r.exit_code == 0, [f.describe() for o in r.outcomes for f in o.findings]

    ex.fps = 85.0  # a slower artifact: 15% below the median of 100.25
    slow = night(suite, db, tmp_path / "slow", ex)
    assert slow.exit_code == 1 and slow.status == "regression"
    [f] = [f for o in slow.regressions for f in o.findings if f.regressed]
    assert f.metric == "fps" and f.baseline == pytest.approx(100.25) and f.change == pytest.approx(-15.21, abs=0.01)
    report = (tmp_path / "slow" / "report.md").read_text()
    assert "REGRESSION" in report and "demo/intel-cpu/int8/latency" in report
    junit = ET.parse(tmp_path / "slow" / "junit.xml").getroot()
    assert junit.find("testsuite").get("failures") == "1"
    assert junit.find(".//testcase/failure").get("type") == "PerformanceRegression"

    ex.fps, ex.ap50 = 100.0, 0.79  # a less accurate artifact: 1 AP50 point below the baseline
    worse = night(suite, db, tmp_path / "worse", ex)
    assert worse.exit_code == 1
    assert [f.metric for o in worse.regressions for f in o.findings if f.regressed] == ["ap50"]

    ex.fps, ex.ap50 = 98.0, 0.798  # clean rerun: -2% and -0.2 point are within the thresholds
    clean = night(suite, db, tmp_path / "clean", ex)
    assert clean.exit_code == 0 and not clean.regressions
    assert ET.parse(tmp_path / "clean" / "junit.xml").getroot().find("testsuite").get("failures") == "0"
    assert (tmp_path / "clean" / "trend_fps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with History(db) as h:  # every run is kept, the regressed ones too
        assert h.count("runs") == 7 and h.count("results") == 7


def test_regression_recorded_directly_in_history_is_flagged(tmp_path):
    """A slower result planted in the database (not through the nightly) against its median."""
    with History(tmp_path / "h.sqlite") as h:
        job = "demo/intel-cpu/int8/latency"
        for fps in (50.0, 52.0, 51.0):
            h.record(h.start_run("dev"), "dev", Record(job=job, status="ok", fps=fps, ap50=0.9))
        h.record(h.start_run("dev"), "dev", Record(job=job, status="failed", error="x"))  # ignored by baselines
        h.record(h.start_run("other-dev"), "other-dev", Record(job=job, status="ok", fps=10.0))  # other device
        th = Thresholds()
        now = h.start_run("dev")
        slow = compare(h, "dev", job, {"fps": 44.0, "ap50": 0.9}, th, before_run=now)
        assert [(f.metric, f.regressed) for f in slow] == [("fps", True), ("ap50", False)]
        assert slow[0].baseline == 51.0 and slow[0].baseline_runs == 3
        fine = compare(h, "dev", job, {"fps": 46.5, "ap50": 0.896}, th, before_run=now)
        assert not any(f.regressed for f in fine)


def test_thresholds_are_strict_and_first_run_is_not_judged():
    th = Thresholds(throughput_drop_pct=10, ap50_drop_points=0.5)
    assert not judge("j", "fps", 90.0, 100.0, 3, th).regressed  # exactly 10%: not more than 10%
    assert judge("j", "fps", 89.9, 100.0, 3, th).regressed
    assert not judge("j", "ap50", 0.795, 0.80, 3, th).regressed  # 0.5 point
    assert judge("j", "ap50", 0.794, 0.80, 3, th).regressed
    first = judge("j", "fps", 1.0, None, 0, th)
    assert not first.regressed and "no baseline yet" in first.note
    assert judge("j", "latency_p99_ms", 50.0, 10.0, 3, th) is None  # off unless the suite sets it
    assert judge("j", "latency_p99_ms", 13.0, 10.0, 3, Thresholds(latency_p99_increase_pct=25)).regressed
    with pytest.raises(EdgeCSPError, match="throughput_drop_pct"):
        Thresholds(throughput_drop_pct=-1)


def test_accuracy_below_the_fp32_reference_fails_even_without_history(tmp_path, always_runnable):
    def below_reference(job, suite, job_dir):
        return planted(100.0, 0.70, passed=False)  # 10 points below the FP32 reference

    r = night(write_suite(tmp_path), tmp_path / "h.sqlite", tmp_path / "r", below_reference)
    assert r.exit_code == 1
    assert [f.metric for o in r.regressions for f in o.findings if f.regressed] == ["ap50_vs_fp32_reference"]


def test_a_crash_in_one_job_fails_only_that_job_and_keeps_the_history(tmp_path, always_runnable):
    suite = write_suite(tmp_path, targets=("intel-cpu", "onnxruntime"), precisions=("fp32", "int8"))
    db = tmp_path / "history.sqlite"
    ex = Planted()
    night(suite, db, tmp_path / "before", ex)
    with History(db) as h:
        before = h.results(1)
    assert len(before) == 4

    ex.crash = {"demo/intel-cpu/int8"}
    r = night(suite, db, tmp_path / "crash", ex)
    assert ex.calls[-4:] == ["demo/intel-cpu/fp32", "demo/intel-cpu/int8", "demo/onnxruntime/fp32",
                             "demo/onnxruntime/int8"]  # the jobs after the crash still ran
    assert r.exit_code == 1 and r.status == "failed"
    status = {o.job.name: o.status for o in r.outcomes}
    assert status == {"demo/intel-cpu/fp32": "ok", "demo/intel-cpu/int8": "failed",
                      "demo/onnxruntime/fp32": "ok", "demo/onnxruntime/int8": "ok"}
    with History(db) as h:
        assert h.results(1) == before  # nothing earlier lost or changed
        rows = {row["job"]: row for row in h.results(r.run_id)}
    failed = rows["demo/intel-cpu/int8/latency"]
    assert failed["status"] == "failed" and "planted crash" in failed["error"] and failed["fps"] is None
    assert "RuntimeError" in failed["details"]  # the traceback is kept
    junit = ET.parse(tmp_path / "crash" / "junit.xml").getroot().find("testsuite")
    assert junit.get("errors") == "1" and junit.get("tests") == "4"
    assert "planted crash" in (tmp_path / "crash" / "report.md").read_text()


def test_jobs_this_machine_cannot_run_are_skipped_with_the_reason(tmp_path, monkeypatch):
    suite = write_suite(tmp_path, targets=("intel-cpu", "jetson-orin-nano"), precisions=("fp32",))
    monkeypatch.setattr(nightly_mod, "skip_reason",
                        lambda job: "this machine is not a Jetson" if job.target.startswith("jetson") else None)
    r = night(suite, tmp_path / "h.sqlite", tmp_path / "r", Planted())
    assert r.exit_code == 0
    skipped = [o for o in r.outcomes if o.status == "skipped"]
    assert [o.job.name for o in skipped] == ["demo/jetson-orin-nano/fp32"]
    assert "not a Jetson" in (tmp_path / "r" / "report.md").read_text()
    assert ET.parse(tmp_path / "r" / "junit.xml").getroot().find(".//skipped").get("message")


def test_nightly_cli_progress_on_stderr_the_outcome_on_stdout_and_the_device_name(tmp_path, capsys):
    """Jobs this machine cannot run are skipped for real (fp16 on ONNX Runtime's CPU target), so the
    night runs end to end in a moment."""
    from edgecsp import cli

    suite = write_suite(tmp_path, targets=("onnxruntime",), precisions=("fp16",))
    db = tmp_path / "h.sqlite"
    assert cli.run(nightly_main, ["--suite", str(suite), "--db", str(db), "--report", str(tmp_path / "r"),
                                  "--device-name", "lab-1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: 0 regression(s)") and len(out.strip().splitlines()) == 1, out
    assert "skip demo/onnxruntime/fp16" in err and "on lab-1" in err
    # --device, its name before (a torch device in edgecsp.train), still works and says what it is called now
    assert cli.run(nightly_main, ["--suite", str(suite), "--db", str(db), "--report", str(tmp_path / "r2"),
                                  "--device", "lab-2"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: --device is now --device-name") and "on lab-2" in err
    with sqlite3.connect(db) as con:
        assert sorted(d for (d,) in con.execute("SELECT DISTINCT device FROM edgecsp_runs")) == ["lab-1", "lab-2"]


def test_real_skip_reasons_on_this_machine():
    from edgecsp.bench.suite import skip_reason

    assert "offers" in skip_reason(Job("demo", "onnxruntime", "fp16"))
    reason = skip_reason(Job("demo", "jetson-orin-nano", "fp16"))
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("running on a Jetson")
    assert reason and "Jetson" in reason


# -- isolated job processes -----------------------------------------------------------------------


def _child_ok(job, suite, job_dir, result_path):
    import json

    with open(result_path, "w") as f:
        json.dump({"ok": True, **planted(42.0, 0.8)}, f)


def _child_segfault(job, suite, job_dir, result_path):
    os.kill(os.getpid(), signal.SIGSEGV)


def _child_hangs(job, suite, job_dir, result_path):
    time.sleep(60)


def test_isolated_job_crash_or_timeout_is_that_jobs_failure(tmp_path):
    suite = load_suite(write_suite(tmp_path, extra=""))
    suite.job_timeout_s = 3
    job = Job("demo", "intel-cpu", "int8")
    assert isolated_executor(_child_ok)(job, suite, tmp_path)["report"]["results"][0]["fps"] == 42.0
    with pytest.raises(JobFailed, match="died \\(signal SIGSEGV\\)"):
        isolated_executor(_child_segfault)(job, suite, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(JobFailed, match="timed out after 3 s"):
        isolated_executor(_child_hangs)(job, suite, tmp_path)
    assert time.monotonic() - t0 < 30


def test_a_job_result_is_not_written_through_a_fixed_temporary_name(tmp_path, monkeypatch):
    # "<result>.tmp" left by another writer (here a folder) must neither break the job's result nor be touched.
    import json

    monkeypatch.setattr(nightly_mod, "run_job", lambda job, suite, job_dir: planted(42.0, 0.8))
    result = tmp_path / "result.json"
    (tmp_path / "result.json.tmp").mkdir()
    nightly_mod._child(Job("demo", "intel-cpu", "int8"), None, str(tmp_path), str(result))
    assert json.loads(result.read_text())["report"]["results"][0]["fps"] == 42.0
    assert (tmp_path / "result.json.tmp").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == [
        "result.json", "result.json.tmp"]


# -- bad input ----------------------------------------------------------------------------------------


def test_suite_with_an_unknown_target_is_a_clear_error(tmp_path, capsys):
    path = write_suite(tmp_path, targets=("intel-cpu", "no-such-board"))
    with pytest.raises(EdgeCSPError, match="unknown target 'no-such-board'; known targets: .*intel-cpu"):
        load_suite(path)
    assert nightly_main.__module__ == "edgecsp.nightly"
    from edgecsp import cli

    assert cli.run(nightly_main, ["--suite", str(path), "--db", str(tmp_path / "h.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-board" in err[0]
    assert not (tmp_path / "h.sqlite").exists()  # nothing started


@pytest.mark.parametrize("text, match", [
    ('[suite]\nmodels=["demo"]\ntargets=["intel-cpu"]\nprecison=["int8"]\n', "unknown key\\(s\\) precison"),
    ('[suite]\nmodels=["demo"]\ntargets=["intel-cpu"]\nscenarios=["offline"]\n', "unknown scenario"),
    ('[suite]\nmodels=["demo"]\ntargets=[]\n', "targets is missing or empty"),
    ('[suite]\nmodels=["demo"]\ntargets=["intel-cpu"]\n[thresholds]\nthroughput_drop_pct=-5\n', "must be a number"),
    ('[suite\n', "not valid TOML"),
])
def test_bad_suite_files(tmp_path, text, match):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(EdgeCSPError, match=match):
        load_suite(path)


def test_a_database_that_cannot_be_opened_is_a_clear_error_and_is_not_touched(tmp_path, capsys, always_runnable):
    from edgecsp import cli

    suite = write_suite(tmp_path)
    not_db = tmp_path / "notes.sqlite"
    not_db.write_text("these are someone's notes, not a database\n" * 20)
    original = not_db.read_bytes()
    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("create table invoices (id integer, total real)")
    con.execute("insert into invoices values (1, 9.5)")
    con.commit()
    con.close()
    cases = [(str(not_db), "file is not a database"), (str(tmp_path / "missing" / "h.sqlite"), "does not exist"),
             (str(tmp_path), "is a directory"), ("nosuchdb://host/x", "cannot open history database"),
             (str(foreign), "holds other tables \\(invoices\\)")]
    for db, match in cases:
        with pytest.raises(EdgeCSPError, match=match):
            History(db)
        assert cli.run(nightly_main, ["--suite", str(suite), "--db", db, "--report", str(tmp_path / "r")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and "--db" in err[0], err
    assert not_db.read_bytes() == original
    con = sqlite3.connect(foreign)
    assert con.execute("select * from invoices").fetchall() == [(1, 9.5)]
    assert [r[0] for r in con.execute("select name from sqlite_master")] == ["invoices"]
    con.close()


def test_password_is_hidden_in_database_errors():
    with pytest.raises(EdgeCSPError) as err:
        History("nosuchdb://user:hunter2@db.example/x")
    assert "hunter2" not in str(err.value)


def test_shipped_suite_loads():
    suite = load_suite(REPO / "benchmarks" / "nightly.toml")
    assert suite.thresholds.throughput_drop_pct == 10 and suite.thresholds.ap50_drop_points == 0.5
    assert Job("demo", "intel-cpu", "int8") in suite.matrix()
