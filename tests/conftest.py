"""Shared fixtures. Tests keep torch to one thread: CI machines are small and shared, and
several threads spin-waiting on two cores make the suite several times slower."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"


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
