"""Hostile command-line options: every option of every ``python -m edgecsp.<verb>`` parser, fed
NaN, infinities, zero, negatives, huge numbers, wrong types, empty strings and odd paths.

Each input ends in exit code 2 with one line on stderr, or is accepted and the command runs up to
its heavy work (compile, export, evaluation, training, benchmark: stopped there, since the cheap
part is where an accepted value is converted and used) without a traceback. What the parser
accepts must lie inside the bounds its checked type declares (edgecsp.options). The parsers are
walked from each module's ``build_parser()``, so a new option is covered without editing this
file; an option without a checked type must be named in FREE_TEXT with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
from pathlib import Path

import pytest
from fuzz_harness import REJECTED, TRIED, examples, expect_clean
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecsp import cli
from edgecsp.errors import EdgeCSPError
from edgecsp.options import CheckedType

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["compile", "export", "evaluate", "detect", "benchmark", "nightly", "summary", "train", "data", "verify",
            "worker"]
# Free text, checked where it is used (each with a one-line error of its own): names looked up
# in a registry, a URL, choices with their own list.
FREE_TEXT = {"target", "model", "precision", "calibration", "compare", "db", "device", "names", "library",
             "weights",
             "model_option",  # summary --model: a model name or cfg path, like --model elsewhere
             "device_name",  # nightly --device-name (and its old spelling --device): the history's name for this machine
             "head", "name", "node_ip_address",  # worker: a Ray address, a device name, an IP: checked by ray start
             "cluster",  # nightly --cluster HOST:PORT: checked when connecting (one line when nothing listens)
             "night"}  # nightly --night: an id of the caller's choosing, stored as text
# Where each command's heavy work starts: an accepted input runs up to here, then stops.
HEAVY = ["edgecsp.pipeline.compile_artifact", "edgecsp.backends.tensorrt.bundle.build_from_bundle",
         "edgecsp.onnx_writer.export_onnx", "edgecsp.coco_eval.evaluate", "edgecsp.coco_eval.torch_predict_fn",
         "edgecsp.bench.run.run_benchmark", "edgecsp.bench.nightly.run_suite", "edgecsp.summary.summarize",
         "edgecsp.training.trainer.train", "edgecsp.data.shapes.generate_shapes", "edgecsp.data.yolo_txt.yolo_to_coco",
         "edgecsp.signing.generate_keypair", "edgecsp.fleet.device.describe"]
HOSTILE = ["nan", "NaN", "inf", "-inf", "1e309", "0", "-0", "-1", "-3", "0.5", "7", "1e9", "100000", "320000",
           "99999999999999999999", "0x10", "two", "", " ", "-", "dynamic", "/", "/dev/null", "/nonexistent/x",
           "../../../../etc/passwd", "a\nb", "ü" * 300]


class Stop(Exception):
    """Raised where the heavy work would start."""


def _stop(*args, **kwargs):
    raise Stop


@pytest.fixture(scope="module")
def world(tmp_path_factory, shapes_small):
    """Base arguments that make each command valid, so one hostile value at a time is what is tested."""
    tmp = tmp_path_factory.mktemp("options")
    image = min((shapes_small["val"] / "images").iterdir())
    base = {
        "compile": [("--target", "onnxruntime")],
        "export": [],
        "evaluate": [("--data", str(shapes_small["val"]))],
        "detect": [("images", str(image)), ("--out", str(tmp / "det"))],
        "benchmark": [("--artifact", str(tmp))],
        "nightly": [("--suite", str(REPO / "benchmarks" / "nightly.toml"))],
        "summary": [("model", "cspdarknet53")],
        "train": [("--data", str(shapes_small["train"]))],
        "data shapes": [("--out", str(tmp / "shapes"))],
        "data yolo2coco": [("root", str(tmp))],
        "data info": [("data", str(shapes_small["val"]))],
        "verify": [("artifact", str(tmp)), ("--trusted", str(REPO / "README.md"))],
        "worker": [("--head", "127.0.0.1:6379")],
    }
    return {"base": base, "tmp": tmp}


def _parsers() -> dict[str, tuple[object, argparse.ArgumentParser, list[str]]]:
    """name -> (module, parser, argv prefix): every command, every subcommand."""
    found = {}
    for name in COMMANDS:
        module = importlib.import_module(f"edgecsp.{name}" if name != "data" else "edgecsp.data.__main__")
        parser = module.build_parser()
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs:
            for sub, subparser in subs[0].choices.items():
                found[f"{name} {sub}"] = (module, subparser, [sub])
        else:
            found[name] = (module, parser, [])
    return found


PARSERS = _parsers()


def _value_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.nargs != 0 and not isinstance(a, (argparse._HelpAction,
                                                                               argparse._SubParsersAction))]


CASES = [(cmd, action.option_strings[-1] if action.option_strings else action.dest)
         for cmd, (_, parser, _) in PARSERS.items() for action in _value_actions(parser)]


def test_every_value_option_has_a_checked_type():
    unchecked = [f"{cmd} {key}" for cmd, (_, parser, _) in PARSERS.items() for action in _value_actions(parser)
                 if not isinstance(action.type, CheckedType) and not action.choices and action.dest not in FREE_TEXT
                 for key in [action.option_strings[-1] if action.option_strings else action.dest]]
    assert not unchecked, f"options without a checked type (edgecsp.options): {unchecked}"
    assert len(CASES) > 60  # every command's options were found


def _argv(world, cmd: str, key: str, value: str) -> list[str]:
    _, parser, prefix = PARSERS[cmd]
    # Drop a base option that is mutually exclusive with the one under test.
    rivals = {a.option_strings[-1] for g in parser._mutually_exclusive_groups for a in g._group_actions
              if key in a.option_strings or any(key in b.option_strings for b in g._group_actions)} - {key}
    pairs = [(k, v) for k, v in world["base"][cmd] if k not in rivals]
    if key in dict(pairs):
        pairs = [(k, value if k == key else v) for k, v in pairs]
    else:
        pairs.append((key, value))
    argv = list(prefix)
    for k, v in pairs:
        argv += [f"{k}={v}"] if k.startswith("-") else [v]
    return argv


def _run(cmd: str, argv: list[str]) -> str:
    """Run one command line in this process; raise EdgeCSPError with its stderr when refused (exit 2)."""
    module = PARSERS[cmd][0]
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.run(module.main if cmd.split()[0] != "data" else module._main, argv)
        except SystemExit as exit_:
            code = exit_.code
        except Stop:
            return "reached its heavy work"
    lines = err.getvalue().strip().splitlines()
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{argv}: not one error line: {err.getvalue()!r}"
        raise EdgeCSPError(lines[0])
    assert code == 0, f"{argv}: exit {code}: {err.getvalue()[-800:]}"
    return "ran"


def _check_accepted_value(cmd: str, argv: list[str]) -> None:
    """What the parser accepts lies inside its checked type's bounds."""
    _, parser, prefix = PARSERS[cmd]
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            ns = parser.parse_args(argv[len(prefix):])
        except SystemExit:
            return
    for action in _value_actions(parser):
        value = getattr(ns, action.dest, None)
        if isinstance(action.type, CheckedType) and isinstance(value, (int, float)) and action.type.lo is not None:
            assert math.isfinite(value) and action.type.lo <= value <= action.type.hi, (argv, action.dest, value)


