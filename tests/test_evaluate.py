"""python -m edgecsp.evaluate: JSON and bad input."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_evaluate_cli_json_and_bad_input(shapes_small, tmp_path):
    r = _run("edgecsp.evaluate", "--model", "demo", "--data", str(shapes_small["val"]), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert 0.0 <= out["AP"] <= out["AP50"] <= 1.0 and set(out["per_class"]) >= {"circle", "cross"}
    r = _run("edgecsp.evaluate", "--data", str(tmp_path / "missing"))
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    r = _run("edgecsp.evaluate", "--model", str(bad), "--data", str(shapes_small["val"]))
    assert r.returncode == 2 and "safetensors" in r.stderr and len(r.stderr.strip().splitlines()) == 1
