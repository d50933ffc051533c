"""The fleet nightly's head: plan the night over the live devices, build each artifact once, send
each job to a device of its target (one job per device at a time), write each result as it
arrives.

The head chooses the device of every job itself (a Ray task pinned to that node, which must also
hold ``edgecsp-device: 1``), so it always knows which device a job was on: when that node dies
the job is "failed: device lost" (or, with ``placement = "one-device"`` and ``on_device_lost =
"retry"``, run once more on another device of the target), and the rest goes on. Every finished
job is committed at once under the night's id (``--night``, default the suite name and the UTC
date), so a head killed mid-night and started again runs only the jobs not yet recorded.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import (
    Any,
    Callable,  # typing's: collections.abc.Callable[...] is not subscriptable at run time on 3.8
)

from edgecsp.bench.history import History, Record
from edgecsp.bench.nightly import JobOutcome, accuracy_gate, records_from
from edgecsp.bench.regression import compare
from edgecsp.bench.suite import Job, Suite
from edgecsp.errors import EdgeCSPError, first_line
from edgecsp.fleet import device as dev
from edgecsp.fleet import import_ray

Progress = Callable[[str], None]
NO_DEVICE = "(no live device)"  # the history's device for jobs whose target has no live device
DONE = ("ok", "failed")  # a job with such a row in the night is finished; "no-device" rows are not
LOST = "device lost"


@dataclass
class Node:
    node_id: str
    info: dict

    @property
    def name(self) -> str:
        return str(self.info["name"])


@dataclass
class Unit:
    """One job on one device (``device`` None: any device of the target, chosen when one is free)."""

    job: Job
    device: str | None
    retried_from: str | None = None
    excluded: set[str] = field(default_factory=set)


@dataclass
class FleetResult:
    night: str
    suite: Suite
    devices: dict[str, dict]
    outcomes: list[tuple[str, JobOutcome]]  # (device, outcome)
    already_done: int
    started: str
    finished: str
    no_device_targets: list[str]
    report_dir: Path | None = None

    @property
    def failures(self) -> list[tuple[str, JobOutcome]]:
        return [(d, o) for d, o in self.outcomes if o.status in ("failed", "no-device")]

    @property
    def regressions(self) -> list[tuple[str, JobOutcome]]:
        return [(d, o) for d, o in self.outcomes if o.regressed]

    @property
    def status(self) -> str:
        return "failed" if self.failures else ("regression" if self.regressions else "ok")

    @property
    def exit_code(self) -> int:
        return 0 if self.status == "ok" else 1


def default_night(suite: Suite) -> str:
    return f"{suite.name}-{datetime.now(timezone.utc):%Y-%m-%d}"


def _strategy(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def alive_node_ids(ray: Any) -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def discover(ray: Any, progress: Progress, timeout_s: float = 120.0) -> list[Node]:
    """Every live node that joined as an edgecsp device or builder, described by itself."""
    from edgecsp.fleet.tasks import describe_node

    remote = ray.remote(describe_node)
    refs = {}
    for n in ray.nodes():
        res = n.get("Resources") or {}
        if n.get("Alive") and (dev.DEVICE_RESOURCE in res or dev.BUILDER_RESOURCE in res):
            refs[remote.options(num_cpus=0, max_retries=0, scheduling_strategy=_strategy(n["NodeID"])).remote()] = n
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s) if refs else ([], [])
    nodes = []
    for ref in ready:
        try:
            nodes.append(Node(refs[ref]["NodeID"], ray.get(ref)))
        except Exception as err:  # noqa: BLE001 - a node that cannot describe itself is not used tonight
            progress(f"node {refs[ref]['NodeManagerAddress']} cannot describe itself ({type(err).__name__}); not used")
    for ref in late:
        progress(f"node {refs[ref]['NodeManagerAddress']} did not answer in {timeout_s:g} s; not used")
        ray.cancel(ref, force=True)
    names = [n.name for n in nodes]
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise EdgeCSPError(f"two live devices share the name(s) {', '.join(dup)}; give each worker its own --name")
    return sorted(nodes, key=lambda n: n.name)


def _describe_failure(err: BaseException) -> tuple[str, str]:
    """(one-line message, details) of a job's exception as ray.get raised it."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, EdgeCSPError):
        return str(cause), ""
    if cause is not None:
        return f"{type(cause).__name__}: {cause}", str(err)
    first = first_line(err).split(". ")[0]  # Ray's messages go on with advice for Ray's own dashboard
    return f"{type(err).__name__}: {first}"[:300], str(err)


