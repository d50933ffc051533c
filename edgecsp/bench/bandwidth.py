"""The platform's measured peaks: memory bandwidth (STREAM-style) and FP32 compute.

Bandwidth follows STREAM's rules: float64 arrays each at least 4x the last-level cache, best
of several repetitions, bytes counted as STREAM counts them (copy 16 B, triad 24 B per element;
write-allocate traffic not counted). Each of ``threads`` worker threads works on its own slice
(numpy releases the GIL in copies and ufuncs). The triad ``a = b + s*c`` runs in cache-sized
blocks with ``s*c`` in a cache-resident scratch buffer, so it moves three arrays' worth of
memory like STREAM's, not the five a plain numpy expression would.

Compute is matrix multiply per precision (torch, all usable cores: fp32, bf16, int8): each
engine's roofline ceiling is its own precision's. For a GPU engine a profile's ``[hardware]
peak_gmacs`` replaces it, and ``peak_dram_gbps`` (the datasheet's DRAM peak) is shown beside the
measured bandwidth.

The result is cached per machine (and thread count) in the edgecsp cache directory.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgecsp.bench import machine
from edgecsp.fsutil import atomic_write

SCHEMA = "edgecsp-platform-peak/2"
BLOCK = 32 * 1024  # float64 elements per triad block: 256 KiB, inside every L2 we target


def last_level_cache_bytes() -> int:
    """The largest cache of cpu0 (sysfs); 32 MiB when it cannot be read."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
        try:
            sizes.append(int(text.rstrip("KMG")) * mult)
        except ValueError:
            continue
    return max(sizes) if sizes else 32 * 1024 ** 2