@pytest.fixture
def stopped(monkeypatch, tmp_path):
    for path in HEAVY:
        module, name = path.rsplit(".", 1)
        monkeypatch.setattr(importlib.import_module(module), name, _stop)
    monkeypatch.chdir(tmp_path)  # anything written to a relative path lands here


def _one(world, cmd: str, key: str, value: str) -> None:
    argv = _argv(world, cmd, key, value)
    expect_clean(f"options:{cmd.split()[0]}", _run, cmd, argv)
    _check_accepted_value(cmd, argv)


def test_every_option_of_every_command_refuses_the_hostile_values_cleanly(world, stopped):
    for cmd, key in CASES:
        for value in HOSTILE:
            _one(world, cmd, key, value)
    tried = sum(TRIED[k] for k in TRIED if k.startswith("options:"))
    refused = sum(REJECTED[k] for k in REJECTED if k.startswith("options:"))
    print(f"\nhostile options: {len(CASES)} options, {tried} inputs, {refused} refused in one line")


_numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-2**80, 2**80).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(lambda x: f"{x:.3e}"))
_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), max_size=24)


# The patches of ``stopped`` hold for every input alike: nothing to reset between them.
@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.sampled_from(CASES), value=st.one_of(_numbers, _text))
def test_random_values_for_every_option_are_refused_or_run(world, stopped, case, value):
    _one(world, *case, value)


def test_the_issue_reproductions_are_refused_in_one_line(world, stopped):
    """The tracebacks and wrong successes of issue 13, each by name."""
    for cmd, argv in [
        ("compile", ["--target=onnxruntime", "--batch=two"]), ("compile", ["--target=onnxruntime", "--batch=0"]),
        ("compile", ["--target=onnxruntime", "--batch=99999999999999999999"]),
        ("compile", ["--target=onnxruntime", "--batch=100000"]), ("compile", ["--target=onnxruntime", "--verify-images=0"]),
        ("compile", ["--target=onnxruntime", "--verify-images=-3"]), ("evaluate", ["--batch=0"]),
        ("evaluate", ["--batch=-1"]), ("evaluate", ["--model=demo", "--input-size=7"]),
        ("benchmark", ["--artifact=/", "--duration=nan"]), ("benchmark", ["--artifact=/", "--duration=inf"]),
        ("benchmark", ["--artifact=/", "--batch=0"]), ("benchmark", ["--artifact=/", "--eval-images=0"]),
        ("summary", ["cspdarknet53", "--width=nan"]), ("summary", ["cspdarknet53", "--depth=1e9"]),
        ("train", ["--data=/", "--batch=0"]), ("train", ["--data=/", "--lr=nan"]),
        ("train", ["--data=/", "--input-size=7"]), ("train", ["--data=/", "--device=tpu"]),
        ("train", ["--data=/", "--workers=-1"]), ("export", ["--input-size=320000"]),
        ("detect", ["--score=nan", "--out=x", str(REPO / "README.md")]),
        ("detect", ["--iou=-1", "--out=x", str(REPO / "README.md")]),
    ]:
        with pytest.raises(EdgeCSPError, match="^error: "):
            _run(cmd, argv)


def test_a_batch_whose_input_alone_is_gigabytes_is_refused_before_export():
    from edgecsp.options import check_batch_pixels

    check_batch_pixels(64, 1024)
    with pytest.raises(EdgeCSPError, match="M pixels per query"):
        check_batch_pixels(256, 2048)
