"""What the fleet runs on its nodes (as Ray tasks, wrapped in edgecsp.fleet.dispatch): describe the
device, build an artifact once on a builder, run one job on a device. Python 3.8 syntax: these
run on JetPack 5 too.

Artifacts travel as one uncompressed tar of the artifact directory (ONNX and engines barely
compress) through Ray's object store; the device unpacks it into a temporary folder and checks
every file's sha256 before anything runs (edgecsp.artifact.open_artifact).
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError


def describe_node() -> dict[str, Any]:
    from edgecsp.fleet.device import describe

    return describe()


def _say(job: Any):
    def say(line: str) -> None:
        print(f"  [{job.name}] {line}", file=sys.stderr, flush=True)  # progress: stderr, as every command

    return say


def pack(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file():
                tar.add(str(path), arcname=str(path.relative_to(root)), recursive=False)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Regular files inside ``dest`` only: no links, devices or paths that climb out."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not member.isfile() or os.path.isabs(member.name) or dest.resolve() not in target.parents:
                raise EdgeCSPError(f"the artifact sent to this device holds {member.name!r}, not a plain file inside "
                                   "it; refused")
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(member)
            assert src is not None  # a regular file, checked above
            with src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)


def build_artifact(job: Any, suite: Any) -> tuple[dict[str, Any], bytes]:
    """On a builder: build or reuse the artifact (a bundle for a Jetson target) in this machine's
    cache; returns (facts, packed artifact)."""
    from edgecsp.bench.on_demand import ensure_artifact
    from edgecsp.fleet.device import describe
    from edgecsp.paths import cache_dir

    root, manifest, built = ensure_artifact(job.model, job.target, job.precision, cache_dir() / "fleet" / "artifacts",
                                            suite.batch, rebuild=suite.rebuild, verify_images=suite.eval_images,
                                            data=suite.data, allow_accuracy_drop=True, progress=_say(job))
    data = pack(root)
    facts = {"name": Path(root).name, "built": built, "bytes": len(data), "builder": describe()["name"],
             "backend": (manifest.get("backend") or {}).get("name")}
    return facts, data


def _has_torch() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def run_on_device(job: Any, suite: Any, facts: dict[str, Any], data: bytes) -> dict[str, Any]:
    """On the device: unpack, check, (on a Jetson) build the engine from the bundle, benchmark, and
    measure accuracy. Returns what edgecsp.bench.nightly.records_from reads, plus who ran it."""
    from edgecsp.artifact import open_manifest
    from edgecsp.bench.run import BenchmarkOptions, run_benchmark
    from edgecsp.fleet.device import describe

    me = describe()
    say = _say(job)
    work = Path(tempfile.mkdtemp(prefix="edgecsp-fleet-job-"))
    try:
        root = work / facts["name"]
        root.mkdir()
        unpack(data, root)
        root, typed = open_manifest(root)  # every file's sha256 before anything runs
        manifest, engine = typed.raw, typed.backend_name
        if engine == "tensorrt" and typed.bundle and typed.engine != "model.engine":
            if "tensorrt" in me["backends"]:
                from edgecsp.backends.tensorrt.bundle import build_from_bundle

                root, manifest = build_from_bundle(root, target=job.target, out=work / (facts["name"] + "-engine"),
                                                   data=suite.data, verify_images=suite.eval_images,
                                                   allow_accuracy_drop=True, progress=say)
            elif me["tensorrt_standin"] == "onnxruntime":
                engine = "onnxruntime (stand-in for TensorRT: the bundle's ONNX model)"
                say("no TensorRT here: running the bundle's checks and its ONNX model with ONNX Runtime")
            else:
                raise EdgeCSPError(f"device {me['name']} has no TensorRT to build the {job.target} engine from the "
                                   "bundle; install it (JetPack) or start the worker with --tensorrt-standin")
        opts = BenchmarkOptions(artifact=root, model=job.model, scenarios=list(suite.scenarios),
                                duration_s=suite.duration_s, warmup_s=suite.warmup_s, min_queries=suite.min_queries,
                                compare=list(suite.compare), accuracy=_has_torch(), eval_images=suite.eval_images,
                                data=suite.data)
        report = run_benchmark(opts, progress=say)
        if report.get("accuracy") is None:  # no PyTorch on the device: the accuracy measured at build
            report["accuracy"] = dict(manifest.get("accuracy") or {}, measured="at build, on the builder")
        return {"artifact": facts["name"], "built": facts.get("built"), "report": report, "device": me["name"],
                "engine": engine, "artifact_bytes": facts.get("bytes")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
