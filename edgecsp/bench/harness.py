"""The measurement loop, after MLPerf Inference's method.

A run is: warm-up for ``warmup_s`` (results discarded), then queries until *both* ``duration_s``
has passed and ``min_queries`` have completed. Every query is timed around the call an
application makes, which returns only when the outputs are on the host, so a latency here is
one the application sees (no work enqueued ahead and timed without waiting).

Scenarios:
  latency     one stream: one query in flight at a time (MLPerf SingleStream); p50/p90/p99/max and FPS.
  throughput  as many queries in flight as the backend uses best (MLPerf Offline-like); FPS.
              OpenVINO runners (``compiled_model``): the plugin's optimal number of infer requests,
              each driven by its own thread with synchronous ``infer`` (which releases the GIL).
              Runners marked ``thread_safe`` with ``streams`` > 1: that many threads calling ``run``.
              Anything else: one stream (the backend parallelises inside the call).

Why not OpenVINO's AsyncInferQueue with a Python callback: the callback runs on OpenVINO's
executor threads, which then need the GIL; destroying the compiled model afterwards joins those
threads with the GIL held, and under load that deadlocks (seen with OpenVINO 2026.4 here). With
one synchronous request per thread no OpenVINO thread ever enters Python, and the queries in
flight are the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    mode: str  # "sync", "threads" or "infer-requests"
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


def first_inference_ms(runner: Any, batch: np.ndarray) -> float:
    """The first call after loading, timed alone (lazy initialisation, allocation, JIT)."""
    t0 = time.perf_counter_ns()
    runner.run(batch)
    return (time.perf_counter_ns() - t0) / 1e6


def _nothing() -> None:
    pass


def measure(runner: Any, inputs: list[np.ndarray], settings: Settings,
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
    if getattr(runner, "compiled_model", None) is not None:
        calls = _openvino_requests(runner.compiled_model, settings.streams)
        return _threads(calls, inputs, settings, batch, hooks, mode="infer-requests")
    streams = settings.streams or int(getattr(runner, "streams", 1) or 1)
    if streams > 1:
        if not getattr(runner, "thread_safe", False):
            raise EdgeCSPError(f"{type(runner).__name__} is not safe to call from {streams} threads; "
                               "benchmark it with --streams 1")
        return _threads([runner.run] * streams, inputs, settings, batch, hooks)
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


def _openvino_requests(compiled_model: Any, n: int | None) -> list[Callable[[np.ndarray], np.ndarray]]:
    """One synchronous call per infer request. The input is read in place (an application hands
    its frame over without a copy); the output is copied out once, as the application needs it."""
    n = n or int(compiled_model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def make(request: Any) -> Callable[[np.ndarray], np.ndarray]:
        def call(x: np.ndarray) -> np.ndarray:
            request.infer({0: x}, share_inputs=True, share_outputs=True)
            return request.get_output_tensor(0).data.copy()  # the request reuses its output buffer

        return call

    return [make(compiled_model.create_infer_request()) for _ in range(max(1, n))]


def _threads(calls: list[Callable[[np.ndarray], Any]], inputs: list[np.ndarray], settings: Settings, batch: int,
             hooks, mode: str = "threads") -> Measurement:
    """One thread per call, each a synchronous loop; the backend must release the GIL in its call."""
    streams = len(calls)
    inputs = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
    n = len(inputs)
    clock = time.perf_counter_ns
    state = {"measuring": False, "stop": False, "count": 0, "deadline": 0}
    lock = threading.Lock()
    per_thread: list[list[int]] = [[] for _ in range(streams)]
    warm_counts = [0] * streams
    ends = [0] * streams
    errors: list[BaseException] = []
    barrier = threading.Barrier(streams + 1)

    def worker(w: int) -> None:
        call = calls[w]
        try:
            i = w
            barrier.wait()
            while not state["measuring"]:
                call(inputs[i % n])
                i += 1
                warm_counts[w] += 1
            lat = per_thread[w]
            while not state["stop"]:
                t0 = clock()
                call(inputs[i % n])
                t1 = clock()
                lat.append(t1 - t0)
                ends[w] = t1
                i += 1
                with lock:
                    state["count"] += 1
                    if t1 >= state["deadline"] and state["count"] >= settings.min_queries:
                        state["stop"] = True
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)
            state["stop"] = state["measuring"] = True

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(streams)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(settings.warmup_s)
    hooks[0]()
    start = clock()
    state["deadline"] = start + int(settings.duration_s * 1e9)
    state["measuring"] = True
    for t in threads:
        t.join()
    hooks[1]()
    if errors:
        raise errors[0]
    lat = np.array([v for lst in per_thread for v in lst], dtype=np.int64)
    return Measurement("throughput", batch, lat, (max(ends) - start) / 1e9, streams, mode, sum(warm_counts))
