"""Shared plumbing for the ``python -m edgecsp.<verb>`` entry points."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edgecsp.errors import EdgeCSPError


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a CLI main: a user error is one line on stderr and exit code 2, never a traceback.

    A library of an install extra that is missing (torch on a device install) is one line naming
    the extra. A full disk, a read-only or unwritable location, a bad path is the user's environment, not a
    bug: it gets the same one line (naming the path and what to do).
    """
    from edgecsp.fsutil import os_problem

    try:
        return int(main(argv) or 0)
    except EdgeCSPError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:  # a host-only command on a device install: name the extra
        from edgecsp.extras import missing_library

        line = missing_library(err)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except OSError as err:
        problem = os_problem(err)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def add_library_option(parser: argparse.ArgumentParser) -> None:
    """``--library PATH``: the one way a native backend library gets loaded (see backends.libraries)."""
    parser.add_argument("--library", type=Path, action="append", default=[], metavar="PATH",
                        help="a native library the backend may load: OpenVINO extension, TensorRT plugin, ONNX Runtime "
                             "custom ops (repeatable; nothing in an artifact can make edgecsp load a library)")
