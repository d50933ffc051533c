"""Reading the project's data files (targets, calibration recipes, suites) with one error style.

``read_toml`` parses a file. ``Table`` checks one table of it as it is read: only known keys (a
misspelt key is refused by name rather than silently ignored) and values of the right type and
range, so a bad file fails on load with one line instead of deep inside a build or a nightly run.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError

try:
    import tomllib  # novermin (the tomli fallback below covers < 3.11)
except ImportError:  # Python < 3.11 (JetPack's 3.8 and 3.10): the same parser as a package
    import tomli as tomllib  # type: ignore[no-redef]


def is_file(path: Path) -> bool:
    """Path.is_file, but False (not OSError) for a name the OS refuses, e.g. one too long."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def read_toml(path: Path, what: str) -> dict:
    """Parse ``path``; a missing or malformed file is one line naming ``what`` it was meant to be."""
    if not is_file(path):
        raise EdgeCSPError(f"{what} {path} does not exist")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)  # TOML is UTF-8 whatever the locale
    except tomllib.TOMLDecodeError as err:
        raise EdgeCSPError(f"{what} {path} is not valid TOML ({err})") from None
    except UnicodeDecodeError:
        raise EdgeCSPError(f"{what} {path} is not valid TOML (not UTF-8 text)") from None
    except RecursionError:  # tomllib recurses per nesting level: "a = [[[[..." would crash it
        raise EdgeCSPError(f"{what} {path} is not valid TOML (nested too deeply)") from None
    except OSError as err:
        raise EdgeCSPError(f"cannot read {what} {path} ({err.strerror or err})") from None


def short(value: Any) -> str:
    """A value from a file for an error message: repr (so one line), cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def key_names(keys: Iterable[Any]) -> str:
    """Keys for a message: plain when they are plain words, repr otherwise (a key may hold a newline)."""
    return ", ".join(k if isinstance(k, str) and re.fullmatch(r"[\w.-]+", k) else short(k) for k in keys)


_REQUIRED = object()
_KINDS = {  # kind: (test, description)
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "strings": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "table": (lambda v: isinstance(v, dict), "a table"),
}


class Table:
    """One table of a data file; ``where`` names it in errors, e.g. "target profile x.toml [target]"."""

    def __init__(self, value: Any, where: str, known: Iterable[str] | None = None):
        if not isinstance(value, dict):
            raise EdgeCSPError(f"{where} must be a table, got {short(value)}")
        if known is not None:
            known = sorted(known)
            unknown = sorted(set(value) - set(known), key=str)
            if unknown:
                raise EdgeCSPError(f"{where}: unknown key(s) {key_names(unknown)}; known: {', '.join(known)}")
        self.data, self.where = value, where

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, kind: str, default: Any = _REQUIRED, *, low: float | None = None,
            high: float | None = None, above: float | None = None, choices: Iterable[str] | None = None) -> Any:
        """The value of ``key``, checked: ``kind`` (see _KINDS), ``low <= value <= high``,
        ``value > above``, ``value in choices``; ``default`` when absent (required without one)."""
        if key not in self.data:
            if default is _REQUIRED:
                raise EdgeCSPError(f"{self.where} has no {key} = ...; add it")
            return default
        value = self.data[key]
        test, wanted = _KINDS[kind]
        ok = test(value)
        if ok and kind in ("int", "number"):
            ok = (low is None or value >= low) and (high is None or value <= high) and (above is None or value > above)
            bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
                      f"<= {high}" if high is not None else ""]
            wanted += " " + " and ".join(b for b in bounds if b) if any(bounds) else ""
        if ok and choices is not None:
            choices = list(choices)
            ok = all(v in choices for v in value) if kind == "strings" else value in choices
            wanted = f"{'a list of ' if kind == 'strings' else ''}one of {', '.join(choices)}"
        if not ok:
            raise EdgeCSPError(f"{self.where}: {key} must be {wanted}, got {short(value)}")
        return float(value) if kind == "number" else value
