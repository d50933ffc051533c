"""python -m edgecsp.summary and its library function: CLI contract, the paper's CSP vs non-CSP
table and the PeleeNet ablation reproduced from the summary's numbers.

Reference figures are the paper's (../shared/reference/csp-paper-numbers.md). Models are built
on the meta device by the summary, so the full-size figures cost well under a second each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache

import pytest
import torch
from testpaths import CFG_DIR

from edgecsp.models.detector import build_detector
from edgecsp.summary import PAPER, SOURCES, main, summarize

needs_cfgs = pytest.mark.skipif(not CFG_DIR.is_dir(), reason=f"published Darknet cfgs not found at {CFG_DIR}")

# The paper's figures: params in millions, BFLOPs, input size; "conv": the reference README counts
# convolution kernels only (the cfg families), "trainable": all trainable parameters.
REFERENCE = {
    "resnet50": (22.73, 9.74, 256, "conv"),
    "cspresnet50": (21.57, 8.97, 256, "conv"),
    "resnext50": (22.19, 10.11, 256, "conv"),
    "cspresnext50": (20.50, 7.93, 256, "conv"),
    "darknet53": (41.57, 18.57, 256, "conv"),
    "cspdarknet53": (27.61, 13.07, 256, "conv"),
    "mobilenetv2": (3.47, 0.858, 224, "conv"),
    "cspmobilenetv2": (2.51, 0.764, 224, "conv"),
    "densenet201-elastic": (19.48, 8.77, 224, "trainable"),
    "cspdensenet201-elastic": (20.17, 7.13, 224, "trainable"),
    "peleenet": (2.79, 1.017, 224, "trainable"),
    "csppeleenet": (2.83, 0.888, 224, "trainable"),
}
PAIRS = [
    ("resnet50", "cspresnet50"),
    ("resnext50", "cspresnext50"),
    ("darknet53", "cspdarknet53"),
    ("mobilenetv2", "cspmobilenetv2"),
    ("peleenet", "csppeleenet"),
    ("densenet201-elastic", "cspdensenet201-elastic"),
]
# Tolerances the zoo established (tests/test_complexity.py, tests/test_zoo.py): the cfg families
# match the README within 0.5%; the families without a cfg are rebuilt from their papers, 5%.
CFG_TOLERANCE, PAPER_TOLERANCE = 0.005, 0.05



@cache
def summary(name: str) -> dict:
    return summarize(name)


def rel(ours: float, ref: float) -> float:
    return ours / ref - 1


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # refused by the option types (edgecsp.options), before summarize
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def check_rows_add_up(s: dict) -> None:
    for key in ("params", "macs", "cio"):
        assert sum(row[key] for row in s["stages"]) == s[key], key
    assert sum(row["bflops"] for row in s["stages"]) == pytest.approx(s["bflops"], rel=1e-12)


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_json_backbone(capsys):
    code, out, err = run_cli(capsys, "cspdarknet53", "--json")
    assert code == 0 and err == ""
    s = json.loads(out)  # exactly one JSON object
    assert s["name"] == "cspdarknet53" and s["kind"] == "backbone"
    assert s["input_size"] == [256, 256]  # the cfg families' default
    assert isinstance(s["params"], int) and isinstance(s["macs"], int) and isinstance(s["cio"], int)
    assert s["params"] == sum(p.numel() for p in build_classifier("cspdarknet53").parameters())
    assert rel(s["conv_params"] / 1e6, 27.61) == pytest.approx(0, abs=CFG_TOLERANCE)
    assert rel(s["bflops"], 13.07) == pytest.approx(0, abs=CFG_TOLERANCE)
    assert s["bflops"] > 2 * s["macs"] / 1e9 * 0.99  # convolutions are nearly all the MACs
    assert [row["name"] for row in s["stages"]] == ["stem"] + [f"stages.{i}" for i in range(5)] + ["classifier"]
    # Each stride-2 stage halves the map: 256 -> 8 at the last stage; the classifier gives 1000 logits.
    assert [row["output"][0][1:] for row in s["stages"][1:-1]] == [[256 // 2**i] * 2 for i in range(1, 6)]
    assert s["stages"][-1]["output"] == [[1000]]
    check_rows_add_up(s)


def build_classifier(name: str) -> torch.nn.Module:
    from edgecsp.models.zoo import build_backbone

    with torch.device("meta"):
        return build_backbone(name, num_classes=1000)


def test_cli_backbone_defaults_and_multipliers(capsys):
    assert summary("mobilenetv2")["input_size"] == [224, 224]  # as the paper reports it
    assert summary("peleenet")["input_size"] == [224, 224]
    code, out, _ = run_cli(capsys, "cspdarknet53", "--json", "--width", "0.5", "--depth", "0.34", "--input-size", "128")
    small = json.loads(out)
    assert code == 0 and small["input_size"] == [128, 128] and "paper" not in small
    assert small["params"] < summary("cspdarknet53")["params"] / 3
    # A quarter of the pixels: about a quarter of the MACs even at full width.
    full_128 = summarize("cspdarknet53", input_size=128)
    assert full_128["bflops"] == pytest.approx(summary("cspdarknet53")["bflops"] / 4, rel=0.01)


def test_cli_text_table(capsys):
    code, out, _ = run_cli(capsys, "csppeleenet")
    lines = out.splitlines()
    assert code == 0 and "input 224x224" in lines[0]
    total = next(line for line in lines if line.startswith("total"))
    assert f"{summary('csppeleenet')['params']:,}" in total
    assert any(line.startswith("classifier") for line in lines)


def test_cli_json_detector(capsys):
    code, out, _ = run_cli(capsys, "csp-tiny-efm", "--json")
    s = json.loads(out)
    assert code == 0 and s["kind"] == "detector" and s["input_size"] == [320, 320]
    assert (s["width"], s["depth"]) == (0.25, 0.33)
    model = build_detector("csp-tiny-efm")
    assert s["params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
    names = [row["name"] for row in s["stages"]]
    assert names[0] == "stem" and names[-2:] == ["neck", "head"]
    head = s["stages"][-1]
    cells = sum((320 // stride) ** 2 for stride in (8, 16, 32))
    assert head["output"] == [[3 * cells, 85]]  # decoded rows: 3 anchors per cell, 4 box + 1 + 80
    # The head row holds exactly the three 1x1 prediction convs: 3 x (64 * 255 + 255).
    assert head["params"] == 3 * (64 * 255 + 255)
    assert [shape[1:] for shape in s["stages"][-2]["output"]] == [[40, 40], [20, 20], [10, 10]]
    check_rows_add_up(s)


TINY_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=10
size=1
stride=1
pad=1
activation=linear

[avgpool]

[softmax]
"""


