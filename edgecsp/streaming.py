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
    step, workers = max(1, int(step)), max(1, int(workers))
    slots = threading.Semaphore(max(step, int(lookahead)))  # frames read but not yet handed back
    stop = threading.Event()
    prepared: queue.Queue = queue.Queue()  # futures in frame order
    results: queue.Queue = queue.Queue(maxsize=2)  # engine outputs waiting for the caller
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="edgecsp-prepare")

    def put(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for frame in frames:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                prepared.put(pool.submit(prepare, frame))
        except BaseException as err:  # noqa: BLE001 - the iterator's error, raised in the caller's thread
            failed: Future = Future()
            failed.set_exception(err)
            prepared.put(failed)
        finally:
            prepared.put(_END)  # also on stop: the engine thread must not wait for frames forever

    def run_engine() -> None:
        done = False
        while not done and not stop.is_set():
            chunk: list[tuple[np.ndarray, Any]] = []
            error = None
            while len(chunk) < step:
                try:
                    item = prepared.get(timeout=0.1)
                except queue.Empty:
                    if stop.is_set():
                        return
                    continue
                if item is _END:
                    done = True
                    break
                try:
                    chunk.append(item.result())
                except BaseException as err:  # noqa: BLE001 - handed to the caller in order
                    error, done = err, True
                    break
            try:
                if chunk and not put(results, (infer([t for t, _ in chunk]), [info for _, info in chunk])):
                    return
            except BaseException as err:  # noqa: BLE001 - the engine's error, raised in the caller's thread
                put(results, _Failed(err))
                return
            if error is not None:
                put(results, _Failed(error))
                return
        put(results, _END)

    reader = threading.Thread(target=read, name="edgecsp-reader", daemon=True)
    engine = threading.Thread(target=run_engine, name="edgecsp-engine", daemon=True)
    reader.start()
    engine.start()
    try:
        while True:
            item = results.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            rows, infos = item
            for row, info in zip(rows, infos):
                slots.release()
                yield row, info
    finally:
        stop.set()
        engine.join()  # the runner is free again when this returns (its current call finishes)
        pool.shutdown(wait=False)  # frames already submitted finish (at most lookahead); nothing waits
