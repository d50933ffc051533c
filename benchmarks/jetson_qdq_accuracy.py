"""The Jetson INT8 Q/DQ model's accuracy (in ONNX Runtime) before and after the sensitivity pass,
on the project's validation set and on a freshly generated held-out shapes set.

    python benchmarks/jetson_qdq_accuracy.py [--bundle DIR] [--held-out-seed 7] [--images 200]
                                             [--tolerance 0.0] [--max-layers 8] [--out benchmarks/results]

--bundle: a Jetson INT8 bundle (python -m edgecsp.compile --target jetson); without it one is
compiled into a temporary folder. The pass runs on the validation set with --tolerance (points of
AP50 below FP32; 0 forces it to float layers until INT8 matches FP32 or --max-layers were tried);
the held-out set (same six shapes, another seed: other photo crops and textures behind them, other
image sizes) is never seen by calibration or by the pass. Prints a Markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--held-out-seed", type=int, default=7)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--tolerance", type=float, default=0.0)
    parser.add_argument("--max-layers", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import onnx

    from edgecsp.backends.tensorrt.onnx_runner import OnnxModelRunner
    from edgecsp.backends.tensorrt.sensitivity import keep_costliest_float
    from edgecsp.calibration import calibration_set, load_recipe
    from edgecsp.coco_eval import evaluate
    from edgecsp.data.coco import resolve_dataset
    from edgecsp.data.shapes import default_val_dir, generate_shapes
    from edgecsp.paths import cache_dir

    tmp = Path(tempfile.mkdtemp(prefix="edgecsp-qdq-accuracy-"))
    bundle = args.bundle
    if bundle is None:
        from edgecsp.pipeline import CompileOptions, compile_artifact

        bundle, _ = compile_artifact(CompileOptions(target="jetson", precision="int8", out=tmp / "bundle"),
                                     progress=print)
    fp32 = onnx.load(str(bundle / "model.onnx"))
    qdq = onnx.load(str(bundle / "model.int8.qdq.onnx"))
    size = fp32.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    held_out_dir = cache_dir() / f"shapes-held-out-{args.held_out_seed}"
    if not (held_out_dir / "val" / "annotations.json").is_file():
        generate_shapes(held_out_dir, n_train=0, n_val=args.images, seed=args.held_out_seed)
    sets = {"validation": resolve_dataset(default_val_dir()), "held-out": resolve_dataset(held_out_dir / "val")}

    def metrics(model: onnx.ModelProto, name: str) -> dict[str, dict[str, float]]:
        path = tmp / f"{name}.onnx"
        onnx.save(model, str(path))
        out = {}
        with OnnxModelRunner(path) as r:
            for key, ds in sets.items():
                m = evaluate(r.run, ds, size, progress=False, max_images=args.images)
                out[key] = {"AP50": m["AP50"], "AP": m["AP"]}
        return out

    t0 = time.time()
    before = {"fp32": metrics(fp32, "fp32"), "int8": metrics(qdq, "int8")}
    calib = calibration_set(load_recipe(None), size).images[:8]
    ds = sets["validation"]

    def validate(predict) -> float:
        return evaluate(predict, ds, size, progress=False, max_images=args.images)["AP50"]

    model, report = keep_costliest_float(qdq, fp32, calib, validate, tolerance_points=args.tolerance,
                                         max_layers=args.max_layers, fp32_ap50=before["fp32"]["validation"]["AP50"],
                                         progress=print)
    after = metrics(model, "int8-after")
    result = {"bundle": str(bundle), "images": args.images, "held_out_seed": args.held_out_seed,
              "fp32": before["fp32"], "int8_before": before["int8"], "int8_after": after,
              "sensitivity": report.as_dict(top=10), "seconds": round(time.time() - t0, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "jetson-qdq-sensitivity.json").write_text(json.dumps(result, indent=1))
    print("\n| model (ONNX Runtime) | validation AP50 (drop) | validation AP | held-out AP50 (drop) | held-out AP |")
    print("|---|---|---|---|---|")
    for label, m in (("FP32 ONNX", before["fp32"]), ("Jetson INT8 Q/DQ, before the pass", before["int8"]),
                     (f"after the pass ({len(report.floated)} convs float)", after)):
        cells = []
        for key in ("validation", "held-out"):
            drop = (before["fp32"][key]["AP50"] - m[key]["AP50"]) * 100
            cells += [f"{m[key]['AP50']:.4f} ({drop:.2f})", f"{m[key]['AP']:.4f}"]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nfloated:", ", ".join(f"{f['conv']} (+{f['ap50_gain_points']} AP50 points)" for f in report.floated) or "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
