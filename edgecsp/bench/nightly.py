"""The nightly matrix: for every (model, target, precision) of a suite that this machine can run,
build or reuse the artifact, evaluate it against the FP32 reference and benchmark it; record
every result in the history database; compare with the baseline; write a Markdown report with
trend plots and a JUnit XML file.

Each job runs in its own process by default (``isolate``): a crash, even a segfault in a native
backend, or a timeout fails that job only, and each job's peak memory is its own. The history is
opened before any work (a database that cannot be opened stops the night at once) and written
only by this parent process, one committed row at a time.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable  # typing's: collections.abc.Callable[...] is not subscriptable at run time on 3.8

from edgecsp.bench.history import History, Record
from edgecsp.bench.regression import Finding, compare
from edgecsp.bench.suite import Job, Suite, skip_reason
from edgecsp.errors import EdgeCSPError
from edgecsp.fsutil import atomic_write

Progress = Callable[[str], None]
Executor = Callable[[Job, Suite, Path], dict]


# -- one job ------------------------------------------------------------------------------------


def run_job(job: Job, suite: Suite, job_dir: Path) -> dict[str, Any]:
    """Build or reuse, evaluate, benchmark. Returns {"artifact", "built", "report"} (report: the
    benchmark JSON with ``accuracy``); raises on any failure."""
    from edgecsp.bench.on_demand import ensure_artifact
    from edgecsp.bench.report import write_all
    from edgecsp.bench.run import BenchmarkOptions, run_benchmark

    def say(line: str) -> None:
        print(f"  [{job.name}] {line}", file=sys.stderr, flush=True)

    root, _, built = ensure_artifact(job.model, job.target, job.precision, suite.artifacts_dir, suite.batch,
                                     rebuild=suite.rebuild, verify_images=suite.eval_images, data=suite.data,
                                     allow_accuracy_drop=True, progress=say, sign=suite.signing_key)
    if suite.require_signature:  # what a device would refuse, the nightly refuses too
        from edgecsp.predictor import check_signature
        from edgecsp.signing import load_trusted_keys

        assert suite.trusted_keys is not None  # load_suite requires it
        manifest = json.loads((root / "manifest.json").read_text())
        say(f"signed by trusted key {check_signature(root, manifest, load_trusted_keys(suite.trusted_keys), True)}")
    opts = BenchmarkOptions(artifact=root, model=job.model, scenarios=list(suite.scenarios),
                            duration_s=suite.duration_s, warmup_s=suite.warmup_s, min_queries=suite.min_queries,
                            compare=list(suite.compare), accuracy=True, eval_images=suite.eval_images,
                            data=suite.data)
    report = run_benchmark(opts, progress=say)
    write_all(report, job_dir, plots=False)
    return {"artifact": str(root), "built": built, "report": report}


def _child(job: Job, suite: Suite, job_dir: str, result_path: str) -> None:
    """Entry point of an isolated job process: the outcome goes to ``result_path`` as JSON."""
    try:
        out = {"ok": True, **run_job(job, suite, Path(job_dir))}
    except BaseException as err:  # noqa: BLE001 - everything becomes this job's recorded failure
        user = isinstance(err, EdgeCSPError)
        out = {"ok": False, "error": f"{'' if user else type(err).__name__ + ': '}{err}",
               "traceback": "" if user else traceback.format_exc()}
    atomic_write(Path(result_path), json.dumps(out, default=str))


class JobFailed(Exception):
    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def isolated_executor(target: Callable[..., None] = _child) -> Executor:
    """Run each job in a fresh (spawned) process with the suite's timeout."""

    def execute(job: Job, suite: Suite, job_dir: Path) -> dict:
        ctx = multiprocessing.get_context("spawn")
        fd, result_path = tempfile.mkstemp(prefix="edgecsp-job-", suffix=".json")
        os.close(fd)
        os.unlink(result_path)
        try:
            proc = ctx.Process(target=target, args=(job, suite, str(job_dir), result_path), name=f"edgecsp-{job.name}")
            proc.start()
            proc.join(suite.job_timeout_s)
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                raise JobFailed(f"timed out after {suite.job_timeout_s:g} s (suite job_timeout_s)")
            if not os.path.exists(result_path):
                code = proc.exitcode
                what = (f"signal {signal.Signals(-code).name}" if code is not None and code < 0
                        else f"exit code {code}")
                raise JobFailed(f"the job's process died ({what}) before reporting a result")
            with open(result_path) as f:
                out = json.load(f)
        finally:
            if os.path.exists(result_path):
                os.unlink(result_path)
        if not out.get("ok"):
            raise JobFailed(out.get("error", "unknown error"), out.get("traceback", ""))
        return out

    return execute


