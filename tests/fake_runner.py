"""A runner that counts its calls and does a little GIL-releasing work: the harness and memory tests' stand-in
for an engine (timings are never asserted)."""

from __future__ import annotations

import threading
import time

import numpy as np

from edgecsp.backends.base import Capabilities, Runner


class FakeRunner(Runner):
    """Counts calls; ``run`` does a little numpy work (releases the GIL) and returns (N, 3, 11)."""

    input_shape = (1, 3, 8, 8)

    def __init__(self, thread_safe: bool = False, streams: int = 1, work: int = 20_000):
        self.calls = 0
        self.thread_safe, self.streams = thread_safe, streams
        self._lock = threading.Lock()
        self._a = np.random.default_rng(0).random(work)
        self.in_flight = self.max_in_flight = 0

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        np.sort(self._a)
        time.sleep(0.0005)  # lets other threads in, so streams really overlap
        with self._lock:
            self.in_flight -= 1
        return np.zeros((len(batch), 3, 11), np.float32)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(thread_safe=self.thread_safe, parallel=self.streams)

    def describe(self) -> dict:
        return {"backend": "fake"}


INPUTS = [np.zeros((1, 3, 8, 8), np.float32), np.ones((1, 3, 8, 8), np.float32)]
