"""TensorRT's implicit-calibration cache (INT8 on TensorRT 8.x; deprecated in 10.1, removed in 11).

Text only, no ONNX: the host writes the cache into a bundle (edgecsp.backends.tensorrt.qdq), and the device
retags it with its TensorRT version before the build, with only the device install.
"""

from __future__ import annotations

import re
import struct

from edgecsp.errors import EdgeCSPError

# What TensorRT's implicit calibrators tag a cache with (IInt8EntropyCalibrator2).
CACHE_ALGORITHM = "EntropyCalibration2"


def trt_version_code(version: str) -> int:
    """NV_TENSORRT_VERSION of a release ("8.5.2" -> 8502, "10.3.0" -> 100300): the cache header's tag."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:3]] + [0, 0]
    major, minor, patch = parts[:3]
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def format_calibration_cache(scales: dict[str, float], trt_version: str = "8.5.2",
                             algorithm: str = CACHE_ALGORITHM) -> str:
    """TensorRT's text cache: a header line, then ``tensor: <float32 scale bits as hex>`` per tensor."""
    lines = [f"TRT-{trt_version_code(trt_version)}-{algorithm}"]
    for name in sorted(scales):
        bits = struct.unpack(">I", struct.pack(">f", scales[name]))[0]
        lines.append(f"{name}: {bits:08x}")
    return "\n".join(lines) + "\n"


def parse_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
    """(header, {tensor: scale}); raises EdgeCSPError on anything that is not such a cache."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not re.fullmatch(r"TRT-\d+-\w+", lines[0].strip()):
        raise EdgeCSPError("calibration cache has no 'TRT-<version>-<algorithm>' header; rebuild the bundle")
    scales: dict[str, float] = {}
    for ln in lines[1:]:
        name, sep, value = ln.rpartition(":")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{1,8}", value.strip()):
            raise EdgeCSPError(f"calibration cache line {ln!r} is not 'tensor: hexscale'; rebuild the bundle")
        scales[name.strip()] = struct.unpack(">f", struct.pack(">I", int(value.strip(), 16)))[0]
    return lines[0].strip(), scales


def retag_calibration_cache(text: str, trt_version: str, algorithm: str = CACHE_ALGORITHM) -> str:
    """The same scales under the installed TensorRT's header: TensorRT skips a cache tagged with
    another version, and these scales come from our calibration, not from TensorRT's."""
    _, scales = parse_calibration_cache(text)
    return format_calibration_cache(scales, trt_version, algorithm)
