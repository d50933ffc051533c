"""The device side (what runs on a Jetson) needs only the base install and Python 3.8.

JetPack 5 has Python 3.8 and JetPack 6 3.10, TensorRT's bindings exist only for them, and torch
from PyPI does not run on a Jetson. So: the device entry points import and run with the host
libraries blocked; vermin finds nothing newer than 3.8 in the device modules; every module
compiles as 3.8 syntax (pip byte-compiles the whole package); and the whole on-device flow runs
in a fresh Python 3.8 venv that has only ``pip install edgecsp`` (+ ONNX Runtime standing in for
TensorRT): --from-bundle, the bundle's own verification, the benchmark.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgecsp"

# What the device install must never need.
HOST_LIBRARIES = ("torch", "onnx", "onnxslim", "onnxruntime", "nncf", "openvino", "pycocotools", "skimage",
                  "matplotlib", "safetensors", "sqlalchemy", "tqdm", "psutil")

# The device side: `compile --from-bundle`, edgecsp.load, the runners, postprocessing, artifact
# checks, the benchmark harness, tegrastats, the nightly worker.
DEVICE_MODULES = (
    "edgecsp", "edgecsp.errors", "edgecsp.extras", "edgecsp.cli", "edgecsp.fsutil", "edgecsp.faults", "edgecsp.paths",
    "edgecsp.tomlfile", "edgecsp.targets", "edgecsp.artifact", "edgecsp.manifest", "edgecsp.gate", "edgecsp.predictor",
    "edgecsp.postprocess",
    "edgecsp.cocoap", "edgecsp.verifyset", "edgecsp.compile", "edgecsp.benchmark", "edgecsp.nightly",
    "edgecsp.data.preprocess", "edgecsp.data.coco", "edgecsp.data.fastimage", "edgecsp.streaming", "edgecsp.video",
    "edgecsp.bench.e2e", "edgecsp.bench.load",
    "edgecsp.backends", "edgecsp.backends.base", "edgecsp.backends.libraries", "edgecsp.backends.tensorrt.backend",
    "edgecsp.backends.tensorrt.build", "edgecsp.backends.tensorrt.runner", "edgecsp.backends.onnxruntime_backend",
    "edgecsp.jetson", "edgecsp.backends.tensorrt.bundle", "edgecsp.backends.tensorrt.onnx_runner", "edgecsp.jetson.profiles",
    "edgecsp.jetson.tegrastats", "edgecsp.backends.tensorrt.calibcache",
    "edgecsp.bench", "edgecsp.bench.harness", "edgecsp.bench.memory", "edgecsp.bench.machine", "edgecsp.bench.counters",
    "edgecsp.bench.report", "edgecsp.bench.run", "edgecsp.bench.bandwidth", "edgecsp.bench.traffic",
    "edgecsp.bench.baselines", "edgecsp.bench.on_demand", "edgecsp.bench.accuracy", "edgecsp.bench.nightly",
    "edgecsp.bench.nightly_report", "edgecsp.bench.regression", "edgecsp.bench.suite", "edgecsp.bench.history",
    # The fleet: the worker and the jobs it runs are on the devices; the head runs on a device's
    # Python too (Ray needs one Python minor version per cluster).
    "edgecsp.worker", "edgecsp.fleet", "edgecsp.fleet.device", "edgecsp.fleet.tasks", "edgecsp.fleet.dispatch",
    "edgecsp.fleet.dashboard",
)

BLOCKER = """
import importlib.abc, sys
BLOCKED = set(__BLOCKED__)
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:  # as if not installed
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Blocker())
for name in list(sys.modules):
    if name.split(".")[0] in BLOCKED:
        del sys.modules[name]
"""


def _module_file(name: str) -> Path:
    rel = Path(*name.split("."))
    return ROOT / (str(rel) + ".py") if (ROOT / (str(rel) + ".py")).is_file() else ROOT / rel / "__init__.py"


def test_device_entry_points_import_and_run_with_the_host_libraries_blocked(tmp_path):
    script = BLOCKER.replace("__BLOCKED__", repr(HOST_LIBRARIES)) + """
import importlib, contextlib, io, json
import numpy as np
for name in __MODULES__:
    importlib.import_module(name)
