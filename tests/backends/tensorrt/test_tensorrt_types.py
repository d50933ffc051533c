"""The TensorRT and CUDA code is type-checked against the real APIs, so a call or attribute the
installed API lacks fails here, not on a Jetson.

TensorRT: mypy against the ``tensorrt-stubs`` package (10.13). It installs only with
``pip install --no-deps tensorrt-stubs==10.13.*`` (it depends on TensorRT itself) and its stub file
has a few syntax errors (parameters named ``in``, a non-default parameter after defaults), so a
repaired copy is generated here, from the installed stubs, into a temporary MYPYPATH; NVIDIA's stub
file itself is never committed. The stub modules get ``ignore_errors``.

CUDA: cuda-python ships no type information; the runner reaches it only through the typed
``CudaRuntime`` wrapper, whose list of calls (``CUDA_CALLS``) is checked against its source and
against the installed cuda-python module.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testpaths import REPO as ROOT

CHECKED = ["edgecsp/backends/tensorrt/build.py", "edgecsp/backends/tensorrt/runner.py",
           "edgecsp/backends/tensorrt/backend.py", "edgecsp/backends/tensorrt/bundle.py", "edgecsp/backends/tensorrt/qdq.py",
           "edgecsp/jetson/profiles.py", "edgecsp/jetson/tegrastats.py"]
STUB_FILES = ["tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi", "tensorrt_bindings/tensorrt.pyi"]
INSTALL = "pip install --no-deps 'tensorrt-stubs==10.13.*'"


def _stubs_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or not spec.origin:
        return None
    site = Path(spec.origin).parent.parent
    return site if all((site / f).is_file() for f in STUB_FILES) else None


def _split_params(params: str) -> list[str]:
    out, depth, cur = [], 0, ""
    for ch in params:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur)
    return out


def _fix_default_order(line: str) -> str:
    """Give every parameter after the first default a default too (``= ...``, legal in a stub)."""
    m = re.match(r"(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not m:
        return line
    params, seen_default = [], False
    for p in _split_params(m.group(2)):
        name = p.strip()
        if "=" in name:
            seen_default = True
        elif seen_default and not name.startswith("*"):
            p = p + " = ..."
        params.append(p)
    return m.group(1) + ",".join(params) + m.group(3)


def repair_stub(text: str) -> str:
    """The stub text with its syntax errors fixed: ``in`` parameters renamed, defaults ordered."""
    text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", text)
    lines = text.splitlines()
    for _ in range(100):
        try:
            ast.parse("\n".join(lines))
            return "\n".join(lines) + "\n"
        except SyntaxError as err:
            i = (err.lineno or 1) - 1
            fixed = _fix_default_order(lines[i])
            if fixed == lines[i]:
                raise AssertionError(f"cannot repair stub line {err.lineno}: {err.msg}: {lines[i][:120]}") from None
            lines[i] = fixed
    raise AssertionError("stub repair did not converge")


def test_repair_fixes_the_known_stub_errors():
    broken = ("class A:\n"
              "    def get_workspace_size(self, in: list[int], out: list[int]) -> int: ...\n"
              "    def add_scale_nd(self, input: int, mode: int, shift: int = None, power: int = None, "
              "channel_axis: int) -> int: ...\n")
    with pytest.raises(SyntaxError):
        ast.parse(broken)
    fixed = repair_stub(broken)
    ast.parse(fixed)
    assert "in_: list[int]" in fixed and "channel_axis: int = ..." in fixed


@pytest.fixture(scope="module")
def repaired_stubs(tmp_path_factory) -> Path:
    site = _stubs_dir()
    if site is None:
        if os.environ.get("CI"):
            pytest.fail(f"tensorrt-stubs is not installed; CI must run: {INSTALL}")
        pytest.skip(f"tensorrt-stubs not installed ({INSTALL})")
    out = tmp_path_factory.mktemp("trt-stubs")
    for rel in STUB_FILES:
        dest = out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(repair_stub((site / rel).read_text()))
    return out


def _mypy(stubs: Path, files: list[str], tmp: Path) -> subprocess.CompletedProcess:
    pytest.importorskip("mypy")
    config = tmp / "mypy.ini"
    config.write_text(
        "[mypy]\npython_version = 3.11\nfollow_imports = silent\nignore_missing_imports = True\n"
        "check_untyped_defs = True\nwarn_unused_ignores = False\ncache_dir = " + str(tmp / "cache") + "\n"
        "[mypy-tensorrt.*]\nignore_errors = True\n[mypy-tensorrt_bindings.*]\nignore_errors = True\n")
    env = dict(os.environ, MYPYPATH=str(stubs))
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary",
                           "--hide-error-context", *files], cwd=ROOT, env=env, capture_output=True, text=True, check=False,
                          timeout=300)


def test_tensorrt_and_cuda_code_type_checks_against_the_stubs(repaired_stubs, tmp_path):
    res = _mypy(repaired_stubs, CHECKED, tmp_path)
    assert res.returncode == 0, f"mypy found errors:\n{res.stdout}{res.stderr}"


def test_the_type_check_catches_calls_the_tensorrt_api_lacks(repaired_stubs, tmp_path):
    """Control: a misspelt builder call and TensorRT 8.2's removed workspace attribute must fail."""
    bad = tmp_path / "bad_trt.py"
    bad.write_text(
        "import tensorrt as trt\n\n\n"
        "def build() -> None:\n"
        "    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "    config = builder.create_builder_config()\n"
        "    config.max_workspace_size = 1 << 30\n"
        "    builder.build_engine_from_onnx(config)\n"
        "    ctx = builder.create_network(0)\n"
        "    ctx.execute_async_v3(0)\n")
    res = _mypy(repaired_stubs, [str(bad)], tmp_path)
    assert res.returncode != 0
    for attr in ("max_workspace_size", "build_engine_from_onnx", "execute_async_v3"):
        assert attr in res.stdout, res.stdout


