"""Nightly suite files (benchmarks/nightly.toml): the matrix, benchmark settings, baseline and thresholds.

Every key is checked when the file is read, and every target must be a known profile: a typo
fails the night loudly instead of silently skipping a job every night. Which jobs this machine
can run is decided later, per job (``plan``), and the rest are skipped with the reason.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecsp.bench.regression import Thresholds
from edgecsp.errors import EdgeCSPError

_KEYS = {
    "suite": {"name", "models", "targets", "precisions", "scenarios", "artifacts_dir", "rebuild", "eval_images",
              "data", "job_timeout_s", "isolate", "exclude"},
    "benchmark": {"duration_s", "warmup_s", "min_queries", "compare", "batch"},
    "baseline": {"method", "last_runs", "min_runs"},
    "thresholds": {"throughput_drop_pct", "ap50_drop_points", "latency_p99_increase_pct", "peak_rss_increase_pct"},
}


@dataclass(frozen=True)
class Job:
    model: str
    target: str
    precision: str

    @property
    def name(self) -> str:
        return f"{Path(self.model).stem}/{self.target}/{self.precision}"

    def key(self, scenario: str) -> str:
        return f"{self.name}/{scenario}"


@dataclass
class Suite:
    name: str
    path: str
    models: list[str]
    targets: list[str]
    precisions: list[str]
    scenarios: list[str] = field(default_factory=lambda: ["latency", "throughput"])
    artifacts_dir: Path = Path("artifacts/nightly")
    rebuild: bool = False
    eval_images: int | None = None
    data: Path | None = None
    job_timeout_s: float = 3600.0
    isolate: bool = True
    exclude: list[dict] = field(default_factory=list)
    duration_s: float | None = None  # None: each target profile's [benchmark]
    warmup_s: float | None = None
    min_queries: int | None = None
    compare: list[str] = field(default_factory=list)
    batch: int | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def matrix(self) -> list[Job]:
        jobs = [Job(m, t, p) for m in self.models for t in self.targets for p in self.precisions]
        return [j for j in jobs if not any(all(getattr(j, k) == v for k, v in ex.items()) for ex in self.exclude)]

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _list(value: Any, key: str, path: Path) -> list:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise EdgeCSPError(f"suite {path}: {key} must be a list of strings, got {value!r}")
    return list(value)


def load_suite(path: str | Path) -> Suite:
    from edgecsp.bench.baselines import parse_compare
    from edgecsp.bench.harness import SCENARIOS
    from edgecsp.targets import PRECISIONS, load_target

    path = Path(path)
    if not path.is_file():
        raise EdgeCSPError(f"suite file {path} does not exist; see benchmarks/nightly.toml for an example")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise EdgeCSPError(f"suite {path} is not valid TOML ({err})") from None
    unknown_tables = set(data) - set(_KEYS)
    if unknown_tables:
        raise EdgeCSPError(f"suite {path}: unknown table(s) {', '.join(sorted(unknown_tables))}; "
                           f"known: {', '.join(_KEYS)}")
    for table, keys in _KEYS.items():
        extra = set(data.get(table, {})) - keys
        if extra:
            raise EdgeCSPError(f"suite {path}: unknown key(s) {', '.join(sorted(extra))} in [{table}]; "
                               f"known: {', '.join(sorted(keys))}")
    s, b = data.get("suite", {}), data.get("benchmark", {})
    base, th = data.get("baseline", {}), data.get("thresholds", {})
    for key in ("models", "targets"):
        if not s.get(key):
            raise EdgeCSPError(f"suite {path}: [suite] {key} is missing or empty")
    targets = _list(s["targets"], "targets", path)
    for t in targets:
        try:
            load_target(t)
        except EdgeCSPError as err:
            raise EdgeCSPError(f"suite {path}: {err}") from None
    precisions = [p.lower() for p in _list(s.get("precisions", ["fp32", "int8"]), "precisions", path)]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise EdgeCSPError(f"suite {path}: unknown precision(s) {', '.join(bad)}; use {', '.join(PRECISIONS)}")
    scenarios = _list(s.get("scenarios", ["latency", "throughput"]), "scenarios", path)
    bad = [x for x in scenarios if x not in SCENARIOS]
    if bad:
        raise EdgeCSPError(f"suite {path}: unknown scenario(s) {', '.join(bad)}; use {' and/or '.join(SCENARIOS)}")
    exclude = s.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and set(e) <= {"model", "target", "precision"}
                                                for e in exclude):
        raise EdgeCSPError(f"suite {path}: exclude must be a list of {{model, target, precision}} tables")
    try:
        thresholds = Thresholds(
            throughput_drop_pct=float(th.get("throughput_drop_pct", 10.0)),
            ap50_drop_points=float(th.get("ap50_drop_points", 0.5)),
            latency_p99_increase_pct=th.get("latency_p99_increase_pct"),
            peak_rss_increase_pct=th.get("peak_rss_increase_pct"),
            baseline=str(base.get("method", "median")),
            baseline_runs=int(base.get("last_runs", 7)),
            min_baseline_runs=int(base.get("min_runs", 1)))
    except (TypeError, ValueError) as err:
        raise EdgeCSPError(f"suite {path}: bad threshold or baseline value ({err})") from None
    except EdgeCSPError as err:
        raise EdgeCSPError(f"suite {path}: {err}") from None
    root = path.resolve().parent.parent if path.resolve().parent.name == "benchmarks" else Path.cwd()
    art = Path(s.get("artifacts_dir", "artifacts/nightly"))
    data_dir = Path(s["data"]) if s.get("data") else None
    return Suite(
        name=str(s.get("name", path.stem)), path=str(path), models=_list(s["models"], "models", path),
        targets=targets, precisions=precisions, scenarios=scenarios,
        artifacts_dir=art if art.is_absolute() else root / art, rebuild=bool(s.get("rebuild", False)),
        eval_images=int(s["eval_images"]) if s.get("eval_images") else None,
        data=(data_dir if data_dir is None or data_dir.is_absolute() else root / data_dir),
        job_timeout_s=float(s.get("job_timeout_s", 3600)), isolate=bool(s.get("isolate", True)),
        exclude=list(exclude),
        duration_s=b.get("duration_s"), warmup_s=b.get("warmup_s"), min_queries=b.get("min_queries"),
        compare=parse_compare(b.get("compare", [])), batch=b.get("batch"), thresholds=thresholds)


def skip_reason(job: Job) -> str | None:
    """Why this machine cannot run ``job``, or None when it can (cheap checks, no build)."""
    from edgecsp.backends import get_backend
    from edgecsp.targets import load_target

    profile = load_target(job.target)
    if job.precision not in profile.precisions:
        return f"target {profile.name} offers {', '.join(profile.precisions)}, not {job.precision}"
    try:
        backend = get_backend(profile.backend)
        backend.version()
    except EdgeCSPError as err:
        return str(err)
    if profile.hardware.get("family") == "jetson":
        from edgecsp.jetson.profiles import detect_target

        try:
            here = detect_target()
        except EdgeCSPError as err:
            return str(err)
        if here is None:
            return f"{profile.name} engines are built and run on that Jetson; this machine is not a Jetson"
        if profile.name not in (here, "jetson"):
            return f"this machine is {here}; {profile.name} engines must be built on their own device"
        try:
            from edgecsp.jetson.profiles import check_device_precision

            check_device_precision(profile, job.precision)
        except EdgeCSPError as err:
            return str(err)
    if profile.backend == "openvino":
        try:
            import openvino as ov

            core = ov.Core()
            device = profile.device or "CPU"
            if device.split(".")[0] not in {d.split(".")[0] for d in core.available_devices}:
                return f"OpenVINO device {device} is not available here ({', '.join(core.available_devices)})"
            if job.precision == "bf16" and "BF16" not in core.get_property(device, "OPTIMIZATION_CAPABILITIES"):
                return f"this {device} has no bf16 support"
        except (ImportError, RuntimeError) as err:
            return f"OpenVINO cannot query its devices ({err})"
    return None
