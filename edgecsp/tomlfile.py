"""Reading the project's data files (targets, calibration recipes, suites) with one error style."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgecsp.errors import EdgeCSPError


def read_toml(path: Path, what: str) -> dict:
    """Parse ``path``; a missing or malformed file is one line naming ``what`` it was meant to be."""
    if not path.is_file():
        raise EdgeCSPError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise EdgeCSPError(f"{what} {path} is not valid TOML ({err})") from None
