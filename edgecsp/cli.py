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


def add_model_options(parser: argparse.ArgumentParser, default: str | None = "demo", required: bool = False,
                      group=None) -> None:
    """``--model`` (checkpoint, zoo name, 'demo' or a Darknet .cfg) with ``--weights`` and ``--names``
    for Darknet models: the same three options in every command that takes a model."""
    where = group or parser
    where.add_argument("--model", default=default, required=required,
                       help="edgecsp .safetensors checkpoint, zoo detector name, 'demo'"
                            + (f" (default: {default})" if default else "") + ", or a Darknet .cfg")
    from edgecsp import options as opt

    parser.add_argument("--weights", metavar="FILE.weights", type=opt.existing_file(),
                        help="with a Darknet .cfg --model: its trained .weights (without: an untrained cfg)")
    parser.add_argument("--names", metavar="FILE.names", type=opt.existing_file(),
                        help="with a Darknet .cfg --model: its class names, one per line (default: from the data, "
                             "else class0..N-1)")


def model_source(args: argparse.Namespace):
    """The ModelSource of parsed model options (see add_model_options)."""
    from edgecsp.models.checkpoint import ModelSource

    return ModelSource(args.model or "demo", args.weights, args.names)
