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
from edgecsp.tomlfile import read_toml

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


def load_target(name_or_path: str | Path) -> TargetProfile:
    """A profile name from targets/ (e.g. "intel-cpu") or a path to a profile TOML file."""
    spec = str(name_or_path)
    path = Path(spec)
    if path.suffix != ".toml":
        path = TARGETS_DIR / f"{spec}.toml"
        if not path.is_file():
            raise EdgeCSPError(f"unknown target {spec!r}; known targets: {', '.join(list_targets())} "
                               "(or pass a path to a profile .toml)")
    data = read_toml(path, "target profile")
    if "alias" in data:
        return _alias(data["alias"], path)
    return _profile(data, path)


def _alias(alias: dict, path: Path) -> TargetProfile:
    """A profile that names another: ``[alias] default = "name"``, optionally with
    ``detect = "module:function"`` returning the profile name for the machine it runs on (or None)."""
    import importlib

    name = None
    if alias.get("detect"):
        module, _, func = str(alias["detect"]).partition(":")
        name = getattr(importlib.import_module(module), func)()
    name = name or alias.get("default")
    if not name or Path(str(name)).stem == path.stem:
        raise EdgeCSPError(f"target profile {path}: [alias] needs a default = \"<another target>\"")
    return load_target(name)


def _profile(data: dict, path: Path) -> TargetProfile:
    target = dict(data.get("target", {}))
    if "backend" not in target:
        raise EdgeCSPError(f"target profile {path} has no [target] backend = \"...\"")
    accuracy = data.get("accuracy", {})
    known = {"name", "backend", "device", "description", "precisions", "default_precision", "input_size", "batch"}
    unknown = set(target) - known
    if unknown:
        raise EdgeCSPError(f"target profile {path}: unknown [target] key(s) {', '.join(sorted(unknown))}; "
                           f"known: {', '.join(sorted(known))}")
    precisions = tuple(p.lower() for p in target.get("precisions", ["fp32"]))
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise EdgeCSPError(f"target profile {path}: unknown precision(s) {', '.join(bad)}; use {', '.join(PRECISIONS)}")
    profile = TargetProfile(
        name=target.get("name", path.stem),
        backend=target["backend"],
        device=target.get("device", "CPU"),
        description=target.get("description", ""),
        precisions=precisions,
        default_precision=target.get("default_precision", precisions[0]).lower(),
        input_size=int(target.get("input_size", 0)),
        batch=target.get("batch", 1),
        max_ap50_drop=float(accuracy.get("max_ap50_drop", 1.0)),
        build=dict(data.get("build", {})),
        benchmark=dict(data.get("benchmark", {})),
        hardware=dict(data.get("hardware", {})),
        path=str(path),
    )
    if profile.default_precision not in precisions:
        raise EdgeCSPError(f"target profile {path}: default_precision {profile.default_precision!r} "
                           f"is not among its precisions {', '.join(precisions)}")
    if not (profile.batch == "dynamic" or (isinstance(profile.batch, int) and profile.batch >= 1)):
        raise EdgeCSPError(f"target profile {path}: batch must be a positive integer or \"dynamic\"")
    return profile
