"""The TensorRT runner's refusals and CUDA buffers (the GPU test skips with its reason)."""

from __future__ import annotations

import numpy as np
import pytest

from edgecsp.errors import EdgeCSPError


def test_engine_from_another_tensorrt_or_gpu_is_refused_with_the_rebuild_line():
    from edgecsp.backends.tensorrt.runner import check_engine_compatible

    built = {"tensorrt_version": "10.3.0", "gpu": "Orin", "compute_capability": "8.7"}
    here = {"gpu": "Xavier", "compute_capability": "7.2"}
    with pytest.raises(EdgeCSPError, match="built by TensorRT 10.3.0, this machine has TensorRT 8.5.2.*--from-bundle"):
        check_engine_compatible(built, "8.5.2", here)
    with pytest.raises(EdgeCSPError, match=r"built for Orin \(sm_87\), this GPU is Xavier \(sm_72\).*--from-bundle"):
        check_engine_compatible(built, "10.3.0", here)
    check_engine_compatible(built, "10.3.0", {"gpu": "Orin", "compute_capability": "8.7"})


@pytest.mark.tensorrt
def test_cuda_wrapper_moves_data_through_pinned_memory_on_gpu():
    """The typed CUDA wrapper on a real GPU: pinned host -> device -> pinned host on a stream."""
    from edgecsp.backends.tensorrt.runner import CudaRuntime, gpu_facts, load_cuda_module, pinned_array

    if load_cuda_module() is None:
        pytest.skip("needs cuda-python (pip install cuda-bindings)")
    facts = gpu_facts(0)
    if facts is None:
        pytest.skip("needs a CUDA GPU")
    cuda = CudaRuntime.load()
    cuda.set_device(0)
    shape, dtype = (4, 3, 320, 320), np.dtype(np.float32)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    src_ptr, dst_ptr, dev = cuda.malloc_host(nbytes), cuda.malloc_host(nbytes), cuda.malloc(nbytes)
    stream = cuda.stream_create()
    try:
        src, dst = pinned_array(src_ptr, shape, dtype), pinned_array(dst_ptr, shape, dtype)
        src[...] = np.random.default_rng(1).random(shape, dtype=np.float32)
        dst[...] = 0
        cuda.memcpy_htod_async(dev, src_ptr, nbytes, stream)
        cuda.memcpy_dtoh_async(dst_ptr, dev, nbytes, stream)
        cuda.stream_synchronize(stream)
        assert np.array_equal(src, dst)
        assert isinstance(cuda.stream_handle(stream), int)
        assert facts["compute_capability"].count(".") == 1 and facts["cuda_runtime"] > 0
    finally:
        cuda.stream_destroy(stream)
        cuda.free(dev)
        cuda.free_host(src_ptr)
        cuda.free_host(dst_ptr)
