"""Fuzzing checkpoints: raw bytes, damaged safetensors, mutated descriptions and tensors, model specs.

Every input must end in success or in one EdgeCSPError line (see fuzz_harness). Inputs that once
found a bug stay as ``@example``s and run on every CI run. Also checks that the CLI turns such
inputs into exit code 2 and one line on stderr.
"""

from __future__ import annotations

import copy
import json
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from fuzz_harness import examples, expect_clean
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from edgecsp import cli
from edgecsp.models.checkpoint import DEMO_CHECKPOINT, load_checkpoint, read_checkpoint, resolve_model

DEMO_BYTES = DEMO_CHECKPOINT.read_bytes()
HEADER_END = 8 + struct.unpack("<Q", DEMO_BYTES[:8])[0]  # the JSON header ends here, tensor data follows
DEMO_TENSORS, DEMO_DESCRIPTION = read_checkpoint(DEMO_CHECKPOINT)
DELETE = "<delete>"  # a mutation value: remove the key


def load_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.safetensors"
        path.write_bytes(data)
        expect_clean("checkpoint.bytes", load_checkpoint, path)


def load_written(tensors: dict[str, torch.Tensor], metadata: dict[str, str], target: str) -> None:
    """Save with the safetensors library (a well-formed file) and load it back."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.safetensors"
        save_file(tensors, str(path), metadata=metadata)
        expect_clean(target, load_checkpoint, path)


# --------------------------------------------------------------------------- damaged files


@given(st.binary(max_size=2000))
@example(b"")
@example(b"PK\x03\x04" + b"\x00" * 40)
def test_random_bytes(data):
    load_bytes(data)


@st.composite
def damaged_demo(draw) -> bytes:
    """The demo checkpoint cut short, or with bytes overwritten, mostly in its JSON header."""
    data = bytearray(DEMO_BYTES)
    if draw(st.booleans()):
        end = draw(st.one_of(st.integers(0, HEADER_END + 64), st.integers(0, len(data) - 1)))
        return bytes(data[:end])
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.one_of(st.integers(0, HEADER_END - 1), st.integers(0, len(data) - 1)))
        data[at] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=examples(60))
@given(damaged_demo())
def test_damaged_demo(data):
    load_bytes(data)


# An absurd header length, then some JSON: what safetensors reads before anything else.
header_lengths = st.one_of(st.sampled_from([0, 1, 2, 7, 8, 2**31, 2**32 + 2, 2**63, 2**64 - 1, 100_000_001]),
                           st.integers(0, 2**64 - 1))
header_bodies = st.one_of(
    st.sampled_from([b"{}", b"[]", b"null", b'{"__metadata__": {"edgecsp": "{}"}}', b"{" * 100_000,
                     b'{"a": {"dtype": "F32", "shape": [1099511627776], "data_offsets": [0, 4398046511104]}}',
                     b'{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}',
                     b'{"a": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}}']),
    st.binary(max_size=200),
)


@settings(max_examples=examples(60))
@given(header_lengths, header_bodies, st.binary(max_size=64))
@example(2**63, b"{}", b"")
@example(100_000_001, b"{}", b"")
def test_absurd_header_length(length, body, rest):
    load_bytes(struct.pack("<Q", length) + body + rest)


# --------------------------------------------------------------------------- mutated descriptions

CONFIG_KEYS = ["backbone", "neck", "neck_args", "width", "depth", "anchors", "strides", "num_classes", "input_size",
               "scale_xy", "new_coords", "description", "no_such_field"]
PATHS = ([("architecture", "detector_config", k) for k in CONFIG_KEYS]
         + [("architecture", "detector_config", "neck_args", k) for k in ("width", "sam", "spp", "act", "maxout_groups",
                                                                            "spp_sizes", "bogus")]
         + [("architecture", "detector_config", "anchors", 0), ("architecture", "detector_config", "strides", 1),
            ("architecture", "detector_config"), ("architecture",), ("format",), ("class_names",),
            ("class_names", 0), ("num_classes",), ("name",)])
json_values = st.one_of(
    st.sampled_from([DELETE, None, True, False, 0, -1, 1, 2, 3, 10**9, 10**30, -10**9, 0.0, -0.5, 1e308, 0.001,
                     float("nan"), float("inf"), "", "8", "abc", "cspdarknet53", "efm", "panet-spp", "leaky",
                     [], [1], [1, 2], [[1, 2, 3]], [[1, 2]] * 9, [[0, 0]] * 9, [[-5, 10]] * 9, [["a", "b"]] * 9,
                     [8, 16], [0, 16, 32], [8, 16, 32, 64], [5, 9, 13], [4, 8], {}, {"width": 10**6}, {"x": 1},
                     "x" * 10_000, 10**400, -(10**400), 1e300, "\n", {"\n": 1}]),
    st.integers(), st.floats(), st.text(max_size=20),
    st.lists(st.integers(-10, 10**6), max_size=5),
)


def mutated(description: dict, path: tuple, value) -> dict:
    desc = copy.deepcopy(description)
    node = desc
    for key in path[:-1]:
        node = node[key]
    if value == DELETE:
        if isinstance(node, dict):
            node.pop(path[-1], None)
        else:
            del node[path[-1]]
    else:
        node[path[-1]] = value
    return desc


# The explicit examples once raised ZeroDivisionError, TypeError, KeyError, ValueError, IndexError,
# OverflowError, tried to allocate up to 36 TB, or hung building a depth=1000000 backbone.
@settings(max_examples=examples(150))
@given(st.lists(st.tuples(st.sampled_from(PATHS), json_values), min_size=1, max_size=3))
@example([(("architecture", "detector_config", "input_size"), 0)])
@example([(("architecture", "detector_config", "width"), 1000)])
@example([(("architecture", "detector_config", "depth"), 10**6)])
@example([(("architecture", "detector_config", "width"), "8")])
@example([(("architecture", "detector_config", "neck"), "abc")])
@example([(("architecture", "detector_config", "backbone"), [])])
@example([(("architecture", "detector_config", "neck_args"), {"width": 10**6})])
@example([(("architecture", "detector_config", "neck_args", "width"), "8")])
@example([(("architecture", "detector_config", "neck_args", "spp_sizes"), [4, 8])])
@example([(("architecture", "detector_config", "num_classes"), -1)])
@example([(("architecture", "detector_config", "num_classes"), 10**9)])
@example([(("architecture", "detector_config", "anchors"), [[1, 2, 3]])])
@example([(("architecture", "detector_config", "anchors"), [["a", "b"]] * 9)])
@example([(("architecture", "detector_config", "anchors"), 3)])
@example([(("architecture", "detector_config", "strides"), [0, 16, 32])])
@example([(("architecture", "detector_config", "scale_xy"), "abc")])
@example([(("architecture", "detector_config"), "abc")])
@example([(("architecture", "detector_config", "no_such_field"), 1)])
@example([(("class_names",), DELETE)])
@example([(("architecture", "detector_config", "width"), 10**400)])
@example([(("architecture", "detector_config", "anchors"), [[1e300, 1]] * 9)])
def test_mutated_description(mutations):
    desc = DEMO_DESCRIPTION
    for path, value in mutations:
        try:
            desc = mutated(desc, path, value)
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed what this one edits
            pass
    load_written(DEMO_TENSORS, {"edgecsp": json.dumps(desc)}, "checkpoint.description")


@given(st.one_of(st.text(max_size=50), st.sampled_from(["[]", "3", '"x"', "null", "[" * 100_000, '{"format": 1}',
                                                        '{"format": "edgecsp-checkpoint/1"}', "NaN"])))
@example("[" * 100_000)
@example('{"format": "edgecsp-checkpoint/1", "x": ' + "1" * 5000 + "}")
@example("[]")
def test_description_not_an_object(text):
    load_written(DEMO_TENSORS, {"edgecsp": text}, "checkpoint.description")


# --------------------------------------------------------------------------- mutated tensors

KEYS = sorted(DEMO_TENSORS)
WEIGHT = next(k for k in KEYS if k.endswith(".weight"))  # a float32 parameter
DTYPES = [torch.int8, torch.uint8, torch.int64, torch.bool, torch.float16, torch.float64, torch.bfloat16]


@st.composite
def mutated_tensors(draw) -> dict[str, torch.Tensor]:
    tensors = dict(DEMO_TENSORS)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(KEYS))
        how = draw(st.integers(0, 5))
        t = tensors.get(key, DEMO_TENSORS[key])
        if how == 0:
            tensors.pop(key, None)
        elif how == 1:
            tensors[key] = t.to(draw(st.sampled_from(DTYPES)))
        elif how == 2:
            tensors[key] = t.reshape(-1) if t.dim() != 1 else t[:-1].clone()
        elif how == 3:
            tensors[key] = torch.zeros(t.numel() + 1)
        elif how == 4:
            tensors[draw(st.sampled_from(["extra", key + ".x", "train.step"]))] = torch.zeros(2)
        elif t.dtype.is_floating_point:
            tensors[key] = torch.full_like(t, draw(st.sampled_from([float("nan"), float("inf"), 1e30])))
    return tensors


@settings(max_examples=examples(60))
@given(mutated_tensors())
@example({**DEMO_TENSORS, WEIGHT: DEMO_TENSORS[WEIGHT].to(torch.int8)})
@example({**DEMO_TENSORS, WEIGHT: DEMO_TENSORS[WEIGHT].to(torch.bool)})
@example({**DEMO_TENSORS, WEIGHT: torch.full_like(DEMO_TENSORS[WEIGHT], float("nan"))})
def test_mutated_tensors(tensors):
    load_written(tensors, {"edgecsp": json.dumps(DEMO_DESCRIPTION)}, "checkpoint.tensors")


# --------------------------------------------------------------------------- model specs

SMALL_DETECTORS = ["csp-tiny-efm", "csp-small-efm", "csppeleenet-efm"]


@settings(max_examples=examples(40))
@given(st.one_of(st.sampled_from(["demo", "", ".", "/", "nope.safetensors", str(DEMO_CHECKPOINT.parent),
                                  "csp-tiny-efm ", "CSP-TINY-EFM", "\x00", "a" * 5000, *SMALL_DETECTORS]),
                 st.text(max_size=30)),
       st.sampled_from([None, 1, 0, -1, 7, 10**9, 2**63]))
@example("cspresnext50-panet-spp", 10**9)
@example("csp-tiny-efm", 0)
@example("\x00", None)
@example("\n", None)
@example("a" * 5000, None)
def test_resolve_model(spec, num_classes):
    expect_clean("checkpoint.resolve_model", resolve_model, spec, num_classes)


# --------------------------------------------------------------------------- CLI


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_summary_cli_refuses_bad_cfgs_and_configs(tmp_path, capsys):
    from edgecsp import summary

    cfg = tmp_path / "huge.cfg"
    cfg.write_text("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=1000000000\nsize=1\n")
    assert cli.run(summary.main, [str(cfg)]) == 2
    assert "huge.cfg:5" in one_error_line(capsys)
    cfg.write_text("[net]\nheight=1000000\nwidth=1000000\nchannels=3\n[convolutional]\nfilters=2\n")
    assert cli.run(summary.main, [str(cfg)]) == 2
    assert "huge.cfg:1" in one_error_line(capsys)
    with pytest.raises(SystemExit) as exit_:  # refused by the option's type (edgecsp.options), in one line
        cli.run(summary.main, ["csp-tiny-efm", "--width", "1000"])
    assert exit_.value.code == 2 and "--width: expected a finite number" in one_error_line(capsys)


def test_cli_refuses_a_damaged_checkpoint_in_a_subprocess(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(DEMO_BYTES[: HEADER_END // 2])
    code = "import sys; from edgecsp import cli; from edgecsp.models.checkpoint import resolve_model; " \
           "sys.exit(cli.run(lambda argv: resolve_model(sys.argv[1]) and 0))"
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "bad.safetensors" in run.stderr, run.stderr


def test_train_cli_refuses_a_bad_darknet_cfg(tmp_path, capsys):
    from edgecsp import train

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.jpg").write_bytes(b"")  # never opened: the cfg is refused first
    (data / "annotations.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], "annotations": [],
         "categories": [{"id": 1, "name": "a"}]}))
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("[net]\nheight=416\nwidth=416\nchannels=3\n[convolutional]\nfilters=nan\n")
    assert cli.run(train.main, ["--darknet-cfg", str(cfg), "--data", str(data)]) == 2
    assert "bad.cfg:6" in one_error_line(capsys)
