"""Where edgecsp keeps generated data and caches (``EDGECSP_CACHE_DIR``, else ~/.cache/edgecsp).

A foundation module: it imports no other part of edgecsp (tests/test_layers.py). The default
validation set, which is generated data, lives with the data: ``edgecsp.data.shapes.default_val_dir``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def cache_root() -> Path:
    """$EDGECSP_CACHE_DIR, else ~/.cache/edgecsp (not created)."""
    env = os.environ.get("EDGECSP_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "edgecsp"


def cache_dir() -> Path:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    return root


def data_dir(name: str) -> Path:
    """A top-level data folder (targets, calibration): the checkout's, else the installed copy.

    A wheel install carries them as data files under <prefix>/share/edgecsp/ (see pyproject).
    """
    checkout = Path(__file__).resolve().parent.parent / name
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "edgecsp" / name
