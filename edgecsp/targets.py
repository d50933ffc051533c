"""Target device profiles: data in targets/*.toml, one per device.

A profile names its backend and device, the precisions it offers and its default, input size
and batch, the accuracy tolerance of the compile gate, backend build options and benchmark
settings. Adding a device is adding a TOML file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError
from edgecsp.paths import data_dir
from edgecsp.tomlfile import Table, key_names, read_toml, short

TARGETS_DIR = data_dir("targets")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class TargetProfile:
    name: str
    backend: str
    device: str = "CPU"
    description: str = ""
    precisions: tuple[str, ...] = ("fp32",)
    default_precision: str = "fp32"
    input_size: int = 0  # 0: the model's own
    batch: int | str = 1  # 1..N or "dynamic"
    max_ap50_drop: float = 1.0  # points of AP50 against the FP32 PyTorch reference
    build: dict = field(default_factory=dict)
    benchmark: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    path: str = ""

    def check_precision(self, precision: str | None) -> str:
        precision = (precision or self.default_precision).lower()
        if precision not in self.precisions:
            raise EdgeCSPError(f"target {self.name} ({self.backend}) does not support precision {precision!r}; "
                               f"it supports {', '.join(self.precisions)}")
        return precision

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def list_targets() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.toml"))


# What a profile may hold. Every key is checked on load: a misspelt one is refused by name, since
# a silently ignored [benchmark] duraton_s or [hardware] emc_bus_widht_bits is a quiet wrong result.
# [build] options differ per backend: each backend's BuildOptions dataclass checks them.
_TABLES = ("target", "accuracy", "build", "benchmark", "hardware")
_TARGET_KEYS = ("name", "backend", "device", "description", "precisions", "default_precision", "input_size", "batch")
MAX_INPUT_SIZE = 4096  # network input side; larger is a typo (and GBs of activations)
MAX_BATCH = 1024
# [hardware]: device facts for reports and checks (edgecsp.jetson, edgecsp.bench): key -> kind, lower bound
_HARDWARE = {
    "family": ("str", None), "module": ("str", None), "models": ("strings", None), "compatible": ("strings", None),
    "soc": ("str", None), "gpu": ("str", None), "compute_capability": ("str", None), "jetpack": ("table", None),
    "dla_cores": ("int", 0), "memory_gb": ("number", 0), "memory_type": ("str", None),
    "emc_bus_width_bits": ("int", 1), "emc_max_mhz": ("number", 0), "peak_dram_gbps": ("number", 0),
    "peak_gmacs": ("number", 0), "fast_fp16": ("bool", None), "fast_int8": ("bool", None), "note": ("str", None),
}


def load_target(name_or_path: str | Path) -> TargetProfile:
    """A profile name from targets/ (e.g. "intel-cpu") or a path to a profile TOML file."""
    return _load(name_or_path, ())


def _load(name_or_path: str | Path, chain: tuple[Path, ...]) -> TargetProfile:
    spec = str(name_or_path)
    path = Path(spec)
    if path.suffix != ".toml":
        if spec not in list_targets():  # only names of files in targets/, never a path built from one
            raise EdgeCSPError(f"unknown target {spec!r}; known targets: {', '.join(list_targets())} "
                               "(or pass a path to a profile .toml)")
        path = TARGETS_DIR / f"{spec}.toml"
    data = read_toml(path, "target profile")
    if "alias" in data:
        return _alias(data, path, chain)
    return _profile(data, path)


def _alias(data: dict, path: Path, chain: tuple[Path, ...]) -> TargetProfile:
    """A profile that names another: ``[alias] default = "name"``, optionally with
    ``detect = "module:function"`` returning the profile name for the machine it runs on (or None)."""
    import importlib

    Table(data, f"target profile {path}", known=["alias"])  # an alias holds nothing else
    alias = Table(data["alias"], f"target profile {path} [alias]", known=["default", "detect"])
    default = alias.get("default", "str", "")
    detect = alias.get("detect", "str", "")
    name = None
    if detect:
        module, _, func = detect.partition(":")
        # The file picks code to run: only edgecsp's own detectors, not any importable module.
        if not module.startswith("edgecsp.") or not func.isidentifier():
            raise EdgeCSPError(f"target profile {path}: [alias] detect must be \"edgecsp.<module>:<function>\", "
                               f"got {short(detect)}")
        try:
            detector = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            raise EdgeCSPError(f"target profile {path}: [alias] detect {short(detect)} names no function") from None
        name = detector()
        if name is not None and not isinstance(name, str):
            raise EdgeCSPError(f"target profile {path}: [alias] detect returned {short(name)}, not a target name")
    name = name or default
    here = path.resolve()
    if not name or Path(name).stem == path.stem:
        raise EdgeCSPError(f"target profile {path}: [alias] needs a default = \"<another target>\"")
    if here in chain:  # aliases naming each other would recurse forever
        raise EdgeCSPError(f"target profile {path}: [alias] loops back to it through {short(name)}; "
                           "point default at a profile with a [target]")
    return _load(name, (*chain, here))


def _profile(data: dict, path: Path) -> TargetProfile:
    where = f"target profile {path}"
    Table(data, where, known=_TABLES)
    if "target" not in data:
        raise EdgeCSPError(f"target profile {path} has no [target] backend = \"...\"")
    target = Table(data["target"], f"{where} [target]", known=_TARGET_KEYS)
    if "backend" not in target:
        raise EdgeCSPError(f"target profile {path} has no [target] backend = \"...\"")
    from edgecsp.backends import backend_names, get_backend

    backend = target.get("backend", "str", choices=backend_names())
    build = Table(data.get("build", {}), f"{where} [build]").data
    get_backend(backend).build_options.from_table(build, f"{where} [build]")
    precisions = tuple(p.lower() for p in target.get("precisions", "strings", ["fp32"]))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise EdgeCSPError(f"target profile {path}: unknown precision(s) {key_names(bad) or '(none given)'}; "
                           f"use {', '.join(PRECISIONS)}")
    default_precision = target.get("default_precision", "str", precisions[0]).lower()
    if default_precision not in precisions:
        raise EdgeCSPError(f"target profile {path}: default_precision {default_precision!r} "
                           f"is not among its precisions {', '.join(precisions)}")
    input_size = target.get("input_size", "int", 0, low=0, high=MAX_INPUT_SIZE)
    if input_size % 32:  # every CSPNet detector downsamples by 32 (or a multiple of it)
        raise EdgeCSPError(f"target profile {path}: input_size must be 0 (the model's own) or a multiple of 32, "
                           f"got {input_size}")
    batch = target.data.get("batch", 1)
    if batch != "dynamic" and not (type(batch) is int and 1 <= batch <= MAX_BATCH):
        raise EdgeCSPError(f"target profile {path}: batch must be an integer 1..{MAX_BATCH} or \"dynamic\", "
                           f"got {short(batch)}")
    accuracy = Table(data.get("accuracy", {}), f"{where} [accuracy]", known=["max_ap50_drop"])
    benchmark = Table(data.get("benchmark", {}), f"{where} [benchmark]",
                      known=["scenario", "duration_s", "warmup_s", "min_queries", "tegrastats_interval_ms"])
    benchmark.get("scenario", "str", None, choices=("latency", "throughput"))
    benchmark.get("duration_s", "number", None, above=0)
    benchmark.get("warmup_s", "number", None, low=0)
    benchmark.get("min_queries", "int", None, low=1)
    benchmark.get("tegrastats_interval_ms", "int", None, low=1)
    hardware = Table(data.get("hardware", {}), f"{where} [hardware]", known=_HARDWARE)
    for key, (kind, low) in _HARDWARE.items():
        hardware.get(key, kind, None, low=low)
    return TargetProfile(
        name=target.get("name", "str", path.stem),
        backend=backend,
        device=target.get("device", "str", "CPU"),
        description=target.get("description", "str", ""),
        precisions=precisions,
        default_precision=default_precision,
        input_size=input_size,
        batch=batch,
        max_ap50_drop=accuracy.get("max_ap50_drop", "number", 1.0, low=0, high=100),
        build=dict(build),
        benchmark=dict(benchmark.data),
        hardware=dict(hardware.data),
        path=str(path),
    )
