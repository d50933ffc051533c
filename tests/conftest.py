"""Shared fixtures. Tests keep torch to one thread: CI machines are small and shared, and
several threads spin-waiting on two cores make the suite several times slower."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session", autouse=True)
def _single_thread_torch():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Generated data and build caches go to a per-run folder unless the caller chose one."""
    if "EDGECSP_CACHE_DIR" not in os.environ:
        os.environ["EDGECSP_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgecsp-cache"))
    yield


@pytest.fixture(scope="session")
def shapes_small(tmp_path_factory) -> dict[str, Path]:
    """A small shapes set (48 train, 40 val) shared by the tests that need real images."""
    from edgecsp.data.shapes import generate_shapes

    return generate_shapes(tmp_path_factory.mktemp("shapes"), n_train=48, n_val=40, seed=123, workers=1)


def _compile_small(root: Path, target: str, data: Path) -> Path:
    from edgecsp.pipeline import CompileOptions, compile_artifact

    out, _ = compile_artifact(CompileOptions(target=target, precision="fp32", data=data, out=root / target,
                                             verify_images=4), progress=lambda line: None)
    return out


@pytest.fixture(scope="session")
def ort_artifact(tmp_path_factory, shapes_small) -> Path:
    """A real FP32 ONNX Runtime artifact of the demo detector (directory; its .tar.gz beside it)."""
    return _compile_small(tmp_path_factory.mktemp("ort-artifact"), "onnxruntime", shapes_small["val"])


@pytest.fixture(scope="session")
def ov_artifact(tmp_path_factory, shapes_small) -> Path:
    """A real FP32 OpenVINO artifact of the demo detector."""
    return _compile_small(tmp_path_factory.mktemp("ov-artifact"), "intel-cpu", shapes_small["val"])


@pytest.fixture(scope="session")
def tiny_artifact(tmp_path_factory, shapes_small):
    """A real artifact: a 64x64 detector checkpoint exported to ONNX and converted to OpenVINO IR."""
    ov = pytest.importorskip("openvino")
    import numpy as np
    import torch

    from edgecsp.artifact import finalize, staging_dir
    from edgecsp.bench import bandwidth
    from edgecsp.models.checkpoint import describe, save_checkpoint
    from edgecsp.models.detector import build_detector
    from edgecsp.onnx_writer import export_onnx
    from edgecsp.pipeline import model_hash_of
    from edgecsp.targets import load_target

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = build_detector("csp-tiny-efm", num_classes=6, input_size=64).eval()
    from edgecsp.data.coco import resolve_dataset

    names = resolve_dataset(shapes_small["val"]).class_names  # evaluated on that set: its classes, by name
    ckpt = save_checkpoint(root / "tiny.safetensors", model, describe(model, names, name="tiny"))
    rng = np.random.default_rng(0)
    export_onnx(model, root / "tiny.onnx", batch=1, input_size=64,
                parity_images=[rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(2)])
    out = root / "tiny-intel-cpu-fp32"
    staging = staging_dir(out)
    ov.save_model(ov.convert_model(str(root / "tiny.onnx")), str(staging / "model.xml"), compress_to_fp16=False)
    c = model.config
    k = sum((64 // s) ** 2 for s in c.strides) * (len(c.anchors) // len(c.strides))
    from dataclasses import asdict

    manifest = {"model": {"name": "tiny", "source": str(ckpt), "hash": model_hash_of(model), "class_names": names,
                          "num_classes": 6, "input_size": [64, 64], "config": asdict(c)},
                "target": load_target("intel-cpu").as_dict(),
                "backend": {"name": "openvino", "version": ov.__version__,
                            "info": {"precision": "fp32", "inference_precision": "f32", "device": "CPU",
                                     "performance_hint": "LATENCY"}},
                "precision": "fp32", "engine": "model.xml",
                "inputs": [{"name": "images", "shape": [1, 3, 64, 64], "dtype": "float32"}],
                "outputs": [{"name": "predictions", "shape": [1, k, 11], "dtype": "float32"}]}
    finalize(staging, out, manifest, tarball=False)
    # A small platform peak in the (per-run) cache: the CLI reads it instead of measuring for seconds.
    bandwidth.platform_peak(array_mb=2, repeats=1, matrix=128, compute_seconds=0.01)
    return {"artifact": out, "val": shapes_small["val"], "root": root}