def _array_elements(array_mb: float | None) -> int:
    if array_mb is None:
        array_bytes = 4 * last_level_cache_bytes()
        try:
            import psutil

            array_bytes = min(array_bytes, int(psutil.virtual_memory().available) // 12)
        except ImportError:
            pass
        array_bytes = max(array_bytes, 64 * 1024 ** 2)
    else:
        array_bytes = int(array_mb * 1024 ** 2)
    return max(BLOCK, array_bytes // 8)


def stream(threads: int | None = None, array_mb: float | None = None, repeats: int = 5) -> dict[str, Any]:
    """Best-of-``repeats`` copy and triad bandwidth in GB/s (1e9 bytes/s)."""
    threads = threads or machine.usable_cpus()
    n = _array_elements(array_mb)
    a = np.ones(n)
    b = np.full(n, 2.0)
    c = np.full(n, 0.5)
    bounds = np.linspace(0, n, threads + 1).astype(int)
    slices = [(int(bounds[i]), int(bounds[i + 1])) for i in range(threads)]
    scratch = [np.empty(BLOCK) for _ in range(threads)]
    scalar = 3.0

    def copy(w: int) -> None:
        lo, hi = slices[w]
        np.copyto(c[lo:hi], a[lo:hi])

    def triad(w: int) -> None:
        lo, hi = slices[w]
        tmp = scratch[w]
        for s in range(lo, hi, BLOCK):
            e = min(hi, s + BLOCK)
            t = tmp[: e - s]
            np.multiply(c[s:e], scalar, out=t)
            np.add(b[s:e], t, out=a[s:e])

    best = {"copy": float("inf"), "triad": float("inf")}
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            for name, fn in (("copy", copy), ("triad", triad)):
                t0 = time.perf_counter()
                list(pool.map(fn, range(threads)))
                best[name] = min(best[name], time.perf_counter() - t0)
    if not np.isfinite(a[:10]).all():  # keeps the work observable; never true
        raise RuntimeError("STREAM arrays hold non-finite values")
    return {"copy_gbs": round(16 * n / best["copy"] / 1e9, 2), "triad_gbs": round(24 * n / best["triad"] / 1e9, 2),
            "array_mb": round(n * 8 / 1024 ** 2, 1), "threads": threads, "repeats": repeats}


def compute_peak(threads: int | None = None, n: int = 2048, seconds: float = 1.0) -> dict[str, Any]:
    """Matrix-multiply GMAC/s per precision with ``threads`` torch threads (best run within ``seconds``).

    fp32 and bf16 are torch.mm; int8 is torch._int_mm (int8 x int8 -> int32, oneDNN/VNNI), left
    out where this torch lacks it. An engine's roofline ceiling is its own precision's.
    """
    try:
        import torch
    except ImportError:  # a device install: bandwidth is measured, the compute ceiling is not
        return {"matrix": n, "threads": threads, "gmacs_fp32": None, "gmacs_bf16": None, "gmacs_int8": None,
                "note": "not measured: torch is not installed (pip install 'edgecsp[host]')"}

    threads = threads or machine.usable_cpus()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: dict[str, Any] = {"matrix": n, "threads": threads}
    try:
        cases = {"fp32": lambda: (torch.rand(n, n), torch.rand(n, n), torch.mm),
                 "bf16": lambda: (torch.rand(n, n).bfloat16(), torch.rand(n, n).bfloat16(), torch.mm),
                 "int8": lambda: (torch.randint(-128, 128, (n, n), dtype=torch.int8),
                                  torch.randint(-128, 128, (n, n), dtype=torch.int8), torch._int_mm)}
        for name, make in cases.items():
            try:
                x, y, op = make()
                op(x, y)
            except (RuntimeError, AttributeError, NotImplementedError):
                out[f"gmacs_{name}"] = None
                continue
            best = float("inf")
            end = time.perf_counter() + seconds
            runs = 0
            while runs < 3 or time.perf_counter() < end:
                t0 = time.perf_counter()
                op(x, y)
                best = min(best, time.perf_counter() - t0)
                runs += 1
            out[f"gmacs_{name}"] = round(n ** 3 / best / 1e9, 2)
    finally:
        torch.set_num_threads(before)
    return out


def platform_peak(threads: int | None = None, refresh: bool = False, cache: bool = True,
                  array_mb: float | None = None, repeats: int = 5, hardware: dict | None = None,
                  matrix: int = 2048, compute_seconds: float = 1.0) -> dict[str, Any]:
    """Measured peak bandwidth and compute of this machine, cached per machine and thread count.

    ``hardware`` (a target profile's ``[hardware]`` table): ``peak_dram_gbps`` is reported beside
    the measured bandwidth; ``peak_gmacs`` replaces the measured compute ceiling (kept as
    ``measured_peak_gmacs``).
    """
    from edgecsp.paths import cache_dir

    threads = threads or machine.usable_cpus()
    info = machine.describe()
    path = cache_dir() / "platform" / f"{info['key']}-t{threads}.json"
    result = None
    if cache and not refresh and path.is_file():
        try:
            result = json.loads(path.read_text())
            if result.get("schema") != SCHEMA:
                result = None
            else:
                result["cached"] = True
        except (OSError, json.JSONDecodeError):
            result = None
    if result is None:
        bw = stream(threads, array_mb, repeats)
        cp = compute_peak(threads, matrix, compute_seconds)
        result = {
            "schema": SCHEMA, "machine": info["key"], "cpu": info["cpu"],
            "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "load_average_1m": info.get("load_average_1m"),
            "stream": bw, "compute": cp,
            "peak_gbs": max(bw["copy_gbs"], bw["triad_gbs"]), "peak_gmacs": cp["gmacs_fp32"],
            "peak_gmacs_by_precision": {p: cp.get(f"gmacs_{p}") for p in ("fp32", "bf16", "int8")
                                        if cp.get(f"gmacs_{p}")},
            "method": "STREAM-style copy/triad (numpy, float64, arrays >= 4x LLC, best of repeats); "
                      "matrix multiply per precision (torch: fp32/bf16 mm, int8 _int_mm)",
            "cached": False,
        }
        if cache and cp.get("gmacs_fp32") is not None:  # measured on a device install: torch may come later
            atomic_write(path, json.dumps(result, indent=1))  # a private temporary: two benchmarks may write it
    hardware = hardware or {}
    if hardware.get("peak_dram_gbps"):  # the datasheet figure, shown beside the measured one
        result["datasheet_peak_gbs"] = float(hardware["peak_dram_gbps"])
    if hardware.get("peak_gmacs"):  # e.g. a GPU engine: the CPU's matrix multiply is not its ceiling
        result["measured_peak_gmacs"] = result["peak_gmacs"]
        result["peak_gmacs"] = float(hardware["peak_gmacs"])
        result["peak_gmacs_by_precision"] = {"fp32": float(hardware["peak_gmacs"])}
        result["peak_gmacs_source"] = "target profile [hardware] peak_gmacs"
    return result
