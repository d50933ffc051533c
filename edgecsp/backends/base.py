"""The one small interface every engine family implements: build an artifact, open a runner.

A backend module imports its library only inside its methods, so a missing backend fails only
where it is used, with a line that says how to install it.
"""

from __future__ import annotations

import ctypes
import os
import threading
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from edgecsp.errors import EdgeCSPError

if TYPE_CHECKING:  # typing.Self is 3.11+; only the type checker reads it
    from typing_extensions import Self


def import_library(module: str, what: str, install_hint: str | None = None):
    """Import a backend's library at the point of use; missing, it is one line naming the fix
    (by default the install extra that brings it, edgecsp.extras)."""
    import importlib

    from edgecsp.extras import install_hint as extra_hint

    install_hint = install_hint or extra_hint(module)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise EdgeCSPError(f"{what} is not installed ({err}); install it with {install_hint}") from None


def static_batch(model_or_shape: Any) -> int:
    """The input's fixed batch size, or 0 when the batch dimension is dynamic (symbolic, -1, unset).

    Takes the first input as each library gives it: an ONNX ``ModelProto``, an OpenVINO model or
    compiled model, or a shape (ONNX Runtime's, where a dynamic dimension is a name or None).
    """
    if hasattr(model_or_shape, "graph"):  # ONNX
        dim = model_or_shape.graph.input[0].type.tensor_type.shape.dim[0]
        first = dim.dim_value if dim.HasField("dim_value") else None
    elif hasattr(model_or_shape, "input"):  # OpenVINO
        ov_dim = model_or_shape.input(0).get_partial_shape()[0]
        first = ov_dim.get_length() if ov_dim.is_static else None
    else:
        first = model_or_shape[0] if len(model_or_shape) else None
    return first if isinstance(first, int) and first > 0 else 0