from edgecsp.compile import main as compile_main
from edgecsp.benchmark import main as benchmark_main
from edgecsp.nightly import main as nightly_main
for main in (compile_main, benchmark_main, nightly_main):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
    assert "usage:" in out.getvalue()
# Real work, numpy only: postprocessing, the evaluator, tegrastats, a target profile.
from edgecsp.postprocess import postprocess
from edgecsp.cocoap import Boxes, evaluate_boxes
from edgecsp.jetson.tegrastats import parse_tegrastats
from edgecsp.targets import load_target
rows = np.zeros((10, 11), np.float32); rows[0, :4] = [10, 10, 50, 50]; rows[0, 4] = 0.9; rows[0, 5] = 1.0
det = postprocess(rows)
assert len(det) == 1
gt = Boxes([1], [[10, 10, 40, 40]], [1])
ap = evaluate_boxes(gt, Boxes([1], [[10, 10, 40, 40]], [1], score=[0.9]))
assert abs(ap["AP"] - 1.0) < 1e-9
assert parse_tegrastats("RAM 2000/7000MB (lfb 5x4MB) CPU [1%@1000] EMC_FREQ 3%@2133 GR3D_FREQ 0%@114").ram_used_mb == 2000
assert load_target("jetson").backend == "tensorrt"
# A host-only step says which extra to install, in one line.
from edgecsp.cli import run
from edgecsp.export import main as export_main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = run(export_main, [])
assert code == 2 and err.getvalue().count("\\n") == 1 and "pip install 'edgecsp[host]'" in err.getvalue(), err.getvalue()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("ok")
""".replace("__MODULES__", repr(DEVICE_MODULES))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), EDGECSP_CACHE_DIR=str(tmp_path)), cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stdout[-2000:] + res.stderr[-3000:]


def test_vermin_finds_nothing_newer_than_python_3_8_in_the_device_modules(tmp_path):
    pytest.importorskip("vermin", reason="vermin is in the test extra: pip install -e '.[host,test]'")
    files = sorted({str(_module_file(m)) for m in DEVICE_MODULES})
    res = _vermin(*files)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # And it would catch one (the check is not vacuous):
    bad = tmp_path / "uses_311.py"
    bad.write_text("import tomllib\nfrom datetime import UTC\n")
    res = _vermin(str(bad))
    assert res.returncode != 0 and "tomllib" in res.stdout and "datetime.UTC" in res.stdout


def _vermin(*files: str) -> subprocess.CompletedProcess:
    # typing backports: `X | None` etc. appear only in annotations, strings under `from __future__ import annotations`
    return subprocess.run([sys.executable, "-c", "import sys; from vermin.main import main; sys.exit(main())",
                           "--no-tips", "--violations", "--target=3.8-", "--backport", "typing",
                           *files], capture_output=True, text=True, timeout=300, check=False)


def _python38() -> str | None:
    """A working Python 3.8 (pyenv's own builds first: its shims may name one they will not run)."""
    found = [*sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8"))),
             *sorted(glob.glob("/root/.pyenv/versions/3.8*/bin/python3.8")), shutil.which("python3.8")]
    for p in found:
        if p and os.access(p, os.X_OK):
            ok = subprocess.run([p, "-c", "import sys; assert sys.version_info[:2] == (3, 8)"], capture_output=True,
                                timeout=60, check=False)
            if ok.returncode == 0:
                return p
    return None


def test_every_module_compiles_as_python_3_8(tmp_path):
    """pip byte-compiles the whole package on install, host modules included."""
    files = sorted(str(p) for p in PACKAGE.rglob("*.py"))
    py38 = _python38()
    if py38:
        code = ("import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec', "
                "dont_inherit=True)\nprint(len(sys.argv) - 1)")
        res = subprocess.run([py38, "-c", code, *files], capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stderr[-3000:]
        assert int(res.stdout) == len(files) > 80
    else:
        print("note: no python3.8 here; parsing with this interpreter's 3.8 grammar instead")
        import ast

        for f in files:
            ast.parse(Path(f).read_text(), f, feature_version=(3, 8))


# --------------------------------------------------------------------------------------------
# The device flow in a fresh Python 3.8 venv with only the device install


def _device_venv() -> tuple[Path, str]:
    """A Python 3.8 venv with ``pip install <this checkout>`` (no extras) + onnxruntime, kept under
    .cache/ per Python and pyproject (a fresh machine installs it once, ~1 min); edgecsp itself is
    reinstalled every time, so the venv runs this checkout's code."""
    py = _python38()
    if py is None:
        print(f"note: no python3.8 on this machine; the device venv uses {sys.executable} instead")
        py = sys.executable
    version = subprocess.run([py, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True, check=True).stdout.strip()
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    venv = ROOT / ".cache" / "device-venv" / f"py{version}-{key}"
    python = venv / "bin" / "python"
    t0 = time.time()
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([py, "-m", "venv", str(venv)], check=True, timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True, timeout=900)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "onnxruntime"], check=True, timeout=900)
        (venv / ".complete").write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
        how = "created"
    else:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(ROOT)],
                       check=True, timeout=600)
        how = "reused, edgecsp reinstalled"
    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools' in-tree leftovers
    print(f"device venv ({how}, Python {version}): {time.time() - t0:.0f} s")
    return venv, version


