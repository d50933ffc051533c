"""The docs/darknet.md table: every [yolo]-headed Darknet cfg through edgecsp, with random weights.

For each cfg under ``--cfg-dir`` (default: shared/darknet-cfg beside the checkout) whose text has
a ``[yolo]`` layer:

1. build: on the meta device (nothing allocated) at the cfg's own [net] size, or the one-line
   refusal; params as Darknet's .weights holds them (and PyTorch's trainable count), BFLOPs as
   edgecsp.complexity counts them and as Darknet's parser prints them (sum over conv layers of
   2 * nweights * out_h * out_w / 1e9, xnor layers / 32, shared layers counted).
2. export: ONNX at ``--size`` (default 128) with random weights, max abs diff against PyTorch.
3. compile (``--compile``: a representative subset by default, or ``all``): ``python -m
   edgecsp.compile`` to each of ``--targets`` with the cfg rewritten to ``--size``, the
   ``--calibration`` recipe, ``--verify-images`` and ``--allow-accuracy-drop`` (random weights
   detect nothing, so the accuracy gate is off).

Results go to ``--results`` (JSON, one entry per cfg and step, written after every step, so an
interrupted run resumes where it stopped) and the markdown table to stdout. Heavy steps run
one at a time (one compile subprocess at most).

    python benchmarks/darknet_table.py --size 128 --calibration calibration/tiny.toml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgecsp.errors import EdgeCSPError

# One cfg per family (issue 11's list); the compile matrix runs on these unless --compile all.
SUBSET = [
    "alexeyab/yolov4-tiny.cfg", "alexeyab/yolov3-tiny.cfg", "alexeyab/yolov7-tiny.cfg",
    "alexeyab/enet-coco.cfg", "alexeyab/yolov4-csp.cfg", "csresnext50-panet-spp.cfg", "alexeyab/yolov3.cfg",
    "alexeyab/yolov4.cfg", "alexeyab/yolov4x-mish.cfg", "alexeyab/yolov4-p6.cfg",
]
TARGETS = ["intel-cpu", "onnxruntime", "jetson"]


def default_cfg_dir() -> Path | None:
    return next((p / "shared" / "darknet-cfg" for p in ROOT.parents if (p / "shared" / "darknet-cfg").is_dir()),
                None)


def yolo_cfgs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.cfg") if "[yolo]" in p.read_text(errors="replace"))


def darknet_bflops(body) -> tuple[float, float]:
    """(conv layers only, AlexeyAB's "Total BFLOPS" printout) at the model's input size.

    Conv: 2 * nweights * out_h * out_w / 1e9, xnor layers / 32 (convolutional_layer.c). The
    AlexeyAB total also adds [maxpool]/[local_avgpool] size^2 * c * out_h * out_w and [shortcut]
    out_w * out_h * out_c * (number of from= layers) (maxpool_layer.c, shortcut_layer.c).
    """
    conv = other = 0.0
    shapes = [body.input_shape] + [info.out_shape for info in body.layer_info]
    for section, c_in, info in zip(body.cfg.layers, shapes, body.layer_info):
        c, oh, ow = info.out_shape
        if section.type == "convolutional":
            n, k = section.get_int("filters", 1), section.get_int("size", 1)
            groups = 1 if section.get_int("xnor", 0) else section.get_int("groups", 1)
            flops = 2.0 * n * (c_in[0] // groups) * k * k * oh * ow / 1e9
            conv += flops / 32 if section.get_int("xnor", 0) else flops
        elif section.type in ("maxpool", "local_avgpool"):
            size = section.get_int("size", section.get_int("stride", 1))
            other += size * size * c_in[0] * oh * ow / 1e9
        elif section.type == "shortcut":
            other += ow * oh * c * len(section.get_ints("from", [])) / 1e9
    return conv, conv + other


def step_build(path: Path) -> dict:
    from edgecsp.complexity import profile
    from edgecsp.darknet import darknet_param_count
    from edgecsp.models.darknet_detector import DarknetDetector, config_from_cfg_text

    config = config_from_cfg_text(path.read_text(errors="replace"), str(path))
    with torch.device("meta"):
        model = DarknetDetector(config)
        counted = profile(model.body, config.input_size)
    conv, total = darknet_bflops(model.body)
    return {
        "net_size": config.input_size, "levels": len(config.levels), "strides": list(config.strides),
        "classes": config.num_classes, "new_coords": config.new_coords, "letter_box": config.letter_box,
        "weights_floats": darknet_param_count(model.body),
        "trainable": sum(p.numel() for p in model.parameters()),
        "bflops_edgecsp": counted["bflops"], "bflops_darknet_conv": conv, "bflops_darknet_total": total,
    }


def small_cfg(path: Path, size: int, work: Path) -> Path:
    from edgecsp.models.darknet_detector import rewrite_net_size

    out = work / f"{path.stem}-{size}.cfg"
    out.write_text(rewrite_net_size(path.read_text(errors="replace"), path.name, size))
    return out


def random_batchnorm(model) -> None:
    """BN statistics off their defaults (mean 0, var 1, gamma 1, beta 0). With the defaults an
    xnor layer's output is exactly 0 wherever its +-1 sum is 0, and a backend that folds the
    per-filter scale into the conv turns that 0 into +-1e-8, flipping the next layer's sign;
    trained weights do not sit on such ties."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)


def step_export(path: Path, size: int, work: Path) -> dict:
    from edgecsp.models.darknet_detector import DarknetDetector, config_from_cfg_text
    from edgecsp.onnx_writer import export_onnx

    torch.manual_seed(0)
    config = config_from_cfg_text(path.read_text(errors="replace"), str(path), input_size=size)
    model = DarknetDetector(config).eval()
    if any(s.get_int("xnor", 0) for s in model.body.cfg.layers):
        random_batchnorm(model)
    images = list(np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8))
    out = work / f"{path.stem}.onnx"
    try:
        report = export_onnx(model, out, input_size=size, simplify=False, parity_images=images)
    finally:
        out.unlink(missing_ok=True)
    return {"size": size, "max_abs_diff": report.max_abs_diff, "onnx_mb": report.size_bytes / 1e6,
            "seconds": report.seconds}