def in_process_executor(job: Job, suite: Suite, job_dir: Path) -> dict:
    return run_job(job, suite, job_dir)


# -- the matrix ---------------------------------------------------------------------------------


@dataclass
class JobOutcome:
    job: Job
    scenario: str
    status: str  # ok, failed, skipped
    record: Record
    findings: list[Finding] = field(default_factory=list)
    reason: str = ""  # skip reason or failure message
    details: str = ""  # traceback
    seconds: float = 0.0

    @property
    def regressed(self) -> bool:
        return any(f.regressed for f in self.findings)


@dataclass
class NightlyResult:
    run_id: int
    device: str
    suite: Suite
    outcomes: list[JobOutcome]
    started: str
    finished: str
    report_dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def regressions(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.regressed]

    @property
    def failures(self) -> list[JobOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def status(self) -> str:
        if self.failures:
            return "failed"
        return "regression" if self.regressions else "ok"

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "ok" else 1


def records_from(job: Job, out: dict) -> list[tuple[str, Record, dict]]:
    """One history record per scenario from a job's outcome (the artifact's results)."""
    report = out["report"]
    acc = report.get("accuracy") or {}
    recs = []
    for r in report["results"]:
        if r.get("kind", "artifact") != "artifact":
            continue
        lat = r.get("latency_ms") or {}
        details = {"result": {k: v for k, v in r.items() if k != "latency_quantiles_ms"}, "accuracy": acc,
                   "artifact": out.get("artifact"), "built": out.get("built")}
        recs.append((r["scenario"], Record(
            job=job.key(r["scenario"]), status="ok", model=str(job.model), target=job.target, precision=job.precision,
            scenario=r["scenario"], fps=r.get("fps"), latency_p50_ms=lat.get("p50"), latency_p99_ms=lat.get("p99"),
            ap=acc.get("AP"), ap50=acc.get("AP50"), peak_rss_mb=r.get("peak_rss_mb"),
            achieved_gbs=(r.get("bandwidth") or {}).get("achieved_gbs"), details=details), acc))
    return recs


def accuracy_gate(job_key: str, acc: dict) -> Finding | None:
    """The artifact against the FP32 reference, with its target profile's tolerance."""
    if not acc or "ap50_drop_points" not in acc:
        return None
    drop = float(acc["ap50_drop_points"]) + 0.0
    return Finding(job_key, "ap50_vs_fp32_reference", acc.get("AP50"), (acc.get("reference") or {}).get("AP50"), 1,
                   0.0 - drop, "points", acc.get("tolerance_points"), not acc.get("passed", True),
                   "" if acc.get("passed", True) else
                   "the FP32 reference detects nothing on this data" if acc.get("status") == "vacuous-reference" else
                   "below the FP32 reference by more than the profile's tolerance")


def status_gate(job_key: str, status: str | None) -> Finding | None:
    """The artifact's own manifest: one kept past its gate (--allow-accuracy-drop), built without
    verification or against a reference that detects nothing is flagged, whatever tonight measured."""
    if status is None or status == "passed":
        return None
    return Finding(job_key, "artifact_accuracy_status", None, None, 0, None, "", None, True,
                   f"the artifact's manifest says accuracy status '{status}', not 'passed'")


def run_suite(suite: Suite, db: str | Path | None = None, report_dir: Path | None = None, device: str | None = None,
              executor: Executor | None = None, progress: Progress = print) -> NightlyResult:
    from edgecsp.bench import machine

    history = History(db)  # before any work: a database that cannot be opened stops here
    try:
        info = machine.describe()
        device = device or info["key"]
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report_dir = Path(report_dir or Path("runs") / "nightly" / time.strftime("%Y%m%d-%H%M%S"))
        report_dir.mkdir(parents=True, exist_ok=True)
        executor = executor or (isolated_executor() if suite.isolate else in_process_executor)
        for killed in history.close_killed_runs(info["hostname"]):
            progress(f"nightly run {killed} was killed before it finished; marked 'killed'")
        run_id = history.start_run(device, suite.name, {"machine": info, "suite": suite.as_dict()}, info["hostname"])
        progress(f"nightly run {run_id}: suite {suite.name} on {device}, history {history.shown}")
        night = _LocalNight(history, run_id, device, suite, progress)
        for job in suite.matrix():
            night.run(job, executor, report_dir / "jobs" / job.name.replace("/", "-"))
        finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
        result = NightlyResult(run_id, device, suite, night.outcomes, started, finished, report_dir)
        history.finish_run(run_id, result.status)
        from edgecsp.bench.nightly_report import write_reports

        result.files = write_reports(result, history)
        return result
    finally:
        history.close()


class _LocalNight:
    """One nightly run on this machine: each job skipped, failed or measured, and written to the
    history as it ends (committed before anything else can go wrong)."""

    def __init__(self, history: History, run_id: int, device: str, suite: Suite, progress: Progress):
        self.history, self.run_id, self.device, self.suite, self.progress = history, run_id, device, suite, progress
        self.outcomes: list[JobOutcome] = []

    def run(self, job: Job, executor: Executor, job_dir: Path) -> None:
        reason = skip_reason(job)
        if reason:
            self.progress(f"skip {job.name}: {reason}")
            self._every_scenario(job, "skipped", reason)
            return
        self.progress(f"job {job.name}")
        t0 = time.perf_counter()
        try:
            out = executor(job, self.suite, job_dir)
            recs = records_from(job, out)
            if not recs:
                raise JobFailed("the benchmark returned no result for the artifact")
        except Exception as err:  # noqa: BLE001 - one job's crash is that job's failure only
            known = isinstance(err, (EdgeCSPError, JobFailed))
            details = getattr(err, "details", "") or ("" if known else traceback.format_exc())
            msg = str(err) if known else f"{type(err).__name__}: {err}"
            self.progress(f"  FAILED: {msg}")
            self._every_scenario(job, "failed", msg, details, time.perf_counter() - t0)
            return
        seconds = time.perf_counter() - t0
        status = (out["report"].get("artifact") or {}).get("accuracy_status")
        for sc, rec, acc in recs:
            self._measured(job, sc, rec, acc, status, seconds)

    def _every_scenario(self, job: Job, status: str, msg: str, details: str = "", seconds: float = 0.0) -> None:
        for sc in self.suite.scenarios:
            rec = Record(job=job.key(sc), status=status, model=str(job.model), target=job.target,
                         precision=job.precision, scenario=sc, error=msg[:2000] if status == "failed" else msg,
                         details={"traceback": details} if details else None)
            self.history.record(self.run_id, self.device, rec)
            self.outcomes.append(JobOutcome(job, sc, status, rec, reason=msg, details=details, seconds=seconds))

    def _measured(self, job: Job, sc: str, rec: Record, acc: Any, status: str | None, seconds: float) -> None:
        self.history.record(self.run_id, self.device, rec)  # committed before anything else can go wrong
        current = {"fps": rec.fps, "ap50": rec.ap50, "latency_p99_ms": rec.latency_p99_ms,
                   "peak_rss_mb": rec.peak_rss_mb}
        findings = compare(self.history, self.device, rec.job, current, self.suite.thresholds,
                           before_run=self.run_id)
        for gate in (accuracy_gate(rec.job, acc), status_gate(rec.job, status)):
            if gate is not None:
                findings.append(gate)
        o = JobOutcome(job, sc, "ok", rec, findings, seconds=seconds)
        self.outcomes.append(o)
        self.progress(f"  {sc}: {rec.fps:.1f} FPS, AP50 {rec.ap50 if rec.ap50 is not None else float('nan'):.4f}"
                      + ("  REGRESSION: " + "; ".join(f.describe() for f in findings if f.regressed)
                         if o.regressed else ""))