def test_device_flow_in_a_fresh_python_3_8_venv_with_only_the_device_install(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", EDGECSP_CACHE_DIR=str(tmp_path / "cache"))
    # 1. On the host: a Jetson INT8 bundle of the demo detector (small calibration and verification set).
    recipe = tmp_path / "calib.toml"
    recipe.write_text('[calibration]\nsource = "shapes"\nnum_images = 16\nseed = 0\nmethod = "minmax"\n')
    bundle = tmp_path / "bundle"
    host = subprocess.run([sys.executable, "-m", "edgecsp.compile", "--target", "jetson", "--verify-images", "8",
                           "--calibration", str(recipe), "--out", str(bundle)], capture_output=True, text=True,
                          timeout=900, check=False, env=dict(env, PYTHONPATH=str(ROOT)), cwd=tmp_path)
    assert host.returncode == 0, host.stdout[-2000:] + host.stderr[-2000:]
    host_refs = json.loads((bundle / "manifest.json").read_text())["backend"]["info"]["verify"]["references"]

    # 2. The device install: only the base dependencies, no host library.
    venv, version = _device_venv()
    py = str(venv / "bin" / "python")
    code = ("import importlib.util as u, edgecsp; print(edgecsp.__file__); "
            f"print([m for m in {HOST_LIBRARIES!r} if u.find_spec(m)])")
    probe = subprocess.run([py, "-c", code],
                           capture_output=True, text=True, timeout=60, check=True, env=env, cwd=tmp_path)
    where, present = probe.stdout.splitlines()
    assert "site-packages" in where and present == "['onnxruntime']", probe.stdout

    # 3. On the "device": build from the bundle (ONNX Runtime standing in for TensorRT), verify, benchmark.
    engine = tmp_path / "engine"
    dev = subprocess.run([py, "-m", "edgecsp.compile", "--target", "jetson", "--from-bundle", str(bundle),
                          "--stand-in", "onnxruntime", "--out", str(engine), "--json"], capture_output=True, text=True,
                         timeout=600, check=False, env=env, cwd=tmp_path)
    assert dev.returncode == 0, dev.stdout[-2000:] + dev.stderr[-3000:]
    manifest = json.loads(dev.stdout)
    device = manifest["accuracy"]["device"]
    assert manifest["backend"]["info"]["stand_in"]["runtime"] == "onnxruntime" and device["passed"]
    assert device["images"] == 8 and device["engine"]["AP"] == pytest.approx(host_refs["int8_qdq"]["AP"], abs=1e-3)
    report = tmp_path / "report"
    bench = subprocess.run([py, "-m", "edgecsp.benchmark", "--artifact", str(engine), "--duration", "0.5", "--warmup",
                            "0.1", "--min-queries", "5", "--no-platform", "--out", str(report)],
                           capture_output=True, text=True, timeout=600, check=False, env=env, cwd=tmp_path)
    assert bench.returncode == 0, bench.stdout[-2000:] + bench.stderr[-3000:]
    result = json.loads((report / "benchmark.json").read_text())["results"][0]
    assert result["fps"] > 0 and result["queries"] >= 5 and result["bandwidth"]["cio_elements"] > 0
    assert "plots skipped: matplotlib is not installed" in bench.stderr
    print(f"device side on Python {version}: from-bundle + verification + benchmark ({result['fps']} FPS)")