def test_cli_json_cfg_counted_by_hand(capsys, tmp_path):
    path = tmp_path / "tiny.cfg"
    path.write_text(TINY_CFG)
    code, out, _ = run_cli(capsys, str(path), "--json")
    s = json.loads(out)
    assert code == 0 and s["kind"] == "cfg" and s["input_size"] == [32, 32]  # the cfg's own size
    conv1 = 8 * 3 * 3 * 3  # 3x3/2 conv to 8: output 8x16x16
    conv2 = 10 * 8  # 1x1 conv to 10 classes on the pooled 8x8 map, with biases (no BN)
    assert s["params"] == conv1 + 2 * 8 + conv2 + 10
    assert s["conv_params"] == conv1 + conv2
    assert s["macs"] == conv1 * 16 * 16 + conv2 * 8 * 8
    assert s["bflops"] == pytest.approx(2 * s["macs"] / 1e9)
    assert s["cio"] == (3 * 32 * 32 + 8 * 16 * 16) + (8 * 8 * 8 + 10 * 8 * 8)
    assert [row["name"] for row in s["stages"]] == ["stride 2 [0]", "stride 4 [1]", "head"]
    assert [row["params"] for row in s["stages"]] == [conv1 + 16, 0, conv2 + 10]
    assert s["stages"][-1]["output"] == [[10, 1, 1]]
    code, out, _ = run_cli(capsys, str(path), "--json", "--input-size", "64")
    assert json.loads(out)["macs"] == 4 * s["macs"]


