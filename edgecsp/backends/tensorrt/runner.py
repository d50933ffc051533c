"""Running TensorRT engines: ``execute_async_v3`` on a CUDA stream, device buffers and pinned host
memory through NVIDIA's cuda-python bindings.

Why cuda-python rather than pycuda: it is NVIDIA's official binding, ships prebuilt wheels
(aarch64 included, so nothing compiles on a Jetson), follows each CUDA release, and needs no
CUDA context juggling (it uses the runtime API's primary context, as TensorRT does). pycuda builds
from source on Jetson and owns a context of its own.

cuda-python has no type information (Cython modules, no stubs), so every CUDA call goes through
``CudaRuntime`` below: a small typed wrapper, the one place that touches the untyped module. Its
calls are listed in ``CUDA_CALLS``; a test checks that list against the source here and, where
cuda-python is installed, against the module itself, so mypy's view of the typed wrapper stays
honest. TensorRT calls are typed by the tensorrt-stubs package (tests/test_tensorrt_types.py).

tensorrt and cuda-python are imported inside functions only.
"""

from __future__ import annotations

import ctypes
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgecsp.backends.base import Capabilities, Runner
from edgecsp.errors import EdgeCSPError

if TYPE_CHECKING:  # the stubs (tensorrt-stubs) for the checker; at run time imported where used
    import tensorrt as trt

CUDA_HINT = ("pip install 'cuda-python==<your CUDA major.minor>.*' (JetPack 6: 12.6, JetPack 5: 11.8/12.2; "
             "see docs/jetson.md)")
# Every cuda.bindings.runtime function CudaRuntime calls (checked by tests against the code and the module).
CUDA_CALLS = ("cudaGetErrorString", "cudaGetDeviceCount", "cudaSetDevice", "cudaGetDeviceProperties",
              "cudaRuntimeGetVersion", "cudaDriverGetVersion", "cudaMalloc", "cudaFree", "cudaMallocHost",
              "cudaFreeHost", "cudaStreamCreate", "cudaStreamDestroy", "cudaStreamSynchronize", "cudaMemcpyAsync")


def load_cuda_module() -> Any | None:
    """cuda-python's runtime module (new layout first, then the pre-12.6 one), or None."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # cuda-python < 12.6

        return cudart
    except ImportError:
        return None


class CudaRuntime:
    """The CUDA runtime calls the runner needs, typed; errors become one-line EdgeCSPErrors."""

    def __init__(self, module: Any):
        self._rt = module

    @classmethod
    def load(cls) -> CudaRuntime:
        module = load_cuda_module()
        if module is None:
            raise EdgeCSPError(f"cuda-python is not installed; {CUDA_HINT}")
        return cls(module)

    def _call(self, name: str, *args: Any) -> Any:
        out = getattr(self._rt, name)(*args)
        err, rest = (out[0], out[1:]) if isinstance(out, tuple) else (out, ())
        if int(err) != 0:
            msg = self._rt.cudaGetErrorString(err)
            text = msg[1].decode() if isinstance(msg, tuple) and isinstance(msg[1], bytes) else str(err)
            raise EdgeCSPError(f"CUDA {name} failed: {text}; check the GPU with nvidia-smi/tegrastats and the CUDA "
                               "driver matches cuda-python")
        return rest[0] if len(rest) == 1 else rest

    def device_count(self) -> int:
        try:
            return int(self._call("cudaGetDeviceCount"))
        except EdgeCSPError:
            return 0  # no driver or no GPU: the runtime reports it as an error

    def set_device(self, device: int) -> None:
        self._call("cudaSetDevice", device)

    def device_properties(self, device: int) -> tuple[str, int, int]:
        """(name, compute capability major, minor)."""
        prop = self._call("cudaGetDeviceProperties", device)
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return name.rstrip("\x00").strip(), int(prop.major), int(prop.minor)

    def runtime_version(self) -> int:
        return int(self._call("cudaRuntimeGetVersion"))

    def driver_version(self) -> int:
        return int(self._call("cudaDriverGetVersion"))

    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory: the only kind the copy engines DMA from asynchronously."""
        return int(self._call("cudaMallocHost", nbytes))

    def free_host(self, ptr: int) -> None:
        self._call("cudaFreeHost", ptr)

    def stream_create(self) -> Any:
        return self._call("cudaStreamCreate")

    def stream_handle(self, stream: Any) -> int:
        """The integer handle TensorRT's execute_async_v3 takes."""
        return int(stream)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    def memcpy_htod_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src, nbytes, kind, stream)

    def memcpy_dtoh_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst, src, nbytes, kind, stream)


