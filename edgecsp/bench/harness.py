"""The measurement loop, after MLPerf Inference's method.

A run is: warm-up for ``warmup_s`` (results discarded), then queries until *both* ``duration_s``
has passed and ``min_queries`` have completed. Every query is timed around the call an
application makes, which returns only when the outputs are on the host, so a latency here is
one the application sees (no work enqueued ahead and timed without waiting).

Scenarios:
  latency     one stream: one query in flight at a time (MLPerf SingleStream); p50/p90/p99/max and FPS.
  throughput  as many queries in flight as the backend uses best (MLPerf Offline-like); FPS.
              ``--streams`` or else the runner's ``capabilities.parallel`` queries in flight, each
              driven by its own thread through ``runner.parallel_calls(n)``: one OpenVINO infer
              request or TensorRT execution context each, or ``run`` itself where the runner is
              thread-safe (ONNX Runtime; one such: a single stream, the backend parallelises inside
              the call).

The harness uses only the Runner interface (edgecsp.backends.base): ``run``, ``capabilities``,
``parallel_calls``. Why not OpenVINO's AsyncInferQueue (``infer_queue``) with a Python callback:
the callback runs on OpenVINO's executor threads, which then need the GIL; destroying the
compiled model afterwards joins those threads with the GIL held, and under load that deadlocks
(seen with OpenVINO 2026.4 here). With one synchronous request per thread no OpenVINO thread
ever enters Python, and the queries in flight are the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecsp.backends.base import Runner
from edgecsp.errors import EdgeCSPError

SCENARIOS = ("latency", "throughput")


@dataclass
class Settings:
    scenario: str = "latency"
    duration_s: float = 10.0
    warmup_s: float = 2.0
    min_queries: int = 200
    streams: int | None = None  # throughput: parallel requests; None: the backend's best

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise EdgeCSPError(f"unknown scenario {self.scenario!r}; use {' or '.join(SCENARIOS)}")
        if self.duration_s < 0 or self.warmup_s < 0:
            raise EdgeCSPError(f"duration ({self.duration_s}) and warm-up ({self.warmup_s}) must be >= 0 seconds")
        if self.min_queries < 1:
            raise EdgeCSPError(f"min_queries must be at least 1, got {self.min_queries}")
        if self.streams is not None and self.streams < 1:
            raise EdgeCSPError(f"streams must be at least 1, got {self.streams}")


@dataclass
class Measurement:
    scenario: str
    batch: int  # frames per query
    latencies_ns: np.ndarray  # one per measured query, completion order
    wall_s: float  # first measured query start to last completion
    streams: int  # queries in flight
    mode: str  # "sync", or the runner's capabilities.parallel_kind ("threads", "infer-requests", "cuda-streams")
    warmup_queries: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def queries(self) -> int:
        return len(self.latencies_ns)

    @property
    def frames(self) -> int:
        return self.queries * self.batch

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def latency_ms(self) -> dict[str, float]:
        ms = self.latencies_ns / 1e6
        if not len(ms):
            return {k: float("nan") for k in ("p50", "p90", "p99", "max", "min", "mean")}
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(ms.max()),
                "min": float(ms.min()), "mean": float(ms.mean())}


# A query taking this many times the median is a stall (the process was descheduled, or threads
# spin-waited for a core another process held): reported, not averaged away.
STALL_FACTOR = 5.0


def stall_stats(latencies_ns: np.ndarray) -> dict[str, Any]:
    """Stalls of one measurement: queries over STALL_FACTOR x the median, their share of the wall
    time, and the p99/p50 ratio (near 1 on a quiet machine)."""
    lat = np.asarray(latencies_ns, dtype=np.float64)
    if not len(lat):
        return {"count": 0, "fraction_of_time": 0.0, "p99_over_p50": None, "worst_over_median": None}
    med = float(np.median(lat))
    slow = lat > STALL_FACTOR * med
    p99 = float(np.percentile(lat, 99))
    return {"count": int(slow.sum()), "factor": STALL_FACTOR,
            "fraction_of_time": round(float(lat[slow].sum() / lat.sum()), 4),
            "p99_over_p50": round(p99 / med, 3) if med else None,
            "worst_over_median": round(float(lat.max()) / med, 2) if med else None}


def first_inference_ms(runner: Runner, batch: np.ndarray) -> float:
    """The first call after loading, timed alone (lazy initialisation, allocation, JIT)."""
    t0 = time.perf_counter_ns()
    runner.run(batch)
    return (time.perf_counter_ns() - t0) / 1e6


def _nothing() -> None:
    pass


def measure(runner: Runner, inputs: list[np.ndarray], settings: Settings,
            on_start: Callable[[], None] = _nothing, on_end: Callable[[], None] = _nothing) -> Measurement:
    """Run one scenario on ``runner`` cycling over ``inputs`` (preprocessed batches of one shape).

    ``on_start`` / ``on_end`` run right before and after the measured phase (hardware counters).
    """
    if not inputs:
        raise EdgeCSPError("the benchmark needs at least one input batch")
    batch = int(inputs[0].shape[0])
    hooks = (on_start, on_end)
    if settings.scenario == "latency":
        return _sync_loop(runner.run, inputs, settings, batch, hooks)
    capabilities = runner.capabilities
    streams = settings.streams or capabilities.parallel
    if streams > 1 or capabilities.parallel_kind != "threads":  # requests or CUDA streams: even one is its own
        calls = runner.parallel_calls(streams)
        return _threads(calls, inputs, settings, batch, hooks, mode=capabilities.parallel_kind)
    m = _sync_loop(runner.run, inputs, settings, batch, hooks)
    m.scenario = "throughput"
    return m


def _sync_loop(call, inputs: list[np.ndarray], settings: Settings, batch: int, hooks) -> Measurement:
    n = len(inputs)
    clock = time.perf_counter_ns
    i = 0
    warm_end = clock() + int(settings.warmup_s * 1e9)
    while clock() < warm_end:
        call(inputs[i % n])
        i += 1
    warm = i
    # Preallocated, grown by doubling: no per-query allocation inside the timed loop.
    lat = np.empty(max(1024, settings.min_queries), dtype=np.int64)
    k = 0
    hooks[0]()
    start = clock()
    deadline = start + int(settings.duration_s * 1e9)
    min_q = settings.min_queries
    while True:
        x = inputs[i % n]
        t0 = clock()
        call(x)
        t1 = clock()
        if k == len(lat):
            lat = np.concatenate([lat, np.empty_like(lat)])
        lat[k] = t1 - t0
        k += 1
        i += 1
        if t1 >= deadline and k >= min_q:
            break
    hooks[1]()
    return Measurement(settings.scenario, batch, lat[:k].copy(), (t1 - start) / 1e9, 1, "sync", warm)


class _Streams:
    """The state the threads of a throughput run share: one synchronous loop per call."""

    def __init__(self, calls: list[Callable[[np.ndarray], Any]], inputs: list[np.ndarray], min_queries: int):
        self.calls, self.inputs, self.min_queries = calls, inputs, min_queries
        n = len(calls)
        self.measuring = self.stop = False
        self.count = self.deadline = 0
        self.lock = threading.Lock()
        self.latencies: list[list[int]] = [[] for _ in range(n)]
        self.warm_counts = [0] * n
        self.ends = [0] * n
        self.errors: list[BaseException] = []
        self.barrier = threading.Barrier(n + 1)

    def worker(self, w: int) -> None:
        call, inputs, n, clock = self.calls[w], self.inputs, len(self.inputs), time.perf_counter_ns
        try:
            i = w
            self.barrier.wait()
            while not self.measuring:
                call(inputs[i % n])
                i += 1
                self.warm_counts[w] += 1
            lat = self.latencies[w]
            while not self.stop:
                t0 = clock()
                call(inputs[i % n])
                t1 = clock()
                lat.append(t1 - t0)
                self.ends[w] = t1
                i += 1
                with self.lock:
                    self.count += 1
                    if t1 >= self.deadline and self.count >= self.min_queries:
                        self.stop = True
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            self.errors.append(err)
            self.stop = self.measuring = True


def _threads(calls: list[Callable[[np.ndarray], Any]], inputs: list[np.ndarray], settings: Settings, batch: int,
             hooks, mode: str = "threads") -> Measurement:
    """One thread per call, each a synchronous loop; the backend must release the GIL in its call."""
    inputs = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
    run = _Streams(calls, inputs, settings.min_queries)
    threads = [threading.Thread(target=run.worker, args=(w,), daemon=True) for w in range(len(calls))]
    for t in threads:
        t.start()
    run.barrier.wait()
    time.sleep(settings.warmup_s)
    hooks[0]()
    start = time.perf_counter_ns()
    run.deadline = start + int(settings.duration_s * 1e9)
    run.measuring = True
    for t in threads:
        t.join()
    hooks[1]()
    if run.errors:
        raise run.errors[0]
    lat = np.array([v for lst in run.latencies for v in lst], dtype=np.int64)
    return Measurement("throughput", batch, lat, (max(run.ends) - start) / 1e9, len(calls), mode,
                       sum(run.warm_counts))
