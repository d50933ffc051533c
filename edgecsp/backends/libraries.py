"""Native libraries a backend may load into the process: only the ones the user names.

OpenVINO extensions, TensorRT plugin libraries and ONNX Runtime custom-op libraries run native
code when loaded. They come only from ``--library PATH`` (``edgecsp.load(..., libraries=[...])``),
never from an artifact: nothing in a manifest can make edgecsp load a library, so a tampered or
hostile artifact cannot run code through this door.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from edgecsp.errors import EdgeCSPError


def user_libraries(paths: Iterable[str | Path] | None, backend: str) -> list[Path]:
    """Check each named library exists and is a regular file; return their absolute paths."""
    if paths is None:
        return []
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            raise EdgeCSPError(f"{backend} library {path} does not exist (or is not a file); check --library")
        out.append(path.resolve())
    return out
