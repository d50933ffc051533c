"""Shared plumbing for the ``python -m edgecsp.<verb>`` entry points.

One command style: every command parses with ``options.Parser`` and the checked types of
edgecsp.options, takes its shared options from the groups here (the model, ``--batch``,
``--score``/``--iou``, ``--json``, ``--library``) so an option means the same everywhere, runs
through ``run`` (a user error is one line and exit code 2), prints its progress on stderr
(``say``) and its result on stdout: a table or lines by default, one JSON object with ``--json``.
"""

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
                      group=None, help: str | None = None, repeatable: bool = False) -> None:
    """``--model`` (checkpoint, zoo name, 'demo' or a Darknet .cfg) with ``--weights`` and ``--names``
    for Darknet models: the same three options in every command that takes a model. ``help`` says
    what --model means in this command; ``repeatable`` (summary) collects several in ``model_option``."""
    where = group or parser
    text = help or ("edgecsp .safetensors checkpoint, zoo detector name, 'demo'"
                    + (f" (default: {default})" if default else "") + ", or a Darknet .cfg")
    if repeatable:
        where.add_argument("--model", dest="model_option", action="append", default=[], required=required,
                           metavar="MODEL", help=text + " (repeatable)")
    else:
        where.add_argument("--model", default=default, required=required, help=text)
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


def say(line: str) -> None:
    """A progress line: on stderr, flushed (in a CI log or behind a pipe it shows as it happens),
    so that stdout holds only the command's result."""
    print(line, file=sys.stderr, flush=True)


def add_json_option(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: the command's result as one JSON object on stdout instead of the table or lines
    (progress stays on stderr). A file of it, where a command writes one, is ``--json-out FILE``."""
    parser.add_argument("--json", action="store_true",
                        help=f"print {what} as one JSON object on stdout instead of the table")


def add_batch_option(parser: argparse.ArgumentParser, help: str, default: int | None = None,
                     dynamic: bool = False) -> None:
    """``--batch``: 1 to MAX_BATCH (or 'dynamic' for an engine's batch), checked before any work."""
    from edgecsp import options as opt

    parser.add_argument("--batch", type=opt.Batch() if dynamic else opt.positive_int(opt.MAX_BATCH), default=default,
                        help=help)


def add_threshold_options(parser: argparse.ArgumentParser, what: str = "detections",
                          defaults: bool = True) -> None:
    """``--score`` and ``--iou``, with the one default of deployed detections (postprocess.DEFAULT_*).
    ``defaults=False`` leaves them None, for a command that must tell a given value from none."""
    from edgecsp import options as opt
    from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE

    parser.add_argument("--score", type=opt.probability(), default=DEFAULT_SCORE if defaults else None,
                        help=f"{what}: minimum score (objectness x class probability) to keep (default {DEFAULT_SCORE})")
    parser.add_argument("--iou", type=opt.probability(), default=DEFAULT_IOU if defaults else None,
                        help=f"{what}: NMS IoU threshold (default {DEFAULT_IOU})")


class Renamed(argparse.Action):
    """An option's old spelling, kept working: it sets the new option's value and says, in one
    line on stderr, what it is called now."""

    def __init__(self, option_strings, dest, new: str, **kwargs):
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is now {self.new}; the old spelling will be removed", file=sys.stderr)
        setattr(namespace, self.dest, values)