@needs_cfgs
def test_cli_json_published_detector_cfg(capsys):
    code, out, _ = run_cli(capsys, str(CFG_DIR / "csresnext50-panet-spp.cfg"), "--json")
    s = json.loads(out)
    native = summary("cspresnext50-panet-spp")
    assert code == 0 and s["input_size"] == [416, 416]
    for key in ("params", "conv_params", "macs", "bflops", "cio"):
        assert s[key] == native[key], key
    # Same prediction convs in the head row, same maps feeding them, same raw map sizes.
    assert s["stages"][-1]["params"] == native["stages"][-1]["params"] == 255 * (256 + 512 + 1024) + 3 * 255
    assert s["stages"][-2]["output"] == native["stages"][-2]["output"]
    assert [shape[1:] for shape in s["stages"][-1]["output"]] == [[52, 52], [26, 26], [13, 13]]
    check_rows_add_up(s)


@needs_cfgs
@pytest.mark.parametrize("name", list(SOURCES))
def test_source_cfgs_have_the_same_totals(name):
    """The docs' "source" column: each named cfg counts the same as the zoo model at its size."""
    ours = summary(name)
    theirs = summarize(str(CFG_DIR / SOURCES[name]), input_size=ours["input_size"][0])
    assert (theirs["params"], theirs["bflops"]) == (ours["params"], ours["bflops"])


# --- bad input: one line, exit code 2 ---------------------------------------------------------


