"""What this device is, for the fleet: its name, the targets it serves, its backends and versions.

A Jetson serves its own jetson-* profile (the detection of edgecsp.jetson.profiles); any other
machine serves the CPU targets whose backend is installed (onnxruntime, intel-cpu with OpenVINO).
Every device gets ``edgecsp-device: 1`` (one job at a time) and ``target:<name>: 1`` per target;
a machine with PyTorch also builds artifacts and bundles (``edgecsp-builder``).

The worker command passes its choices to the Ray node it starts through EDGECSP_WORKER_*
variables (Ray's worker processes inherit the node's environment), so the head's ``describe``
task on that node sees the same device the command saw.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import socket

DEVICE_RESOURCE = "edgecsp-device"
BUILDER_RESOURCE = "edgecsp-builder"
TARGET_PREFIX = "target:"
ENV_NAME = "EDGECSP_WORKER_NAME"
ENV_TARGETS = "EDGECSP_WORKER_TARGETS"  # comma-separated: replaces the detected targets
ENV_STANDIN = "EDGECSP_TENSORRT_STANDIN"  # "onnxruntime": run a bundle's ONNX where TensorRT is missing
ENV_BUILDER = "EDGECSP_WORKER_BUILDER"  # "1" / "0": overrides "has PyTorch"


def target_resource(target: str) -> str:
    return TARGET_PREFIX + target


def _version(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install is "not available" here, the reason is not needed
        return None
    return str(getattr(mod, "__version__", "") or "unknown")


def backend_versions() -> dict[str, str]:
    """The backends this machine really has, with their versions."""
    from edgecsp.backends.tensorrt.runner import load_tensorrt

    found = {}
    for name in ("onnxruntime", "openvino"):
        v = _version(name)
        if v is not None:
            found[name] = v
    trt = load_tensorrt()  # not a bare import: tensorrt-stubs makes an empty ``tensorrt`` importable
    if trt is not None:
        found["tensorrt"] = str(trt.__version__)
    return found


def default_name() -> str:
    from edgecsp.bench import machine

    return str(machine.describe()["key"])


def describe(name: str | None = None, targets: list[str] | None = None, standin: str | None = None,
             builder: bool | None = None) -> dict:
    """This device: name, host, arch, Jetson facts, backends, the targets it serves, builder or not.

    Arguments left None come from the EDGECSP_WORKER_* environment, then from detection."""
    from edgecsp.errors import EdgeCSPError
    from edgecsp.jetson.profiles import match_target, read_jetson

    name = name or os.environ.get(ENV_NAME) or default_name()
    standin = standin if standin is not None else os.environ.get(ENV_STANDIN, "")
    backends = backend_versions()
    jetson = read_jetson(os.environ.get("EDGECSP_JETSON_ROOT", "/"))
    jetson_target = None
    if jetson is not None:
        try:
            jetson_target = match_target(jetson)
        except EdgeCSPError:
            jetson_target = None
    if targets is None and os.environ.get(ENV_TARGETS) is not None:  # set but empty: no target (a builder)
        targets = [t for t in os.environ[ENV_TARGETS].split(",") if t]
    if targets is None:
        targets = []
        if jetson_target is not None:
            targets.append(jetson_target)
        else:
            if "onnxruntime" in backends:
                targets.append("onnxruntime")
            if "openvino" in backends and platform.machine().lower() in ("x86_64", "amd64"):
                targets.append("intel-cpu")
    if builder is None:
        env = os.environ.get(ENV_BUILDER)
        builder = env == "1" if env in ("0", "1") else (jetson is None and _version("torch") is not None)
    from edgecsp import __version__

    return {
        "name": name, "hostname": socket.gethostname(), "arch": platform.machine(),
        "python": platform.python_version(), "edgecsp": __version__,
        "model": jetson.model if jetson is not None else _cpu_model(),
        "jetson": None if jetson is None else {"target": jetson_target, "l4t": jetson.l4t, "jetpack": jetson.jetpack},
        "backends": backends, "targets": targets, "builder": bool(builder),
        "tensorrt_standin": standin or "",
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def resources(info: dict) -> dict[str, float]:
    """The Ray custom resources of this device."""
    res = {DEVICE_RESOURCE: 1.0}
    for t in info["targets"]:
        res[target_resource(t)] = 1.0
    if info["builder"]:
        res[BUILDER_RESOURCE] = 1.0
    return res


def _label_value(text: str) -> str:
    """Ray label values: letters, digits, '-', '_', '.', 63 characters at most, alphanumeric ends."""
    v = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:63].strip("_.-")
    return v or "unknown"


def labels(info: dict) -> dict[str, str]:
    """Ray node labels: what the dashboard of Ray itself shows (edgecsp reads ``describe`` instead)."""
    out = {"edgecsp.device": info["name"], "edgecsp.model": info["model"], "edgecsp.host": info["hostname"]}
    jetson = info.get("jetson") or {}
    if jetson.get("jetpack"):
        out["edgecsp.jetpack"] = jetson["jetpack"]
    for backend, version in info["backends"].items():
        out["edgecsp." + backend] = version
    return {k: _label_value(v) for k, v in out.items()}