class Night:
    """One fleet night: the history writes and the bookkeeping of who runs what."""

    def __init__(self, history: History, suite: Suite, night: str, progress: Progress):
        self.h, self.suite, self.night, self.progress = history, suite, night, progress
        self.runs: dict[str, int] = {}
        self.outcomes: list[tuple[str, JobOutcome]] = []

    def run_id(self, device: str, info: dict | None = None) -> int:
        if device not in self.runs:
            existing = self.h.night_run(self.night, device)
            meta = {"device": info or {}, "suite": self.suite.as_dict(), "night": self.night}
            if existing is None:
                self.runs[device] = self.h.start_run(device, self.suite.name, meta, (info or {}).get("hostname", ""),
                                                     night=self.night)
            else:
                self.h.reopen_run(existing, meta if info else None)
                self.runs[device] = existing
        return self.runs[device]

    def fail(self, device: str, job: Job, status: str, msg: str, details: str = "", seconds: float = 0.0,
             extra: dict | None = None) -> None:
        run_id = self.run_id(device)
        for sc in self.suite.scenarios:
            info = dict(extra or {})
            if details:
                info["traceback"] = details
            rec = Record(job=job.key(sc), status=status, model=job.model, target=job.target, precision=job.precision,
                         scenario=sc, error=msg[:2000], details=info or None)
            self.h.record(run_id, device, rec)
            self.outcomes.append((device, JobOutcome(job, sc, status, rec, reason=msg, details=details,
                                                     seconds=seconds)))
        self.progress(f"{job.name} on {device}: {status.upper()}: {msg}")

    def ok(self, device: str, job: Job, out: dict, seconds: float, extra: dict) -> None:
        run_id = self.run_id(device)
        for sc, rec, acc in records_from(job, out):
            rec.details = {**(rec.details or {}), **extra}
            self.h.record(run_id, device, rec)  # committed before anything else can go wrong
            current = {"fps": rec.fps, "ap50": rec.ap50, "latency_p99_ms": rec.latency_p99_ms,
                       "peak_rss_mb": rec.peak_rss_mb}
            findings = compare(self.h, device, rec.job, current, self.suite.thresholds, before_run=run_id)
            gate = accuracy_gate(rec.job, acc)
            if gate is not None:
                findings.append(gate)
            o = JobOutcome(job, sc, "ok", rec, findings, seconds=seconds)
            self.outcomes.append((device, o))
            self.progress(f"{job.name} on {device}: {sc} {rec.fps:.1f} FPS, p99 {rec.latency_p99_ms or 0:.2f} ms, "
                          f"AP50 {rec.ap50 if rec.ap50 is not None else float('nan'):.4f}"
                          + ("  REGRESSION" if o.regressed else ""))


def run_fleet(suite: Suite, cluster: str, db: str | Path | None = None, night: str | None = None,
              report_dir: Path | None = None, progress: Progress = print, poll_s: float = 1.0) -> FleetResult:
    history = History(db)  # before any work: a database that cannot be opened stops here
    try:
        ray = import_ray()
        _probe(cluster)
        try:
            ray.init(address=cluster, namespace="edgecsp-nightly", log_to_driver=False,
                     logging_level="warning", include_dashboard=False)
        except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            raise EdgeCSPError(f"cannot join the Ray cluster at {cluster} ({_describe_failure(err)[0]}); start the "
                               "head with ray start --head and pass its address as HOST:PORT") from None
        return _run(ray, history, suite, night or default_night(suite), report_dir, progress, poll_s)
    finally:
        if "ray" in locals() and ray.is_initialized():
            ray.shutdown()
        history.close()


def _probe(cluster: str, timeout_s: float = 10.0) -> None:
    """One line at once when nothing listens at HOST:PORT (ray.init would wait for minutes)."""
    import socket

    host, _, port = cluster.rpartition(":")
    if not host or not port.isdigit():
        raise EdgeCSPError(f"--cluster {cluster!r}: give the head's Ray address as HOST:PORT (e.g. head:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise EdgeCSPError(f"nothing answers at {cluster} ({err.strerror or err}); start the head with "
                           "ray start --head --port PORT there, or fix --cluster") from None