def run_in_static_batches(infer: Callable[[np.ndarray], np.ndarray], batch: np.ndarray,
                          static_batch: int) -> np.ndarray:
    """Run any N on an engine with a static batch (0: dynamic): split, pad the last chunk, trim."""
    if not static_batch or len(batch) == static_batch:
        return infer(batch)
    outs = []
    for i in range(0, len(batch), static_batch):
        chunk = batch[i:i + static_batch]
        n = len(chunk)
        if n < static_batch:
            chunk = np.concatenate([chunk, np.zeros((static_batch - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(infer(chunk)[:n])
    return np.concatenate(outs)


# A function from a preprocessed NCHW float32 batch to the decoded output contract (N, K, 5 + C).
PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class BuildRequest:
    onnx_path: Path  # the FP32 export: decode in graph, input "images", output "predictions"
    precision: str  # one of the backend's precisions
    profile: Any  # edgecsp.targets.TargetProfile
    out_dir: Path  # write engine files here (a staging directory; the pipeline moves it into place)
    calibration: Any = None  # edgecsp.calibration.CalibrationSet for int8, else None
    # For accuracy-aware quantization: AP50 (fraction) of a predict function on the validation set.
    validate: Callable[[PredictFn], float] | None = None
    max_ap50_drop: float = 0.01  # tolerance as a fraction (0.01 = 1 point)
    options: dict = field(default_factory=dict)  # profile's [build] table
    # The validation set (edgecsp.data.coco dataset) and how many of its images verify: a Jetson
    # bundle stores that subset with the host's reference outputs (edgecsp.verifyset).
    dataset: Any = None
    verify_images: int | None = None


@dataclass
class BuildResult:
    engine: str  # main engine file name, relative to out_dir (e.g. "model.xml", "model.onnx")
    files: list[str]  # every file written, relative to out_dir
    info: dict = field(default_factory=dict)  # backend facts for the manifest (quantization details...)


# ------------------------------------------------------------------------------------------
# Build options: one dataclass per backend for its [build] table


def option(default: Any, kind: str, *, low: float | None = None, high: float | None = None,
           choices: Sequence[str] | None = None, fold: str = "", profile: bool = True) -> Any:
    """A field of a BuildOptions dataclass: ``kind`` as edgecsp.tomlfile checks it ("str", "int",
    "number", "bool"; "any": not checked), its bounds or choices; ``fold`` "lower"/"upper" folds a
    string's case first; ``profile=False``: set by the pipeline (the calibration recipe), never by a
    [build] table."""
    return field(default=default, metadata={"kind": kind, "low": low, "high": high, "choices": choices,
                                            "fold": fold, "profile": profile})


@dataclass(frozen=True)
class BuildOptions:
    """A backend's [build] options. A key it does not know is refused by name (a misspelt option
    silently ignored is a wrong build), and every value is type-checked."""

    backend: ClassVar[str] = ""

    @classmethod
    def names(cls, profile_only: bool = True) -> list[str]:
        return [f.name for f in fields(cls) if f.metadata.get("profile", True) or not profile_only]

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> Self:
        """From a profile's [build] table (or a bundle's copy of it): only [build] keys."""
        return cls._parse(table, where, cls.names())

    @classmethod
    def from_request(cls, options: dict[str, Any] | None) -> Self:
        """From BuildRequest.options: the [build] table plus what the pipeline adds (the recipe)."""
        return cls._parse(dict(options or {}), "build request", cls.names(profile_only=False))

    @classmethod
    def _parse(cls, table: dict[str, Any], where: str, known: list[str]) -> Self:
        from edgecsp.tomlfile import Table, key_names

        unknown = sorted(set(table) - set(known), key=str)
        if unknown:
            raise EdgeCSPError(f"{where}: unknown {cls.backend} build option {key_names(unknown[:1])!r}"
                               f"{' (and ' + key_names(unknown[1:]) + ')' if unknown[1:] else ''}; "
                               f"known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in table:
                continue
            meta, value = f.metadata, table[f.name]
            if meta["fold"] and isinstance(value, str):
                value = value.lower() if meta["fold"] == "lower" else value.upper()
            if meta["kind"] != "any":
                value = Table({f.name: value}, where).get(f.name, meta["kind"], low=meta["low"], high=meta["high"],
                                                           choices=meta["choices"])
            values[f.name] = value
        return cls(**values)

    @classmethod
    def given(cls, options: dict[str, Any] | None) -> dict[str, Any]:
        """The [build] keys present in BuildRequest.options, checked: what a manifest records."""
        checked = cls.from_request(options)
        return {k: getattr(checked, k) for k in cls.names() if k in (options or {})}


# ------------------------------------------------------------------------------------------
# Runners


@dataclass(frozen=True)
class Capabilities:
    """What a runner offers beyond ``run`` on one thread (the benchmark harness reads only this).

    thread_safe:  ``run`` may be called from several threads at once (ONNX Runtime's session).
    parallel:     how many queries in flight the engine suggests for throughput (OpenVINO's
                  optimal number of infer requests, ORT's streams in throughput mode); 1: one.
    parallel_kind what ``parallel_calls`` hands out: "threads" (``run`` itself, thread-safe),
                  "infer-requests" (one OpenVINO infer request each), "cuda-streams" (one TensorRT
                  execution context and CUDA stream each).
    async_queue:  ``infer_queue`` gives OpenVINO's AsyncInferQueue (callbacks on its threads).
    """

    thread_safe: bool = False
    parallel: int = 1
    parallel_kind: str = "threads"
    async_queue: bool = False


class Runner(ABC):
    """Runs an engine on preprocessed batches; returns the decoded contract (N, K, 5 + C)."""

    input_shape: tuple[int, ...]

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities()

    def parallel_calls(self, n: int) -> list[Callable[[np.ndarray], np.ndarray]]:
        """``n`` functions like ``run`` that may run at the same time, each from its own thread."""
        if n > 1 and not self.capabilities.thread_safe:
            raise EdgeCSPError(f"{type(self).__name__} is not safe to call from {n} threads; "
                               "benchmark it with --streams 1")
        return [self.run] * max(1, n)

    def infer_queue(self, n_requests: int | None = None) -> Any:
        """An asynchronous queue of requests, where ``capabilities.async_queue`` says there is one."""
        raise EdgeCSPError(f"{type(self).__name__} has no asynchronous request queue; use parallel_calls")

    def memory_bytes(self) -> int | None:
        """Bytes the engine holds (weights and working memory), as the backend can tell; None: unknown."""
        return None

    def close(self) -> None:
        pass

    def describe(self) -> dict:
        """Backend facts for reports: device name, threads, precision actually used..."""
        return {}

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Backend(ABC):
    name: str
    precisions: tuple[str, ...]
    install_hint: str  # e.g. "pip install 'edgecsp[host]'"
    build_options: ClassVar[type[BuildOptions]] = BuildOptions  # its [build] table

    @abstractmethod
    def version(self) -> str:
        """The backend library's version; raises EdgeCSPError with install_hint when missing."""

    @abstractmethod
    def build(self, request: BuildRequest) -> BuildResult: ...

    @abstractmethod
    def open_runner(self, engine_path: Path, manifest: dict, **options: Any) -> Runner: ...

    def engine_facts(self, engine_path: Path) -> Any:
        """The engine's inputs, outputs and weight precision (edgecsp.binding.EngineFacts), read from
        the file itself to check the manifest against; None where only the runtime can read it."""
        if Path(engine_path).suffix == ".onnx":
            from edgecsp.binding import onnx_facts

            return onnx_facts(Path(engine_path))
        return None


# ------------------------------------------------------------------------------------------
# Memory an engine takes in this process (CPU backends)


def process_rss() -> int:
    """Resident bytes of this process: psutil where installed (host extra), else /proc (Linux, Jetson)."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            return 0
        return pages * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


_MALLINFO2: list[Callable[[], Any] | None] = []  # looked up once, on first use


def _mallinfo2() -> Callable[[], Any] | None:
    if not _MALLINFO2:
        try:
            fn = ctypes.CDLL(None).mallinfo2  # the process's own libc; glibc >= 2.33 has it
            fn.restype = _MallInfo2
        except (OSError, AttributeError):  # older glibc (JetPack 5: 2.31), musl, macOS
            fn = None
        _MALLINFO2.append(fn)
    return _MALLINFO2[0]


def heap_in_use() -> int | None:
    """Bytes the C heap has handed out and not freed (glibc's mallinfo2), None where unknown."""
    fn = _mallinfo2()
    if fn is None:
        return None
    info = fn()
    return int(info.uordblks + info.hblkhd)


class MemoryMeter:
    """What an engine took while it loaded and ran its first query: the larger of the C heap's
    growth (counts memory the allocator reused, which resident memory does not show) and the
    resident memory's growth (counts mapped weight files, which the heap does not). Both are lower
    bounds; other threads allocating at the same time blur them a little."""

    def __init__(self) -> None:
        self.heap = 0
        self.rss = 0
        self.first_query_pending = True
        self._lock = threading.Lock()

    @contextmanager
    def measure(self) -> Iterator[None]:
        heap, rss = heap_in_use(), process_rss()
        try:
            yield
        finally:
            after = heap_in_use()
            if heap is not None and after is not None:
                self.heap += max(0, after - heap)
            self.rss += max(0, process_rss() - rss)

    def first_query(self, call: Callable[[], np.ndarray]) -> np.ndarray:
        """Run the engine's first query under the meter (its working memory is allocated then)."""
        with self._lock:
            pending, self.first_query_pending = self.first_query_pending, False
        if not pending:
            return call()
        with self.measure():
            return call()

    @property
    def bytes(self) -> int:
        return max(self.heap, self.rss)
