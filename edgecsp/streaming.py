"""The predictor's pipeline: frames in, engine outputs out, in order, with the stages overlapped.

Three kinds of thread work at once, each on a different frame:
  reader     pulls the next frame from the caller's iterator (a video decoder runs here) and
             hands it to the prepare pool;
  prepare    ``workers`` threads decode and letterbox frames (OpenCV and Pillow release the GIL);
  engine     one thread gathers prepared frames into engine batches, in order, and runs them
             (every backend's call releases the GIL);
and the caller's thread takes the outputs and postprocesses them while the engine runs the next
batch. At most ``lookahead`` frames are in flight, so a long video is never read ahead into memory.
An error in any stage (a bad image, an engine failure) is raised in the caller's thread at that
frame's place, after the frames before it; stopping early (closing the iterator) stops the threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def pipeline(frames: Iterable[Any], prepare: Callable[[Any], tuple[np.ndarray, Any]],
             infer: Callable[[list[np.ndarray]], np.ndarray], step: int, workers: int = 2,
             lookahead: int = 8) -> Iterator[tuple[np.ndarray, Any]]:
    """Yield ``(engine output row, info)`` per frame, in order: ``prepare(frame) -> (tensor, info)``
    on the pool, ``infer(tensors) -> rows`` on ``step`` frames at a time (fewer only at the end)."""
    return _Pipeline(frames, prepare, infer, max(1, int(step)), max(1, int(workers)), int(lookahead)).results()


class _Pipeline:
    """A reader thread submits frames to the prepare pool (at most ``lookahead`` ahead), an engine
    thread runs them ``step`` at a time, and the caller's thread takes the outputs in order."""

    def __init__(self, frames: Iterable[Any], prepare: Callable[[Any], tuple[np.ndarray, Any]],
                 infer: Callable[[list[np.ndarray]], np.ndarray], step: int, workers: int, lookahead: int):
        self.frames, self.prepare, self.infer, self.step = frames, prepare, infer, step
        self.slots = threading.Semaphore(max(step, lookahead))  # frames read but not yet handed back
        self.stop = threading.Event()
        self.prepared: queue.Queue = queue.Queue()  # futures in frame order
        self.outputs: queue.Queue = queue.Queue(maxsize=2)  # engine outputs waiting for the caller
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecsp-prepare")

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self) -> None:
        try:
            for frame in self.frames:
                while not self.slots.acquire(timeout=0.1):
                    if self.stop.is_set():
                        return
                if self.stop.is_set():
                    return
                self.prepared.put(self.pool.submit(self.prepare, frame))
        except BaseException as err:  # noqa: BLE001 - the iterator's error, raised in the caller's thread
            failed: Future = Future()
            failed.set_exception(err)
            self.prepared.put(failed)
        finally:
            self.prepared.put(_END)  # also on stop: the engine thread must not wait for frames forever

    def _chunk(self) -> tuple[list[tuple[np.ndarray, Any]], BaseException | None, bool] | None:
        """Up to ``step`` prepared frames: (chunk, a frame's error, the frames ended); None on stop."""
        chunk: list[tuple[np.ndarray, Any]] = []
        while len(chunk) < self.step:
            try:
                item = self.prepared.get(timeout=0.1)
            except queue.Empty:
                if self.stop.is_set():
                    return None
                continue
            if item is _END:
                return chunk, None, True
            try:
                chunk.append(item.result())
            except BaseException as err:  # noqa: BLE001 - handed to the caller in order
                return chunk, err, True
        return chunk, None, False

    def _run_engine(self) -> None:
        done = False
        while not done and not self.stop.is_set():
            got = self._chunk()
            if got is None:
                return
            chunk, error, done = got
            try:
                if chunk and not self._put(self.outputs, (self.infer([t for t, _ in chunk]),
                                                          [info for _, info in chunk])):
                    return
            except BaseException as err:  # noqa: BLE001 - the engine's error, raised in the caller's thread
                self._put(self.outputs, _Failed(err))
                return
            if error is not None:
                self._put(self.outputs, _Failed(error))
                return
        self._put(self.outputs, _END)

    def results(self) -> Iterator[tuple[np.ndarray, Any]]:
        reader = threading.Thread(target=self._read, name="edgecsp-reader", daemon=True)
        engine = threading.Thread(target=self._run_engine, name="edgecsp-engine", daemon=True)
        reader.start()
        engine.start()
        try:
            while True:
                item = self.outputs.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                rows, infos = item
                for row, info in zip(rows, infos):
                    self.slots.release()
                    yield row, info
        finally:
            self.stop.set()
            engine.join()  # the runner is free again when this returns (its current call finishes)
            self.pool.shutdown(wait=False)  # frames already submitted finish (at most lookahead); nothing waits