def step_compile(path: Path, size: int, target: str, args, work: Path) -> dict:
    cfg = small_cfg(path, size, work)
    out = work / f"{path.stem}-{target}"
    cmd = [sys.executable, "-m", "edgecsp.compile", "--target", target, "--model", str(cfg), "--calibration",
           args.calibration, "--verify-images", str(args.verify_images), "--allow-accuracy-drop", "--out", str(out),
           "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.compile_timeout, check=False)
    seconds = time.perf_counter() - start
    if run.returncode != 0:
        return {"ok": False, "seconds": seconds, "error": (run.stderr.strip().splitlines() or ["?"])[-1][:300]}
    manifest = json.loads(run.stdout)  # stdout holds only the result; the steps go to stderr
    return {"ok": True, "seconds": seconds, "precision": manifest.get("precision"),
            "backend": manifest["backend"]["name"], "export_diff": manifest.get("export", {}).get("max_abs_diff")}


def run_all(args) -> dict:
    root = Path(args.cfg_dir)
    results: dict = json.loads(Path(args.results).read_text()) if Path(args.results).is_file() else {}
    names = [n for n in yolo_cfgs(root) if not args.only or any(o in n for o in args.only)]
    subset = names if args.compile == "all" else [n for n in SUBSET if n in names] if args.compile == "subset" else []

    def save():
        Path(args.results).write_text(json.dumps(results, indent=1, sort_keys=True))

    def attempt(entry: dict, key: str, fn):
        if key in entry:
            return
        try:
            entry[key] = fn()
        except EdgeCSPError as err:
            entry[key] = {"error": str(err)}
        except Exception as err:  # noqa: BLE001 - a crash is a finding for the table, not the end of the run
            entry[key] = {"error": f"{type(err).__name__}: {str(err)[:300]}", "trace": traceback.format_exc()[-2000:]}
        save()
        print(f"{entry['name']}: {key}: {json.dumps(entry[key])[:200]}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="darknet-table-") as tmp:
        work = Path(tmp)
        for name in names:
            entry = results.setdefault(name, {"name": name})
            attempt(entry, "build", partial(step_build, root / name))
        order = sorted(names, key=lambda n: results[n]["build"].get("weights_floats", 0))
        if not args.skip_export:
            for name in order:
                if "error" not in results[name]["build"]:
                    attempt(results[name], "export", partial(step_export, root / name, args.size, work))
        for name in sorted(subset, key=order.index):
            if "error" in results[name]["build"]:
                continue
            for target in args.targets:
                attempt(results[name], f"compile:{target}",
                        partial(step_compile, root / name, args.size, target, args, work))
    return results


def markdown(results: dict, targets: list[str]) -> str:
    head = ["cfg", "builds (net size)", "levels", "params (.weights floats)",
            "BFLOPs @net: edgecsp / Darknet conv / AlexeyAB total",
            "ONNX parity @export size"] + [f"compile {t}" for t in targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in sorted(results):
        r = results[name]
        build = r.get("build", {})
        if "error" in build:
            lines.append(f"| {name} | no: {build['error']} |" + " |" * (len(head) - 2))
            continue
        exp = r.get("export")
        parity = ("not run" if exp is None else f"error: {exp['error'][:120]}" if "error" in exp
                  else f"{exp['max_abs_diff']:.1e} @{exp['size']} ({exp['seconds']:.0f} s)")
        cells = []
        for t in targets:
            c = r.get(f"compile:{t}")
            cells.append("not run" if c is None else f"ok {c['precision']} ({c['seconds']:.0f} s)" if c.get("ok")
                         else f"FAILED: {c.get('error', '?')[:120]}")
        lines.append(
            f"| {name} | yes ({build['net_size']}) | {build['levels']} | {build['weights_floats'] / 1e6:.3f}M "
            f"| {build['bflops_edgecsp']:.3f} / {build['bflops_darknet_conv']:.3f} / {build['bflops_darknet_total']:.3f} "
            f"| {parity} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg-dir", default=str(default_cfg_dir() or "shared/darknet-cfg"))
    parser.add_argument("--size", type=int, default=128, help="export and compile input size (default 128)")
    parser.add_argument("--compile", choices=["subset", "all", "none"], default="subset")
    parser.add_argument("--targets", nargs="+", default=TARGETS)
    parser.add_argument("--calibration", default="calibration/tiny.toml")
    parser.add_argument("--verify-images", type=int, default=4)
    parser.add_argument("--compile-timeout", type=int, default=1800)
    parser.add_argument("--only", nargs="*", help="cfgs whose path contains one of these")
    parser.add_argument("--skip-export", action="store_true")
    parser.add_argument("--results", default="artifacts/darknet_table.json")
    parser.add_argument("--markdown-only", action="store_true", help="print the table of --results and stop")
    args = parser.parse_args(argv)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(Path(args.results).read_text()) if args.markdown_only else run_all(args)
    print(markdown(results, args.targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