def _run(ray: Any, history: History, suite: Suite, night: str, report_dir: Path | None, progress: Progress,
         poll_s: float) -> FleetResult:
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    nodes = discover(ray, progress)
    devices = {n.name: n for n in nodes if n.info["targets"]}
    builders = [n for n in nodes if n.info["builder"]]
    progress(f"night {night}: suite {suite.name}, {len(devices)} device(s), {len(builders)} builder(s), "
             f"history {history.shown}")
    for n in nodes:
        progress(f"  {n.name}: {', '.join(n.info['targets']) or 'no target'}{' + builder' if n.info['builder'] else ''}"
                 f" ({n.info['model']}; {', '.join(f'{k} {v}' for k, v in n.info['backends'].items())})")
    nt = Night(history, suite, night, progress)
    for name, n in devices.items():
        nt.run_id(name, n.info)
    plan = _plan(history, suite, night, devices, nt, progress)
    dispatcher = _Dispatcher(ray, nt, suite, devices, progress, poll_s)
    dispatcher.queue_builds(plan.units, has_builder=bool(builders))
    dispatcher.run()

    finished = datetime.now(timezone.utc).isoformat(timespec="seconds")
    result = FleetResult(night, suite, {n: devices[n].info for n in devices}, nt.outcomes, plan.already, started,
                         finished, sorted(set(plan.no_device)), report_dir)
    _finish_runs(history, nt)
    if report_dir is not None:
        _write_summary(result, Path(report_dir))
    return result


@dataclass
class _Plan:
    units: list[Unit]
    no_device: list[str]  # targets of jobs that no live device serves
    already: int  # jobs of this night recorded by an earlier head


def _plan(history: History, suite: Suite, night: str, devices: dict[str, Node], nt: Night,
          progress: Progress) -> _Plan:
    """The night's units of work: every job of the matrix on its device(s), less what is recorded."""
    from edgecsp.targets import load_target

    done = {(r["device"], r["job"].rsplit("/", 1)[0]) for r in history.night_results(night) if r["status"] in DONE}
    done_jobs = {j for _, j in done}
    plan = _Plan([], [], 0)
    for job in suite.matrix():
        if job.precision not in load_target(job.target).precisions:
            continue  # the local nightly's "skipped": the target does not offer it, nothing to report per device
        serving = [d for d, n in devices.items() if job.target in n.info["targets"]]
        if suite.placement == "one-device" and job.name in done_jobs:
            plan.already += 1
            continue
        if not serving:
            plan.no_device.append(job.target)
            nt.fail(NO_DEVICE, job, "no-device", f"no live device serves target {job.target}")
            continue
        if suite.placement == "one-device":
            plan.units.append(Unit(job, None))
            continue
        for d in serving:
            if (d, job.name) in done:
                plan.already += 1
            else:
                plan.units.append(Unit(job, d))
    if plan.already:
        progress(f"{plan.already} job(s) of night {night} already recorded: not run again")
    return plan


def _finish_runs(history: History, nt: Night) -> None:
    """Each device's run ends failed, regression or ok, the worst of its jobs."""
    statuses: dict[str, list[str]] = {}
    for d, o in nt.outcomes:
        statuses.setdefault(d, []).append("failed" if o.status in ("failed", "no-device") else
                                          ("regression" if o.regressed else "ok"))
    for d, run_id in nt.runs.items():
        s = statuses.get(d, [])
        history.finish_run(run_id, "failed" if "failed" in s else ("regression" if "regression" in s else "ok"))


