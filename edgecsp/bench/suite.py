"""Nightly suite files (benchmarks/nightly.toml): the matrix, benchmark settings, baseline and thresholds.

Every key is checked when the file is read, and every target must be a known profile: a typo
fails the night loudly instead of silently skipping a job every night. Which jobs this machine
can run is decided later, per job (``plan``), and the rest are skipped with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecsp.bench.regression import Thresholds
from edgecsp.errors import EdgeCSPError
from edgecsp.tomlfile import Table, is_file, key_names, read_toml

_KEYS = {
    "suite": {"name", "models", "targets", "precisions", "scenarios", "artifacts_dir", "rebuild", "eval_images",
              "data", "job_timeout_s", "isolate", "exclude", "require_signature", "trusted_keys", "signing_key"},
    "benchmark": {"duration_s", "warmup_s", "min_queries", "compare", "batch"},
    "baseline": {"method", "last_runs", "min_runs"},
    "thresholds": {"throughput_drop_pct", "ap50_drop_points", "latency_p99_increase_pct", "peak_rss_increase_pct"},
    "fleet": {"placement", "on_device_lost"},  # python -m edgecsp.nightly --cluster (docs/fleet.md)
}
PLACEMENTS = ("every-device", "one-device")
ON_DEVICE_LOST = ("fail", "retry")


@dataclass(frozen=True)
class Job:
    model: Any  # a name or path (str), or a ModelSource: a Darknet cfg with its weights and names
    target: str
    precision: str

    @property
    def name(self) -> str:
        return f"{Path(str(self.model)).stem}/{self.target}/{self.precision}"

    def key(self, scenario: str) -> str:
        return f"{self.name}/{scenario}"


@dataclass
class Suite:
    name: str
    path: str
    models: list[Any]  # str or ModelSource (see _models)
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
    require_signature: bool = False  # every artifact a job runs must verify against trusted_keys
    trusted_keys: Path | None = None  # public key file or folder (edgecsp.signing)
    signing_key: Path | None = None  # private key: artifacts the nightly builds are signed with it
    thresholds: Thresholds = field(default_factory=Thresholds)
    placement: str = "every-device"  # fleet: each job on every live device of its target, or on one of them
    on_device_lost: str = "fail"  # fleet: a device lost mid-job fails it, or (one-device) retries once elsewhere

    def matrix(self) -> list[Job]:
        jobs = [Job(m, t, p) for m in self.models for t in self.targets for p in self.precisions]
        return [j for j in jobs if not any(all(str(getattr(j, k)) == v for k, v in ex.items()) for ex in self.exclude)]

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["models"] = [m if isinstance(m, str) else m.as_dict() for m in self.models]
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}


def _list(table: Table, key: str, default: list[str]) -> list[str]:
    """A list of strings, or one string for a list of one."""
    if isinstance(table.data.get(key), str):
        return [table.data[key]]
    return list(table.get(key, "strings", default))


def _models(table: Table, path: Path) -> list[Any]:
    """[suite] models: names or paths, and Darknet models as {cfg = "x.cfg", weights = "x.weights", names = "x.names"}
    (relative paths from the suite file's folder)."""
    from edgecsp.models.checkpoint import ModelSource

    raw = table.data.get("models")
    raw = [raw] if isinstance(raw, (str, dict)) else raw
    if not isinstance(raw, list):
        raise EdgeCSPError(f"suite {path}: [suite] models must be a list of names, paths or {{cfg, weights, names}} tables")
    out: list[Any] = []
    for entry in raw:
        if isinstance(entry, str) and entry:
            out.append(entry)
            continue
        if not isinstance(entry, dict) or "cfg" not in entry or not set(entry) <= {"cfg", "weights", "names"} or \
                not all(isinstance(v, str) and v for v in entry.values()):
            raise EdgeCSPError(f"suite {path}: [suite] models entry {str(entry)[:60]!r} must be a name or path, or a "
                               "table {cfg = \"x.cfg\", weights = \"x.weights\", names = \"x.names\"} (weights, names optional)")
        here = path.resolve().parent
        files = {k: str(Path(v) if Path(v).is_absolute() else here / v) for k, v in entry.items()}
        out.append(ModelSource(files["cfg"], files.get("weights"), files.get("names")))
    return out


def load_suite(path: str | Path) -> Suite:
    from edgecsp.bench.baselines import parse_compare
    from edgecsp.targets import MAX_BATCH

    path = Path(path)
    s, b, base, th, fl = _tables(path)
    models, targets, precisions, scenarios, exclude = _matrix(s, path)
    thresholds = _thresholds(th, base, path)
    try:
        compare = parse_compare(_list(b, "compare", []))
    except EdgeCSPError as err:
        raise EdgeCSPError(f"suite {path} [benchmark]: {err}") from None
    root = path.resolve().parent.parent if path.resolve().parent.name == "benchmarks" else Path.cwd()

    def key_path(key: str, default: str = "") -> Path | None:
        text = s.get(key, "str", default)
        return None if not text else (Path(text) if Path(text).is_absolute() else root / text)

    trusted_keys, signing_key = key_path("trusted_keys"), key_path("signing_key")
    require_signature = s.get("require_signature", "bool", False)
    if require_signature and trusted_keys is None:
        raise EdgeCSPError(f"suite {path}: require_signature needs trusted_keys (a public key file or folder)")
    return Suite(
        name=s.get("name", "str", path.stem), path=str(path), models=models,
        targets=targets, precisions=precisions, scenarios=scenarios,
        artifacts_dir=key_path("artifacts_dir", "artifacts/nightly"), rebuild=s.get("rebuild", "bool", False),
        eval_images=s.get("eval_images", "int", None, low=1), data=key_path("data"),
        job_timeout_s=s.get("job_timeout_s", "number", 3600.0, above=0), isolate=s.get("isolate", "bool", True),
        exclude=exclude,
        duration_s=b.get("duration_s", "number", None, above=0), warmup_s=b.get("warmup_s", "number", None, low=0),
        min_queries=b.get("min_queries", "int", None, low=1),
        compare=compare, batch=b.get("batch", "int", None, low=1, high=MAX_BATCH),
        thresholds=thresholds, placement=fl.get("placement", "str", "every-device", choices=PLACEMENTS),
        on_device_lost=fl.get("on_device_lost", "str", "fail", choices=ON_DEVICE_LOST),
        require_signature=require_signature, trusted_keys=trusted_keys, signing_key=signing_key)


def _tables(path: Path) -> tuple[Table, ...]:
    """The suite file's tables in _KEYS order, each refusing keys it does not know."""
    if not is_file(path):
        raise EdgeCSPError(f"suite file {path} does not exist; see benchmarks/nightly.toml for an example")
    data = read_toml(path, "suite")
    unknown_tables = set(data) - set(_KEYS)
    if unknown_tables:
        raise EdgeCSPError(f"suite {path}: unknown table(s) {key_names(sorted(unknown_tables, key=str))}; "
                           f"known: {', '.join(_KEYS)}")
    # Every table is checked here, once: a wrong type fails the night on load, not in job 7 of 30.
    return tuple(Table(data.get(t, {}), f"suite {path} [{t}]", known=sorted(keys)) for t, keys in _KEYS.items())


def _matrix(s: Table, path: Path) -> tuple[list, list[str], list[str], list[str], list[dict]]:
    """[suite]'s models, targets, precisions, scenarios and exclusions, each checked."""
    from edgecsp.bench.harness import SCENARIOS
    from edgecsp.targets import PRECISIONS, load_target

    for key in ("models", "targets"):
        if not s.data.get(key):
            raise EdgeCSPError(f"suite {path}: [suite] {key} is missing or empty")
    models = _models(s, path)
    targets = _list(s, "targets", [])
    for t in targets:
        try:
            load_target(t)
        except EdgeCSPError as err:
            raise EdgeCSPError(f"suite {path}: {err}") from None
    precisions = [p.lower() for p in _list(s, "precisions", ["fp32", "int8"])]
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise EdgeCSPError(f"suite {path}: unknown precision(s) {key_names(bad)}; use {', '.join(PRECISIONS)}")
    scenarios = _list(s, "scenarios", ["latency", "throughput"])
    bad = [x for x in scenarios if x not in SCENARIOS]
    if bad:
        raise EdgeCSPError(f"suite {path}: unknown scenario(s) {key_names(bad)}; use {' and/or '.join(SCENARIOS)}")
    exclude = s.data.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and set(e) <= {"model", "target", "precision"}
               and all(isinstance(v, str) for v in e.values()) for e in exclude):
        raise EdgeCSPError(f"suite {path}: exclude must be a list of {{model, target, precision}} tables of strings")
    return models, targets, precisions, scenarios, list(exclude)


def _thresholds(th: Table, base: Table, path: Path) -> Thresholds:
    limits = {key: th.get(key, "number", default) for key, default in (
        ("throughput_drop_pct", 10.0), ("ap50_drop_points", 0.5), ("latency_p99_increase_pct", None),
        ("peak_rss_increase_pct", None))}
    limits.update(baseline=base.get("method", "str", "median"), baseline_runs=base.get("last_runs", "int", 7, low=1),
                  min_baseline_runs=base.get("min_runs", "int", 1, low=1))
    try:
        return Thresholds(**limits)
    except EdgeCSPError as err:
        raise EdgeCSPError(f"suite {path}: {err}") from None


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