def test_tensorrt_is_detected_by_what_it_provides_not_by_import():
    """With only the stubs installed, ``import tensorrt`` succeeds (namespace package) but is no TensorRT."""
    from edgecsp.backends.tensorrt.runner import load_tensorrt

    trt = load_tensorrt()
    if trt is not None:
        assert hasattr(trt, "Builder")
    elif _stubs_dir() is not None:
        import tensorrt

        assert not hasattr(tensorrt, "Builder")


# --------------------------------------------------------------------------------------------
# CUDA: the typed wrapper is the only door to cuda-python, and its calls exist


def _runner_source() -> str:
    return (ROOT / "edgecsp/backends/tensorrt/runner.py").read_text()


def test_cuda_calls_listed_are_the_calls_made():
    from edgecsp.backends.tensorrt.runner import CUDA_CALLS

    src = _runner_source()
    called = set(re.findall(r'_call\("(\w+)"', src)) | {"cudaGetErrorString"}
    assert called == set(CUDA_CALLS)
    # Direct attribute use of the untyped module is limited to the error string and the copy kinds.
    direct = set(re.findall(r"self\._rt\.(\w+)", src))
    assert direct <= {"cudaGetErrorString", "cudaMemcpyKind"}, direct
    # Nothing outside CudaRuntime touches cuda-python.
    for path in ("edgecsp/backends/tensorrt/build.py", "edgecsp/backends/tensorrt/backend.py",
                 "edgecsp/backends/tensorrt/bundle.py"):
        assert "cuda.bindings" not in (ROOT / path).read_text() and "cudart" not in (ROOT / path).read_text()


def test_cuda_calls_exist_in_cuda_python():
    from edgecsp.backends.tensorrt.runner import CUDA_CALLS, load_cuda_module

    rt = load_cuda_module()
    if rt is None:
        if os.environ.get("CI"):
            pytest.fail("cuda-bindings is not installed; it is in the test extra: pip install -e '.[test]'")
        pytest.skip("cuda-python not installed")
    missing = [name for name in CUDA_CALLS if not hasattr(rt, name)]
    assert not missing, f"cuda-python lacks {missing}"
    assert hasattr(rt.cudaMemcpyKind, "cudaMemcpyHostToDevice") and hasattr(rt.cudaMemcpyKind, "cudaMemcpyDeviceToHost")
