"""Which Jetson is this? Device detection and the jetson-* target profiles' hardware facts.

Detection reads what L4T exposes: ``/proc/device-tree/model`` (e.g. "NVIDIA Jetson AGX Orin
Developer Kit", "Jetson-AGX" on AGX Xavier), then ``/proc/device-tree/compatible`` (board ids such
as "nvidia,p3767-0005"), and ``/etc/nv_tegra_release`` for the L4T (hence JetPack) release. Each
profile's ``[hardware]`` table lists the model substrings and board ids that mean it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from edgecsp.errors import EdgeCSPError

# L4T release -> JetPack (the JetPack release notes); only the lines that matter for TensorRT.
_L4T_JETPACK = [((32, 6, 0), "4.6"), ((35, 1, 0), "5.0"), ((35, 2, 0), "5.1"), ((36, 3, 0), "6.0"),
                ((36, 4, 0), "6.1"), ((36, 4, 3), "6.2"), ((38, 2, 0), "7.0")]


@dataclass(frozen=True)
class JetsonInfo:
    model: str  # /proc/device-tree/model, as is
    compatible: tuple[str, ...]  # /proc/device-tree/compatible entries
    l4t: str  # "35.4.1", or "" when /etc/nv_tegra_release is missing
    jetpack: str  # "5.1", or "" when unknown


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode(errors="replace")
    except OSError:
        return ""


def read_jetson(root: str | Path = "/") -> JetsonInfo | None:
    """The Jetson facts under ``root`` (a test passes a fake root), or None when this is no Jetson."""
    root = Path(root)
    model = _read(root / "proc/device-tree/model").strip("\x00\n ")
    compatible = tuple(c for c in _read(root / "proc/device-tree/compatible").split("\x00") if c)
    release = _read(root / "etc/nv_tegra_release")
    if not release and not any("tegra" in c for c in compatible):
        return None
    l4t = ""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    if m:
        l4t = f"{m.group(1)}.{m.group(2)}"
    return JetsonInfo(model=model, compatible=compatible, l4t=l4t, jetpack=jetpack_of_l4t(l4t))


def jetpack_of_l4t(l4t: str) -> str:
    """JetPack release of an L4T release ("35.4.1" -> "5.1", "36.4.3" -> "6.2"); "" when unknown."""
    nums = tuple(int(x) for x in re.findall(r"\d+", l4t)[:3]) + (0, 0, 0)
    best = ""
    for key, jetpack in _L4T_JETPACK:
        if nums[0] == key[0] and nums[1:3] >= key[1:3]:
            best = jetpack
    return best


def jetson_targets() -> list[str]:
    from edgecsp.targets import list_targets

    return [t for t in list_targets() if t.startswith("jetson-")]


def match_target(info: JetsonInfo) -> str:
    """The jetson-* profile for these facts; EdgeCSPError naming them when none matches."""
    from edgecsp.targets import load_target

    profiles = [load_target(name) for name in jetson_targets()]
    model = info.model.lower()
    # Longest pattern first: "AGX Orin" must win over a plain "Orin" of another profile.
    by_model = sorted(((pat.lower(), p.name) for p in profiles for pat in p.hardware.get("models", [])),
                      key=lambda x: -len(x[0]))
    for pat, name in by_model:
        if pat and pat in model:
            return name
    for p in profiles:
        for board in p.hardware.get("compatible", []):
            if any(board in c for c in info.compatible):
                return p.name
    raise EdgeCSPError(f"unknown Jetson model {info.model or '?'!r} (compatible: {', '.join(info.compatible) or '?'}); "
                       f"pass --target with one of {', '.join(jetson_targets())}, or add a targets/jetson-*.toml for it")


def detect_target(root: str | Path | None = None) -> str | None:
    """The profile name of the Jetson this runs on, None when this is no Jetson.

    ``EDGECSP_JETSON_ROOT`` points detection at another root (tests, containers with the host's
    /proc mounted elsewhere).
    """
    info = read_jetson(root or os.environ.get("EDGECSP_JETSON_ROOT", "/"))
    return None if info is None else match_target(info)


def check_device_precision(profile, precision: str, dla_core: int = -1) -> None:
    """Refuse what the device cannot do, before any work: INT8 without INT8 kernels, a DLA it lacks."""
    hw = profile.hardware
    if precision == "int8" and hw.get("fast_int8") is False:
        raise EdgeCSPError(f"{hw.get('module', profile.name)} (sm_{str(hw.get('compute_capability', '?')).replace('.', '')}) "
                           "has no INT8 kernels in TensorRT; use --precision fp16")
    if dla_core >= 0:
        cores = int(hw.get("dla_cores", 0))
        if dla_core >= cores:
            raise EdgeCSPError(f"{hw.get('module', profile.name)} has {cores} DLA core(s), dla_core = {dla_core} asked; "
                               f"set dla_core = -1 (GPU){'' if not cores else f' or 0..{cores - 1}'}")
        if precision not in ("fp16", "int8"):
            raise EdgeCSPError(f"DLA runs FP16 or INT8 only, not {precision}; use --precision fp16 or int8")


def emc_gbps(util_percent: float, freq_mhz: float, bus_width_bits: int) -> float:
    """DRAM bandwidth in GB/s from tegrastats' EMC load (% of the current clock) and clock.

    LPDDR moves data on both clock edges: bytes/s = load x clock x 2 x bus width / 8.
    """
    return util_percent / 100.0 * freq_mhz * 1e6 * 2 * bus_width_bits / 8 / 1e9
