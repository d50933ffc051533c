"""Checked argparse types shared by every ``python -m edgecsp.<verb>`` command.

Every numeric and path option goes through one of these, so a value is refused by argparse, in
one line and with exit code 2, before any model is built or any memory is allocated: NaN and
infinities, zero or negative counts, sizes that would allocate gigabytes, a path that does not
exist. Each type keeps its bounds (``lo``, ``hi``) so tests can check what the parser lets
through. ``Parser`` is argparse with one-line errors (argparse's own prints the usage first).
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any, NoReturn

from edgecsp.errors import shown

# Bounds for sizes: what an edge detector plausibly uses, far below what exhausts a machine.
MAX_BATCH = 256
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 2048
# batch x input pixels of one query: 64 x 1024^2 (an 800 MB float32 input, activations several
# times that); beyond it export and compile would start by allocating tens of gigabytes.
MAX_BATCH_PIXELS = 64 * 1024 * 1024
MAX_IMAGES = 10_000_000
MAX_WORKERS = 256


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit 2): ``error: <prog>: <what>``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {shown(message)} (see --help)\n")


class CheckedType:
    """Base of the checked types: callable on the option's text, with a readable name in errors."""

    lo: float | None = None
    hi: float | None = None

    def __call__(self, text: str) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:  # argparse names the type in some messages
        return type(self).__name__


def _fail(text: str, expected: str) -> NoReturn:
    raise argparse.ArgumentTypeError(f"expected {expected}, got {shown(text)[:60]!r}")


class IntRange(CheckedType):
    """An integer ``lo <= n <= hi`` written in decimal (no '1e3', no '0x10', no 20-digit numbers)."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi

    def __call__(self, text: str) -> int:
        expected = f"an integer from {self.lo} to {self.hi}"
        if not re.fullmatch(r"\s*[+-]?\d{1,12}\s*", text):
            _fail(text, expected)
        value = int(text)
        if not self.lo <= value <= self.hi:
            _fail(text, expected)
        return value


def positive_int(hi: int) -> IntRange:
    return IntRange(1, hi)


class FloatRange(CheckedType):
    """A finite number with ``lo <= x <= hi`` (``lo`` excluded when ``open_lo``): no NaN, no inf."""

    def __init__(self, lo: float, hi: float, open_lo: bool = False):
        self.lo, self.hi, self.open_lo = lo, hi, open_lo

    def __call__(self, text: str) -> float:
        expected = f"a finite number {'>' if self.open_lo else '>='} {self.lo:g} and <= {self.hi:g}"
        try:
            value = float(text)
        except (ValueError, TypeError):
            _fail(text, expected)
        if not math.isfinite(value) or value > self.hi or value < self.lo or (self.open_lo and value == self.lo):
            _fail(text, expected)
        return value


def probability() -> FloatRange:
    return FloatRange(0.0, 1.0)


class Batch(CheckedType):
    """An engine batch: 1 to MAX_BATCH, or 'dynamic'."""

    lo, hi = 1, MAX_BATCH

    def __call__(self, text: str) -> int | str:
        if text == "dynamic":
            return text
        try:
            return IntRange(1, MAX_BATCH)(text)
        except argparse.ArgumentTypeError:
            _fail(text, f"a batch from 1 to {MAX_BATCH} or 'dynamic'")


class InputSize(CheckedType):
    """A square input size: a multiple of 32 from MIN_INPUT_SIZE to MAX_INPUT_SIZE."""

    lo, hi = MIN_INPUT_SIZE, MAX_INPUT_SIZE

    def __call__(self, text: str) -> int:
        expected = f"a multiple of 32 from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"
        try:
            value = IntRange(MIN_INPUT_SIZE, MAX_INPUT_SIZE)(text)
        except argparse.ArgumentTypeError:
            _fail(text, expected)
        if value % 32:
            _fail(text, expected)
        return value


class Device(CheckedType):
    """A torch device: cpu, cuda, cuda:N, mps or auto (availability is checked where it is used)."""

    def __call__(self, text: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d{1,2})?", text):
            _fail(text, "cpu, cuda, cuda:N, mps or auto")
        return text


class ExistingPath(CheckedType):
    """A path that exists: ``kind`` 'file', 'dir' or 'any'."""

    def __init__(self, kind: str = "any"):
        self.kind = kind

    def __call__(self, text: str) -> Path:
        what = {"file": "an existing file", "dir": "an existing folder", "any": "an existing file or folder"}[self.kind]
        if not text.strip() or "\x00" in text:
            _fail(text, what)
        path = Path(text)
        try:
            ok = path.is_file() if self.kind == "file" else path.is_dir() if self.kind == "dir" else path.exists()
        except OSError:  # a name too long, a permission problem on the way
            ok = False
        if not ok:
            _fail(text, what)
        return path


class OutPath(CheckedType):
    """A path to write: not empty (its folder is created or checked where it is written)."""

    def __call__(self, text: str) -> Path:
        if not text.strip() or "\x00" in text:
            _fail(text, "a path to write to")
        return Path(text)


def existing_file() -> ExistingPath:
    return ExistingPath("file")


def existing_dir() -> ExistingPath:
    return ExistingPath("dir")


def existing_path() -> ExistingPath:
    return ExistingPath("any")


def check_device(device: str) -> None:
    """A device this machine has (torch imported only here, where a device is about to be used)."""
    import torch

    from edgecsp.errors import EdgeCSPError

    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise EdgeCSPError(f"device {device} is not available here ({torch.cuda.device_count()} CUDA devices); "
                               "use --device cpu")
    elif device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EdgeCSPError("device mps is not available here; use --device cpu")


def check_batch_pixels(batch: int | str | None, size: int, what: str = "--batch") -> None:
    """Refuse a batch x input size whose input alone would allocate gigabytes, before anything is allocated."""
    from edgecsp.errors import EdgeCSPError

    if isinstance(batch, int) and batch * size * size > MAX_BATCH_PIXELS:
        raise EdgeCSPError(f"{what} {batch} at input {size}x{size} is {batch * size * size / 2**20:.0f} M pixels per "
                           f"query (limit {MAX_BATCH_PIXELS // 2**20} M); use a smaller batch or input size")