def pinned_array(ptr: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A numpy view of page-locked host memory at ``ptr``."""
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = (ctypes.c_byte * nbytes).from_address(ptr)
    return np.frombuffer(memoryview(buf).cast("B"), dtype=dtype).reshape(shape)


def dims(d: Any) -> tuple[int, ...]:
    """A TensorRT Dims as a tuple (indexing works in every release; the 10.x stubs declare no __iter__)."""
    return tuple(int(d[i]) for i in range(len(d)))


# --------------------------------------------------------------------------------------------
# Environment facts


def load_tensorrt() -> Any | None:
    """The TensorRT Python module, or None.

    tensorrt-stubs installs a stub-only ``tensorrt/`` folder, so ``import tensorrt`` can succeed
    with an empty namespace package: TensorRT counts as present only when it provides a Builder.
    """
    try:
        import tensorrt as trt_mod
    except ImportError:
        return None
    except OSError:  # the wheel is there but libnvinfer is not loadable
        return None
    return trt_mod if hasattr(trt_mod, "Builder") and hasattr(trt_mod, "__version__") else None


def gpu_facts(device: int = 0) -> dict[str, Any] | None:
    """{"gpu", "compute_capability", "cuda_runtime", "cuda_driver"} of ``device``, None without a usable GPU."""
    module = load_cuda_module()
    if module is None:
        return None
    cuda = CudaRuntime(module)
    if cuda.device_count() <= device:
        return None
    name, major, minor = cuda.device_properties(device)
    return {"gpu": name, "compute_capability": f"{major}.{minor}", "cuda_runtime": cuda.runtime_version(),
            "cuda_driver": cuda.driver_version()}


REBUILD_HINT = ("rebuild it on this device from the bundle: python -m edgecsp.compile --target jetson "
                "--from-bundle <the bundle directory>")


def check_engine_compatible(built: dict, trt_version: str, gpu: dict[str, Any]) -> None:
    """Refuse an engine built by another TensorRT or for another GPU, before TensorRT does (in a log line)."""
    want_trt = str(built.get("tensorrt_version", ""))
    if want_trt and want_trt != trt_version:
        raise EdgeCSPError(f"engine was built by TensorRT {want_trt}, this machine has TensorRT {trt_version}; "
                           f"engines only load in the TensorRT that built them: {REBUILD_HINT}")
    want_cc = str(built.get("compute_capability", ""))
    if want_cc and want_cc != gpu["compute_capability"]:
        raise EdgeCSPError(f"engine was built for {built.get('gpu', '?')} (sm_{want_cc.replace('.', '')}), this GPU is "
                           f"{gpu['gpu']} (sm_{gpu['compute_capability'].replace('.', '')}): {REBUILD_HINT}")


# --------------------------------------------------------------------------------------------
# The runner


@dataclass
class _Tensors:
    """The engine's inputs and outputs: names, numpy dtypes, largest shapes; binding indices on
    the legacy (8.2) API."""

    inputs: list[str]
    outputs: list[str]
    dtypes: dict[str, np.dtype[Any]]
    max_shapes: dict[str, tuple[int, ...]]  # inputs: the profile's largest (a dynamic batch's max)
    index: dict[str, int]  # binding index (legacy API only; empty on the name-based API)


def _tensors(engine: trt.ICudaEngine) -> _Tensors:
    import tensorrt as trt

    t = _Tensors([], [], {}, {}, {})
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        (t.inputs if is_input else t.outputs).append(name)
        t.dtypes[name] = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
        shape = dims(engine.get_tensor_shape(name))
        if is_input and any(d < 0 for d in shape):  # dynamic batch: buffers for the profile's max
            shape = dims(engine.get_tensor_profile_shape(name, 0)[2])
        t.max_shapes[name] = shape
    return t


def _tensors_legacy(engine: Any) -> _Tensors:
    """The same from TensorRT 8.2's binding-index API (through Any: the 10.x stubs lack it)."""
    import tensorrt as trt

    t = _Tensors([], [], {}, {}, {})
    for i in range(engine.num_bindings):
        name = engine.get_binding_name(i)
        t.index[name] = i
        is_input = bool(engine.binding_is_input(i))
        (t.inputs if is_input else t.outputs).append(name)
        t.dtypes[name] = np.dtype(trt.nptype(engine.get_binding_dtype(i)))
        shape = dims(engine.get_binding_shape(i))
        if is_input and any(d < 0 for d in shape):
            shape = dims(engine.get_profile_shape(0, i)[2])
        t.max_shapes[name] = shape
    return t


class _Lane:
    """One query in flight: an execution context with its own CUDA stream, pinned host and device
    buffers. A context is not thread-safe; lanes of one engine run side by side."""

    def __init__(self, cuda: CudaRuntime, context: trt.IExecutionContext, tensors: _Tensors, v3: bool,
                 output: str, device_bufs: list[int], host_bufs: list[int]):
        self._cuda, self._context, self._t, self._v3, self._output = cuda, context, tensors, v3, output
        self.stream: Any = cuda.stream_create()
        self.host: dict[str, np.ndarray] = {}
        self.dev: dict[str, int] = {}
        try:
            self._allocate(device_bufs, host_bufs)
        except BaseException:
            self.close()  # the stream; the buffers are in the runner's lists
            raise

    def _allocate(self, device_bufs: list[int], host_bufs: list[int]) -> None:
        """Device and pinned host buffers for every tensor at its largest shape."""
        cuda, context, tensors = self._cuda, self._context, self._t
        shapes = dict(tensors.max_shapes)
        for name in tensors.inputs:  # outputs' shapes at the largest input (dynamic outputs resolve then)
            self._set_shape(name, shapes[name])
        for name in tensors.outputs:
            shapes[name] = self._shape(name)
        for name, shape in shapes.items():  # the runner frees what the lists hold
            dtype = tensors.dtypes[name]
            nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
            self.dev[name] = cuda.malloc(nbytes)
            device_bufs.append(self.dev[name])
            hptr = cuda.malloc_host(nbytes)
            host_bufs.append(hptr)
            self.host[name] = pinned_array(hptr, shape, dtype)
            if self._v3:
                context.set_tensor_address(name, self.dev[name])
        self.device_bytes = sum(a.nbytes for a in self.host.values())
        self._bindings = [0] * len(tensors.index)
        for name, i in tensors.index.items():
            self._bindings[i] = self.dev[name]

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        if self._v3:
            return bool(self._context.set_input_shape(name, list(shape)))
        legacy: Any = self._context
        return bool(legacy.set_binding_shape(self._t.index[name], shape))

    def _shape(self, name: str) -> tuple[int, ...]:
        if self._v3:
            return dims(self._context.get_tensor_shape(name))
        legacy: Any = self._context
        return dims(legacy.get_binding_shape(self._t.index[name]))

    def run(self, batch: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        """One chunk of at most the engine's batch: copy in, execute, copy out, synchronise."""
        name = self._t.inputs[0]
        shape = (len(batch), *input_shape[1:])
        if tuple(batch.shape) != shape:
            raise EdgeCSPError(f"engine input is {input_shape} (batch up to {input_shape[0]}), got {batch.shape}")
        host_in = self.host[name].reshape(-1)[: int(np.prod(shape))].reshape(shape)
        np.copyto(host_in, batch.astype(self._t.dtypes[name], copy=False))
        if not self._set_shape(name, shape):
            raise EdgeCSPError(f"engine does not accept input shape {shape}; its profile allows up to {input_shape}")
        self._cuda.memcpy_htod_async(self.dev[name], host_in.ctypes.data, host_in.nbytes, self.stream)
        handle = self._cuda.stream_handle(self.stream)
        if self._v3:
            ok = self._context.execute_async_v3(handle)
        else:
            legacy: Any = self._context
            ok = legacy.execute_async_v2(self._bindings, handle)
        if not ok:
            raise EdgeCSPError("TensorRT execution failed (see its log above); rebuild the engine from the bundle")
        out_shape = self._shape(self._output)
        host_out = self.host[self._output].reshape(-1)[: int(np.prod(out_shape))].reshape(out_shape)
        self._cuda.memcpy_dtoh_async(host_out.ctypes.data, self.dev[self._output], host_out.nbytes, self.stream)
        self._cuda.stream_synchronize(self.stream)  # results are the application's only once synchronised
        return host_out.astype(np.float32, copy=True)

    def close(self) -> None:
        if self.stream is not None:
            self._cuda.stream_destroy(self.stream)
            self.stream = None
        self.host = {}
        del self._context


class TensorRTRunner(Runner):
    """An engine on one GPU: pinned host <-> device copies and execute_async_v3 on a CUDA stream.

    ``run`` uses one execution context and stream; ``parallel_calls(n)`` adds contexts, each with
    its own stream and buffers, for n queries in flight. TensorRT 8.2 (JetPack 4.6: TX2, Nano)
    predates the name-based tensor API and execute_async_v3; there the runner uses the
    binding-index API and execute_async_v2 (through ``Any``, since the 10.x stubs no longer
    describe it).
    """

    def __init__(self, engine_path: Path, manifest: dict, device: int = 0, output: str = "predictions",
                 libraries: list[Path] | None = None):
        trt_mod = load_tensorrt()
        if trt_mod is None:
            raise EdgeCSPError("TensorRT is not installed here; on a Jetson it comes with JetPack "
                               "(sudo apt install python3-libnvinfer), elsewhere pip install tensorrt")
        cuda = CudaRuntime.load()
        gpu = gpu_facts(device)
        if gpu is None:
            raise EdgeCSPError(f"no CUDA GPU {device} here; a TensorRT engine needs the GPU it was built for")
        from edgecsp.manifest import Manifest

        built = Manifest.of(manifest).build_info.get("tensorrt", {})
        check_engine_compatible(built, str(trt_mod.__version__), gpu)
        self._cuda = cuda
        self._device_bufs: list[int] = []
        self._host_bufs: list[int] = []
        self._lanes: list[_Lane] = []
        self._output = output
        self._facts = {"gpu": gpu["gpu"], "compute_capability": gpu["compute_capability"],
                       "tensorrt": str(trt_mod.__version__), "precision": manifest.get("precision")}
        cuda.set_device(device)
        try:
            self._open(Path(engine_path), manifest, libraries or [])
        except BaseException:
            self.close()  # free what was allocated before the failure
            raise

    def _open(self, engine_path: Path, manifest: dict, libraries: list[Path]) -> None:
        """Load the engine, read its tensors, open the first lane."""
        data = engine_path.read_bytes()
        self._engine_bytes = len(data)
        engine = self._load_engine(data, engine_path.name, manifest, libraries)
        self._engine = engine
        self._v3 = hasattr(engine, "num_io_tensors")  # with execute_async_v3 on its contexts
        self._t = _tensors(engine) if self._v3 else _tensors_legacy(engine)
        if self._output not in self._t.outputs:
            raise EdgeCSPError(f"engine has no output {self._output!r} (outputs: {', '.join(self._t.outputs)}); "
                               "rebuild it with python -m edgecsp.compile")
        self.input_shape = self._t.max_shapes[self._t.inputs[0]]
        self._max_batch = self.input_shape[0]
        if any(d < 0 for d in self.input_shape):
            raise EdgeCSPError("engine input has a dynamic dimension other than the batch; rebuild it with edgecsp")
        self._dynamic = any(d < 0 for d in dims(self._input_dims()))
        self._lanes.append(self._new_lane(engine_path.name))

    def _load_engine(self, data: bytes, name: str, manifest: dict, libraries: list[Path]) -> trt.ICudaEngine:
        import tensorrt as trt

        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # EfficientNMS etc., from TensorRT's own install
        self._runtime = trt.Runtime(self._logger)
        # An engine may embed plugin code (version-compatible builds): never run it. Plugin
        # libraries come only from the user's --library, never from the artifact.
        if hasattr(self._runtime, "engine_host_code_allowed"):  # TensorRT >= 8.6; older cannot embed code
            self._runtime.engine_host_code_allowed = False
        for lib in libraries:
            try:
                self._runtime.get_plugin_registry().load_library(str(lib))
            except Exception as err:  # noqa: BLE001 - TensorRT raises its own types for a bad library
                raise EdgeCSPError(f"TensorRT cannot load plugin library {lib} ({err})") from None
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EdgeCSPError(f"TensorRT could not load {name} (built by another TensorRT version or for "
                               f"another GPU, or corrupt): {REBUILD_HINT}")
        return engine

    def _input_dims(self) -> Any:
        """The first input's dimensions as built (-1 where the batch is dynamic)."""
        name = self._t.inputs[0]
        if self._v3:
            return self._engine.get_tensor_shape(name)
        legacy: Any = self._engine
        return legacy.get_binding_shape(self._t.index[name])

    def _new_lane(self, name: str = "the engine") -> _Lane:
        context = self._engine.create_execution_context()
        if context is None:
            raise EdgeCSPError(f"TensorRT could not create an execution context for {name} "
                               "(out of GPU memory?); close other GPU programs and retry")
        return _Lane(self._cuda, context, self._t, self._v3, self._output, self._device_bufs, self._host_bufs)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._run_on(self._lanes[0], batch)

    def _run_on(self, lane: _Lane, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n > self._max_batch:
            return np.concatenate([lane.run(batch[i:i + self._max_batch], self.input_shape)
                                   for i in range(0, n, self._max_batch)])
        return lane.run(batch, self.input_shape)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(thread_safe=False, parallel=1, parallel_kind="cuda-streams")

    def parallel_calls(self, n: int) -> list[Callable[[np.ndarray], np.ndarray]]:
        """``n`` lanes (execution context + CUDA stream + buffers), one per thread."""
        if n > 1 and self._dynamic:
            # Contexts in use at once need an optimization profile each; edgecsp builds one.
            raise EdgeCSPError("this engine has a dynamic batch (one optimization profile), so TensorRT runs one "
                               "query at a time on it; benchmark it with --streams 1, or build a static batch")
        while len(self._lanes) < n:
            self._lanes.append(self._new_lane())
        return [functools.partial(self._run_on, lane) for lane in self._lanes[:max(1, n)]]

    def memory_bytes(self) -> int | None:
        """Device memory: each context's activation memory (device_memory_size_v2, or
        device_memory_size before TensorRT 10.1), the engine's weights (its serialized size, an
        upper bound: kernels are in it too) and the I/O buffers."""
        engine = self._engine
        if hasattr(engine, "device_memory_size_v2"):  # TensorRT >= 10.1: includes weight-streaming scratch
            per_context = int(engine.device_memory_size_v2)
        else:
            per_context = int(engine.device_memory_size)
        return (per_context * len(self._lanes) + self._engine_bytes
                + sum(lane.device_bytes for lane in self._lanes))

    def describe(self) -> dict:
        return dict(self._facts, outputs=list(self._t.outputs), max_batch=self._max_batch,
                    api="execute_async_v3" if self._v3 else "execute_async_v2", contexts=len(self._lanes))

    def close(self) -> None:
        cuda = getattr(self, "_cuda", None)
        if cuda is None:
            return
        for lane in self._lanes:  # contexts (and their streams) before the engine
            lane.close()
        self._lanes = []
        for ptr in self._device_bufs:
            cuda.free(ptr)
        for ptr in self._host_bufs:
            cuda.free_host(ptr)
        self._device_bufs, self._host_bufs = [], []
        for attr in ("_engine", "_runtime"):  # engine before runtime
            if hasattr(self, attr):
                delattr(self, attr)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", version)[:3])


def tensorrt_major(trt_mod: Any) -> int:
    return _version_tuple(str(trt_mod.__version__))[0]