class _Dispatcher:
    """The head's loop: builds once per job on a builder, one job per device at a time, each
    result written as it arrives; lost devices, failed builds and timeouts end their jobs."""

    def __init__(self, ray: Any, nt: Night, suite: Suite, devices: dict[str, Node], progress: Progress,
                 poll_s: float):
        self.ray, self.nt, self.suite, self.devices = ray, nt, suite, devices
        self.progress, self.poll_s = progress, poll_s
        self.builds: dict[Job, tuple[Any, Any]] = {}  # job -> (facts ref, packed artifact ref or None)
        self.build_state: dict[Job, Any] = {}  # job -> facts dict, or an exception
        self.pending: list[Unit] = []
        self.running: dict[Any, tuple[Unit, str, float]] = {}  # ref -> (unit, device, start)
        self.busy: set[str] = set()
        self.lost: set[str] = set()
        self.last_check = 0.0

    def queue_builds(self, units: list[Unit], has_builder: bool) -> None:
        """Build each needed artifact once, on a builder (Ray retries a build whose builder died, once)."""
        from edgecsp.fleet.tasks import build_artifact

        if units and not has_builder:
            for u in units:
                self.nt.fail(u.device or NO_DEVICE, u.job, "failed", "no live builder (a worker with PyTorch) to "
                             "build the artifact; start one with python -m edgecsp.worker --build")
            return
        build = self.ray.remote(build_artifact)
        for job in dict.fromkeys(u.job for u in units):
            self.builds[job] = build.options(num_returns=2, num_cpus=1, resources={dev.BUILDER_RESOURCE: 1},
                                             max_retries=1).remote(job, self.suite)
            self.progress(f"build {job.name} (queued on a builder)")
        self.pending = list(units)

    def run(self) -> None:
        while self.pending or self.running:
            self._release_unneeded_artifacts()
            self._collect_builds()
            self._notice_lost_devices()
            self._drop_unrunnable()
            self._start_jobs()
            if not self.running:
                if self.pending:
                    time.sleep(self.poll_s)
                continue
            self._collect_results()
            self._enforce_timeouts()

    def _serving(self, target: str) -> list[str]:
        return [d for d, n in self.devices.items() if target in n.info["targets"]]

    def _release_unneeded_artifacts(self) -> None:
        # An artifact no job still needs leaves the object store (a night of 250 artifacts would
        # otherwise keep them all, and the builders' stores would spill to disk).
        needed = {u.job for u in self.pending} | {v[0].job for v in self.running.values()}
        for job, (meta, packed) in list(self.builds.items()):
            if packed is not None and job in self.build_state and job not in needed:
                self.builds[job] = (meta, None)

    def _collect_builds(self) -> None:
        """Which builds finished (their facts are small; the packed artifact stays in the object store)."""
        waiting = [self.builds[j][0] for j in self.builds if j not in self.build_state]
        if not waiting:
            return
        ready, _ = self.ray.wait(waiting, num_returns=len(waiting), timeout=0)
        for job in [j for j in self.builds if self.builds[j][0] in ready]:
            try:
                self.build_state[job] = f = self.ray.get(self.builds[job][0])
                self.progress(f"built {job.name} on {f['builder']}: {f['name']}, {f['bytes'] / 1e6:.1f} MB"
                              f"{'' if f['built'] else ' (reused)'}")
            except Exception as err:  # noqa: BLE001 - a failed build fails that job on every device
                self.build_state[job] = err

    def _notice_lost_devices(self) -> None:
        now = time.monotonic()
        if now - self.last_check < 2 * self.poll_s:
            return
        self.last_check = now
        alive = alive_node_ids(self.ray)
        for name, n in self.devices.items():
            if name not in self.lost and n.node_id not in alive:
                self.lost.add(name)
                self.progress(f"device {name} is gone")

    def _drop_unrunnable(self) -> None:
        """Jobs that can no longer run: build failed, device lost before its turn, no device left."""
        for u in list(self.pending):
            st = self.build_state.get(u.job)
            if isinstance(st, BaseException):
                self.pending.remove(u)
                msg, details = _describe_failure(st)
                self.nt.fail(u.device or NO_DEVICE, u.job, "failed", f"build failed: {msg}", details)
            elif u.device is not None and u.device in self.lost:
                self.pending.remove(u)
                self.nt.fail(u.device, u.job, "failed", f"{LOST} (before the job started)")
            elif u.device is None and not [d for d in self._serving(u.job.target)
                                           if d not in self.lost and d not in u.excluded]:
                self.pending.remove(u)
                if u.retried_from is None:
                    self.nt.fail(NO_DEVICE, u.job, "no-device", f"no live device serves target {u.job.target}")
                else:
                    self.nt.fail(u.retried_from, u.job, "failed",
                                 f"{LOST}; no other live device of {u.job.target} to retry on")

    def _start_jobs(self) -> None:
        """Start jobs whose artifact is built on free devices, one job per device."""
        from edgecsp.fleet.tasks import run_on_device

        run_task = self.ray.remote(run_on_device)
        for u in list(self.pending):
            if not isinstance(self.build_state.get(u.job), dict):
                continue
            choices = [u.device] if u.device is not None else [d for d in self._serving(u.job.target)
                                                               if d not in u.excluded]
            free = [d for d in choices if d not in self.busy and d not in self.lost]
            if not free:
                continue
            d = free[0]
            ref = run_task.options(num_cpus=1, resources={dev.DEVICE_RESOURCE: 1}, max_retries=0,
                                   scheduling_strategy=_strategy(self.devices[d].node_id)).remote(
                u.job, self.suite, self.build_state[u.job], self.builds[u.job][1])
            self.running[ref] = (u, d, time.monotonic())
            self.busy.add(d)
            self.pending.remove(u)
            self.progress(f"run {u.job.name} on {d}" + (f" (retry; {u.retried_from} was lost)" if u.retried_from
                                                        else ""))

    def _collect_results(self) -> None:
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=self.poll_s)
        for ref in ready:
            u, d, t0 = self.running.pop(ref)
            self.busy.discard(d)
            seconds = time.monotonic() - t0
            extra = {"night": self.nt.night,
                     "facts": {k: v for k, v in self.build_state[u.job].items() if k != "name"}}
            if u.retried_from:
                extra["retry_of"] = u.retried_from
            try:
                out = self.ray.get(ref)
            except Exception as err:  # noqa: BLE001 - classified below: the job's error or a lost device
                self._job_failed(u, d, err, seconds, extra)
                continue
            extra.update(engine=out.get("engine"), ran_on=out.get("device"))
            try:
                if not records_from(u.job, out):
                    raise EdgeCSPError("the benchmark returned no result for the artifact")
                self.nt.ok(d, u.job, out, seconds, extra)
            except Exception as err:  # noqa: BLE001 - a malformed result is that job's failure
                self.nt.fail(d, u.job, "failed", f"{type(err).__name__}: {err}", traceback.format_exc(), seconds,
                             extra)

    def _enforce_timeouts(self) -> None:
        """Per-job timeouts, measured here, on the head: they hold whatever happens on the device."""
        for ref, (u, d, t0) in list(self.running.items()):
            if time.monotonic() - t0 > self.suite.job_timeout_s:
                self.ray.cancel(ref, force=True)
                self.running.pop(ref)
                self.busy.discard(d)  # the forced cancel kills the job's worker process; the device is free
                self.nt.fail(d, u.job, "failed", f"timed out after {self.suite.job_timeout_s:g} s "
                             "(suite job_timeout_s)", seconds=time.monotonic() - t0)

    def _job_failed(self, u: Unit, d: str, err: BaseException, seconds: float, extra: dict) -> None:
        """A job whose ray.get raised: its own error, its process died, or its device is lost."""
        from ray.exceptions import RayTaskError

        msg, details = _describe_failure(err)
        if isinstance(err, RayTaskError):  # the job raised: its own failure, the device is fine
            self.nt.fail(d, u.job, "failed", msg, details, seconds, extra)
            return
        # The job's process or its whole node died. Unless Ray already says the node died, wait for
        # its health checks (about 15 s with Ray's defaults) before telling "device lost" from "the
        # job's process died".
        gone = type(err).__name__ == "NodeDiedError"
        deadline = time.monotonic() + 30
        while not gone and time.monotonic() < deadline:
            gone = self.devices[d].node_id not in alive_node_ids(self.ray)
            if not gone:
                time.sleep(1)
        if not gone:
            self.nt.fail(d, u.job, "failed", f"the job's process died ({msg})", details, seconds, extra)
            return
        self.lost.add(d)
        if self.suite.placement == "one-device" and self.suite.on_device_lost == "retry" and u.retried_from is None:
            self.progress(f"{u.job.name}: {LOST} ({d}); retrying once on another device of {u.job.target}")
            self.pending.insert(0, Unit(u.job, None, retried_from=d, excluded={d}))
            self.nt.run_id(d)  # the lost device's run stays in the night
            return
        self.nt.fail(d, u.job, "failed", f"{LOST} ({msg})", details, seconds, extra)


def _write_summary(result: FleetResult, out: Path) -> None:
    import json

    out.mkdir(parents=True, exist_ok=True)
    summary = {"night": result.night, "suite": result.suite.name, "status": result.status, "started": result.started,
               "finished": result.finished, "already_done": result.already_done,
               "no_device_targets": result.no_device_targets, "devices": result.devices,
               "jobs": [{"device": d, "job": o.record.job, "status": o.status, "fps": o.record.fps,
                         "ap50": o.record.ap50, "latency_p99_ms": o.record.latency_p99_ms, "reason": o.reason,
                         "regressed": o.regressed} for d, o in result.outcomes]}
    (out / "results.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
