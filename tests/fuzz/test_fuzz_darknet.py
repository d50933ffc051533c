"""Fuzzing the Darknet side: cfg text and bytes, mutated published cfgs, .weights files.

Every input must end in success or in one EdgeCSPError line (see fuzz_harness). A cfg that
builds is also run once (on the meta device, or for real when small) and its outputs must have
the shapes the builder inferred, so shape inference and forward never disagree.
Inputs that once found a bug stay as ``@example``s and run on every CI run.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from fuzz_harness import examples, expect_clean
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgecsp.darknet import DarknetModel, load_darknet_weights_into, parse_cfg, parse_cfg_text, read_weights
from edgecsp.darknet.cfg import _SCHEMA, _YOLO

CFG_DIR = Path(__file__).resolve().parents[3] / "shared" / "darknet-cfg"
SHARED_CFGS = sorted(CFG_DIR.glob("*.cfg")) if CFG_DIR.is_dir() else []
PANET_CFGS = [p for p in SHARED_CFGS if "panet" in p.name]
needs_cfgs = pytest.mark.skipif(not SHARED_CFGS, reason=f"published Darknet cfgs not found at {CFG_DIR}")

SMALL = 200_000  # models with fewer parameters and activations than this also run for real

# Numbers and garbage that break parsers: limits of C ints, floats that are not numbers, junk.
EXTREME = [
    "0", "-1", "-2", "1", "2", "3", "7", "1.5", "0.0", "-0", "2147483647", "2147483648", "-2147483649",
    "1000000000", "1e9", "1e18", "1e400", "-1e400", "1e-300", "nan", "NaN", "-nan", "inf", "-inf",
    "infinity", "", ",", ",,", "1,,2", "0x10", "1_0", "\u0663", "abc", "\x00", "#", "=", "1=2",
    "-1,-2,-3", "0,1,2,3,4,5,6,7,8", "1e5", "99999",
]
values = st.one_of(st.sampled_from(EXTREME), st.integers(-40, 80).map(str),
                   st.floats(allow_nan=True, allow_infinity=True).map(repr),
                   st.lists(st.integers(-200, 200).map(str), min_size=1, max_size=10).map(",".join),
                   st.text(max_size=12))
ALL_KEYS = sorted({k for known, unsupported in _SCHEMA.values() for k in (*known, *unsupported)})
LAYER_TYPES = [t for t in _SCHEMA if t != "net"]
SECTION_NAMES = [*_SCHEMA, "conv", "network", "lstm", "local", "frobnicate", "", "net]", "[yolo"]


def _run_built(model: DarknetModel) -> None:
    """Forward once and check every output against the inferred shapes."""
    params = sum(p.numel() for p in model.parameters())
    acts = max(c * h * w for c, h, w in [model.input_shape, *model.output_shapes])
    device = "cpu" if params < SMALL and acts < SMALL else "meta"
    x = torch.zeros(1, *model.input_shape, device=device)
    model = model.to(device).eval()
    with torch.no_grad():
        out = model(x)
    outs, want = (out, [model.output_shapes[i] for i in model.yolo_indices]) if model.yolo_indices else \
        ([out], [model.output_shapes[-1]])
    assert [tuple(o.shape[1:]) for o in outs] == want, "forward disagrees with the inferred shapes"


def build_and_run(cfg, input_size=None, meta=False) -> None:
    """Parse (if text) and build; run it when it built. Any EdgeCSPError ends the input cleanly."""
    if meta:
        with torch.device("meta"):
            model = DarknetModel(cfg, input_size=input_size)
    else:
        model = DarknetModel(cfg, input_size=input_size)
    _run_built(model)


def parse_and_build(text: str, name: str = "fuzz.cfg", input_size=None) -> None:
    build_and_run(parse_cfg_text(text, name), input_size)


# --------------------------------------------------------------------------- arbitrary text


# Plausible values per key, so most generated cfgs get past the parser into the builder.
PLAUSIBLE = {
    "filters": ["1", "2", "4", "8", "16", "255"], "size": ["1", "3", "5"], "stride": ["1", "2"],
    "pad": ["0", "1"], "padding": ["0", "1", "2"], "groups": ["1", "2"], "batch_normalize": ["0", "1"],
    "activation": ["leaky", "linear", "mish", "logistic", "swish", "relu", "stair", "normalize_channels"],
    "layers": ["-1", "-2", "-1,-2", "0", "-3,-1", "1"], "from": ["-1", "-2", "-3", "0"],
    "mask": ["0", "0,1,2", "3,4,5"], "anchors": ["10,13,16,30,33,23", "1,2", "10,13,16,30,33,23,30,61,62,45,59,119"],
    "classes": ["1", "80", "2"], "num": ["3", "6", "9"], "output": ["4", "10"], "group_id": ["0", "1"],
    "dilation": ["1", "2"], "scale_wh": ["0", "1"], "reverse": ["0", "1"], "temperature": ["1", "0.5"],
}


JUNK_LINES = ["# c", ";c", "", "  ", "=1", "key", "a=b=c", "\x00", "\ufeff[net]", "[]", "[net", "[net]", "[lstm]",
              "[frobnicate]", "[ CONV ]", "filters=2 # inline", "layers=-1,", "unknown_key=1"]


@st.composite
def cfg_texts(draw) -> str:
    """A plausible layer chain (known keys, plausible values), then up to three corruptions:
    extreme values, unknown keys, junk lines, so most inputs reach the builder."""
    lines = ["[net]", f"height={draw(st.sampled_from([8, 16, 32]))}", f"width={draw(st.sampled_from([8, 16, 32]))}",
             f"channels={draw(st.sampled_from([1, 3, 4]))}"]
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(LAYER_TYPES))
        lines.append(f"[{kind}]")
        keys = sorted(set(PLAUSIBLE) & _SCHEMA[kind][0])
        for key in draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True)) if keys else []:
            lines.append(f"{key}={draw(st.sampled_from(PLAUSIBLE[key]))}")
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(lines)))
        how = draw(st.integers(0, 3))
        if how == 0:  # a value made extreme or garbage
            keyed = [i for i, line in enumerate(lines) if "=" in line]
            i = keyed[at % len(keyed)]
            lines[i] = lines[i].split("=")[0] + "=" + draw(values)
        elif how == 1:  # any key, any value, anywhere
            lines.insert(at, f"{draw(st.sampled_from(ALL_KEYS))}={draw(values)}")
        elif how == 2:
            lines.insert(at, draw(st.sampled_from(JUNK_LINES)))
        else:
            lines.insert(at, f"[{draw(st.sampled_from(SECTION_NAMES))}]")
    return draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)


# The explicit examples once crashed, allocated hundreds of GB or were accepted with nan/inf.
@settings(max_examples=examples(300))
@given(cfg_texts())
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=1000000000\nsize=1")
@example("[net]\nheight=1000000\nwidth=1000000\nchannels=3\n[convolutional]\nfilters=2\nsize=1")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\nstride=1e18")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=2\nsize=3\npadding=1e18")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[upsample]\nstride=1000000000")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[connected]\noutput=1000000000")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[maxpool]\nsize=2\npadding=2147483647")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[softmax]\ntemperature=nan")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1\n[upsample]\nscale=inf")
def test_cfg_text(text):
    expect_clean("darknet.cfg.text", parse_and_build, text)


@given(st.text())
def test_cfg_arbitrary_text(text):
    expect_clean("darknet.cfg.text", parse_and_build, text)


@st.composite
def cfg_bytes(draw) -> bytes:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return draw(st.binary(max_size=300))
    text = draw(cfg_texts())
    if choice == 1:
        return text.encode(draw(st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig"])), "replace")
    raw = bytearray(text.encode())
    for _ in range(draw(st.integers(1, 4))):  # splice NULs, invalid UTF-8 and control bytes in
        junk = draw(st.sampled_from([b"\x00", b"\xff\xfe", b"\xc3", b"\x80", b"\x1c", b"\x0c", b"\x85"]))
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = junk
    return bytes(raw)


@given(cfg_bytes())
@example(b"[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=2\x00\nsize=1")
@example("[net]\nheight=8\nwidth=8\nchannels=3\n[convolutional]\nfilters=2\nsize=1".encode("utf-16"))
def test_cfg_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.cfg"
        path.write_bytes(data)
        expect_clean("darknet.cfg.bytes", lambda: build_and_run(parse_cfg(path)))


def test_cfg_paths_that_are_not_files(tmp_path):
    for path in (tmp_path, tmp_path / "missing.cfg", tmp_path / ("a" * 5000), tmp_path / "new\nline.cfg"):
        assert expect_clean("darknet.cfg.bytes", parse_cfg, path) is None


# --------------------------------------------------------------------------- mutated published cfgs

REF_VALUES = ["0", "-0", "1", "-1", "2", "9999", "-9999", "2147483647", "1,2,", "-1,-1000", "-1,1", "nan"]
MASK_VALUES = ["0,1,2,9", "-1", "9", "0,0,0", "", "0,1", "3,4,5,6", "nan", "1e9"]
ANCHOR_VALUES = ["10,13", "10,13,16", "nan,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17",
                 "-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5,-5", "0," * 18, "inf," * 18, "1e38," * 18]

mutation = st.one_of(
    st.tuples(st.just("delete"), st.integers(0, 10**6)),
    st.tuples(st.just("duplicate"), st.integers(0, 10**6)),
    st.tuples(st.just("swap"), st.integers(0, 10**6), st.integers(0, 10**6)),
    st.tuples(st.just("set"), st.integers(0, 10**6), values),
    st.tuples(st.just("scale"), st.integers(0, 10**6), st.sampled_from(["0", "-1", "2", "10", "1000", "0.5"])),
    st.tuples(st.just("ref"), st.integers(0, 10**6), st.sampled_from(["self", "next", "far", *REF_VALUES])),
    st.tuples(st.just("yolo"), st.integers(0, 10**6), st.sampled_from(["mask", "anchors", "classes", "num"]),
              st.sampled_from(MASK_VALUES + ANCHOR_VALUES)),
    st.tuples(st.just("insert"), st.integers(0, 10**6),
              st.sampled_from(["[route]", "[shortcut]", "[yolo]", "[net]", "[maxpool]", "[convolutional]", "[upsample]",
                               "[reorg]", "[sam]", "[scale_channels]", "[connected]", "[softmax]", "[avgpool]"])),
)


def mutate(text: str, ops) -> str:
    """Apply (op, line, ...) mutations; line numbers wrap around the cfg, so any int is valid."""
    lines = text.splitlines()
    for op, at, *rest in ops:
        if not lines:
            break
        i = at % len(lines)
        keyed = [j for j, line in enumerate(lines) if "=" in line and not line.lstrip().startswith("#")]
        k = keyed[at % len(keyed)] if keyed else i
        if op == "delete":
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = rest[0] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "set":
            lines[k] = lines[k].split("=", 1)[0] + "=" + rest[0]
        elif op == "scale":
            key, _, value = lines[k].partition("=")
            try:
                lines[k] = f"{key}={int(value.split('#')[0]) * float(rest[0]):g}"
            except ValueError:
                lines[k] = f"{key}={rest[0]}"
        elif op == "ref":
            refs = [j for j in keyed if lines[j].split("=")[0].strip() in ("layers", "from")] or keyed
            j = refs[at % len(refs)]
            index = sum(1 for line in lines[:j] if line.strip().startswith("[")) - 2  # this layer's index
            new = {"self": index, "next": index + 1, "far": index + 10**6}.get(rest[0], rest[0])
            lines[j] = lines[j].split("=", 1)[0] + "=" + str(new)
        elif op == "yolo":
            yolo = [j for j, line in enumerate(lines) if line.strip() == "[yolo]"]
            if yolo:
                lines.insert(yolo[at % len(yolo)] + 1, f"{rest[0]}={rest[1]}")
                # a second key= is reported as a duplicate; drop the original so the value is used
                for j in range(yolo[at % len(yolo)] + 2, len(lines)):
                    if lines[j].startswith("["):
                        break
                    if lines[j].split("=")[0].strip() == rest[0]:
                        del lines[j]
                        break
        elif op == "insert":
            lines.insert(i, rest[0])
    return "\n".join(lines)


@needs_cfgs
@settings(max_examples=examples(75))
@given(st.sampled_from(SHARED_CFGS), st.lists(mutation, min_size=1, max_size=3), st.sampled_from([64, 32, None]))
def test_mutated_published_cfgs(path, ops, input_size):
    text = mutate(path.read_text(), ops)
    # meta: shapes and parameter checks without allocating 60M weights per input
    expect_clean("darknet.cfg.mutated", lambda: build_and_run(parse_cfg_text(text, path.name), input_size, meta=True))


# --------------------------------------------------------------------------- fine-tuning entry


def _from_darknet(text: str, name: str) -> None:
    from edgecsp.models.from_darknet import detector_from_cfg

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        with torch.device("meta"):  # matching builds several zoo detectors; shapes are all it needs
            detector_from_cfg(path)


NET_OR_YOLO = ["height", "width", "channels", *sorted(_YOLO)]


@needs_cfgs
@settings(max_examples=examples(15))
@given(st.sampled_from(PANET_CFGS), st.sampled_from(NET_OR_YOLO), values)
@example(CFG_DIR / "csdarknet53-panet-spp.cfg", "height", "0")  # once ZeroDivisionError
@example(CFG_DIR / "csdarknet53-panet-spp.cfg", "height", "-32")
@example(CFG_DIR / "csdarknet53-panet-spp.cfg", "classes", "0")
def test_fine_tuning_entry(path, key, value):
    """[net] and [yolo] values are what detector_from_cfg passes on to build_detector."""
    text = path.read_text()
    lines = [f"{key}={value}" if line.split("=")[0].strip() == key else line for line in text.splitlines()]
    expect_clean("darknet.from_darknet", _from_darknet, "\n".join(lines), path.name)


# --------------------------------------------------------------------------- .weights files

TINY = """[net]
height=8
width=8
channels=3
[convolutional]
batch_normalize=1
filters=4
size=3
activation=leaky
[convolutional]
filters=6
size=1
activation=linear
[connected]
output=5
batch_normalize=1
"""


def _tiny() -> tuple[DarknetModel, bytes]:
    """A small model with every kind of weight unit, and its valid .weights bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny.cfg"
        path.write_text(TINY)
        model = DarknetModel(path)
        model.save_weights(path.with_suffix(".weights"))
        return model, path.with_suffix(".weights").read_bytes()