def test_unknown_model_is_one_line_exit_2():
    # A real process: the module entry point, its exit code and no traceback on stderr.
    proc = subprocess.run([sys.executable, "-m", "edgecsp.summary", "resnet51"], check=False, capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown model 'resnet51'")
    assert "cspdarknet53" in lines[0]  # says what would work


@pytest.mark.parametrize("text,message", [
    ("[net]\nwidth=32\nheight=32\nchannels=3\n[convolutional]\nfilters=4\nsize=1\n[frobnicate]\nx=1\n",
     "bad.cfg:8: unknown section [frobnicate]"),
    ("[net]\nwidth=32\n[convolutional]\nfilterz=4\n", "bad.cfg:4: unknown option 'filterz'"),
])
def test_bad_cfg_is_one_line_exit_2(capsys, tmp_path, text, message):
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    code, out, err = run_cli(capsys, str(path), "--json")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and message in err


@pytest.mark.parametrize("argv,message", [
    (["missing.cfg"], "cfg file not found"),
    (["csp-tiny-efm", "--input-size", "100"], "multiple of 32"),
    (["peleenet", "--input-size", "0"], "multiple of 32"),
    (["cspdarknet53", "--width", "0"], "--width: expected a finite number > 0"),
    (["cspdarknet53", "--depth", "1e9"], "--depth: expected a finite number > 0 and <= 2"),
    (["cspdarknet53", "--width", "nan"], "--width"),
    (["peleenet", "csppeleenet"], "--markdown"),
    (["--markdown", "--pairs", "peleenet"], "even number"),
])
def test_other_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err


# --- the paper's tables from the summary --------------------------------------------------------


def test_paper_figures_in_the_library_are_the_papers():
    assert PAPER == {name: (p, b, counts) for name, (p, b, _, counts) in REFERENCE.items()}


def paper_params(name: str) -> int:
    """The summary's params in the paper's convention for that model."""
    s = summary(name)
    return s["conv_params"] if REFERENCE[name][3] == "conv" else s["params"]


def paper_bflops(name: str) -> float:
    """Darknet BFLOPs; resnet50.cfg's 1000-way conv runs on the 8x8 map before pooling, which the
    published 9.74 counts at 1x1 (tests/test_complexity.py::test_resnet50_bflops_gap)."""
    s = summary(name)
    if name != "resnet50":
        return s["bflops"]
    (classifier,) = [row for row in s["stages"] if row["name"] == "classifier"]
    assert classifier["output"] == [[1000]] and classifier["macs"] == 2048 * 1000 * 8 * 8
    return s["bflops"] - classifier["bflops"] + 2 * 2048 * 1000 / 1e9


@pytest.mark.parametrize("name", list(REFERENCE))
def test_params_and_bflops_match_the_paper(name):
    params_m, bflops, size, counts = REFERENCE[name]
    s = summary(name)
    assert s["input_size"] == [size, size]
    tolerance = CFG_TOLERANCE if counts == "conv" else PAPER_TOLERANCE
    assert abs(rel(paper_params(name) / 1e6, params_m)) < tolerance
    assert abs(rel(paper_bflops(name), bflops)) < tolerance
    if name == "resnet50":  # as counted (classifier at 8x8): the known +2.7%
        assert rel(s["bflops"], bflops) == pytest.approx(0.027, abs=0.001)
    assert s["paper"] == {"params": round(params_m * 1e6), "bflops": bflops, "params_counted": counts}


@pytest.mark.parametrize("base,csp", PAIRS)
def test_csp_vs_plain_direction_and_size(base, csp):
    """The change CSP brings (e.g. CSPDarkNet-53: -29.6% BFLOPs, -33.6% params) within 1 point of the paper's."""
    paper_flops = rel(REFERENCE[csp][1], REFERENCE[base][1])
    paper_params_change = rel(REFERENCE[csp][0], REFERENCE[base][0])
    flops = rel(paper_bflops(csp), paper_bflops(base))
    params = rel(paper_params(csp), paper_params(base))
    assert flops < 0 and paper_flops < 0  # CSP always cuts computation
    assert flops == pytest.approx(paper_flops, abs=0.01)
    assert (params < 0) == (paper_params_change < 0)  # fewer params, except DenseNet/PeleeNet: a few more
    assert params == pytest.approx(paper_params_change, abs=0.01)


def test_darknet53_headline():
    # The paper's headline for the GPU backbone: CSPDarkNet-53 needs about 30% fewer BFLOPs.
    assert rel(summary("cspdarknet53")["bflops"], summary("darknet53")["bflops"]) == pytest.approx(-0.30, abs=0.01)


def test_peleenet_partial_transition_ablation():
    """Paper: fusion first about -26%, fusion last -21%, CSP -13% computation vs PeleeNet.

    CSP and fusion last land within a few points; fusion first comes out cheaper than stated
    (about -33%); the order of the three holds.
    """
    base = summary("peleenet")["bflops"]
    change = {m: rel(summary(m)["bflops"], base)
              for m in ("csppeleenet", "csppeleenet-fusion-last", "csppeleenet-fusion-first")}
    assert change["csppeleenet-fusion-first"] < change["csppeleenet-fusion-last"] < change["csppeleenet"] < 0
    assert change["csppeleenet"] == pytest.approx(-0.13, abs=0.02)
    assert change["csppeleenet-fusion-last"] == pytest.approx(-0.21, abs=0.04)
    assert change["csppeleenet-fusion-first"] == pytest.approx(-0.26, abs=0.08)


def test_markdown_tables(capsys):
    code, out, _ = run_cli(capsys, "--markdown", "darknet53", "cspdarknet53", "csp-tiny-efm")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 + 3 and all(line.startswith("|") for line in lines)
    assert f"{summary('cspdarknet53')['bflops']:.3f}" in lines[3] and "csdarknet53.cfg" in lines[3]
    code, out, _ = run_cli(capsys, "--markdown", "--pairs", "darknet53", "cspdarknet53")
    (row,) = out.strip().splitlines()[2:]
    ours = 100 * rel(summary("cspdarknet53")["bflops"], summary("darknet53")["bflops"])
    paper = 100 * rel(13.07, 18.57)
    assert f"{ours:+.1f}%" in row and f"{paper:+.1f}%" in row
