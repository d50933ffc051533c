"""Where edgecsp keeps generated data and caches (``EDGECSP_CACHE_DIR``, else ~/.cache/edgecsp)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

# The default validation set: the shapes task's val split, fixed seed, generated on first use.
DEFAULT_VAL_IMAGES = 200
DEFAULT_VAL_SEED = 20261125


def cache_dir() -> Path:
    from edgecsp.data.shapes import default_cache_dir

    root = Path(default_cache_dir())
    root.mkdir(parents=True, exist_ok=True)
    return root


def default_val_dir() -> Path:
    from edgecsp.data.shapes import ensure_shapes_val

    return ensure_shapes_val(cache_dir(), n=DEFAULT_VAL_IMAGES, seed=DEFAULT_VAL_SEED)


def validation_data(data: str | Path | None = None, progress: Callable[[str], None] | None = None) -> Path:
    """The validation set to use: ``data`` when given, else the default one (the shapes task's val
    split, generated on first use and cached), the one fallback of every command and check."""
    if data is not None:
        return Path(data)
    if progress is not None:
        progress("preparing the default validation set (shapes task, generated once and cached)")
    return default_val_dir()


def data_dir(name: str) -> Path:
    """A top-level data folder (targets, calibration): the checkout's, else the installed copy.

    A wheel install carries them as data files under <prefix>/share/edgecsp/ (see pyproject).
    """
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "edgecsp" / name