TINY_MODEL, GOOD = _tiny()


@st.composite
def weights_files(draw) -> bytes:
    good = GOOD
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(st.binary(max_size=400))
    if choice == 1:  # truncated
        return good[: draw(st.integers(0, len(good) - 1))]
    if choice == 2:  # extended
        return good + draw(st.binary(min_size=1, max_size=64))
    if choice == 3:  # absurd header fields, body kept
        major, minor, rev = (draw(st.integers(-2**31, 2**31 - 1)) for _ in range(3))
        seen = draw(st.integers(-2**63, 2**63 - 1))
        wide = major * 10 + minor >= 2
        head = struct.pack("<iii", major, minor, rev) + (struct.pack("<q", seen) if wide else struct.pack("<i", seen % 2**31))
        return head + good[20:]
    if choice == 4:  # other formats' magic
        magic = draw(st.sampled_from([b"PK\x03\x04", b"\x80\x02", b"\x80\x04\x95", b"\x93NUMPY", b"\x89HDF", b"{}"]))
        return magic + draw(st.binary(max_size=200))
    body = np.array(draw(st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e38, -1.0]),
                                  min_size=1, max_size=8)), "<f4")
    return good[:20] + np.resize(body, (len(good) - 20) // 4).tobytes()


@given(weights_files())
@example(b"")
@example(b"PK\x03\x04" + b"\x00" * 64)
@example(b"\x80\x02" + GOOD[2:])
@example(struct.pack("<iii", 2**31 - 1, 2**31 - 1, 0) + GOOD[12:])
@example(GOOD[:20] + np.full((len(GOOD) - 20) // 4, np.nan, "<f4").tobytes())  # once loaded silently
def test_weights(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.weights"
        path.write_bytes(data)
        expect_clean("darknet.weights", read_weights, path)
        expect_clean("darknet.weights", load_darknet_weights_into, TINY_MODEL, path)


def test_weights_paths_that_are_not_files(tmp_path):
    for path in (tmp_path, tmp_path / "missing.weights", tmp_path / ("a" * 5000), tmp_path / "new\nline.weights"):
        assert expect_clean("darknet.weights", read_weights, path) is None
        assert expect_clean("darknet.weights", TINY_MODEL.load_weights, path) is None
