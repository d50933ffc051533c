"""python -m edgecsp.detect on images: drawn files, detections.json, --json on stdout."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


def test_detect_cli_writes_drawn_images_and_json(shapes_small, tmp_path):
    images = sorted((shapes_small["val"] / "images").iterdir())[:2]
    r = _run("edgecsp.detect", *map(str, images), "--out", str(tmp_path / "det"))
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "det" / "detections.json").read_text())
    assert len(report) == 2 and all(len(item["detections"]) >= 1 for item in report)
    assert all((tmp_path / "det" / f"{p.stem}.png").is_file() for p in images)
    r = _run("edgecsp.detect", str(tmp_path / "nope.jpg"), "--out", str(tmp_path / "det2"))
    assert r.returncode == 2 and not (tmp_path / "det2").exists()


def test_detect_cli_json_is_the_result_on_stdout_and_progress_on_stderr(shapes_small, tmp_path):
    images = sorted((shapes_small["val"] / "images").iterdir())[:2]
    r = _run("edgecsp.detect", *map(str, images), "--out", str(tmp_path / "det"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads((tmp_path / "det" / "detections.json").read_text())
    assert [line.split(": ")[0] for line in r.stderr.splitlines()] == [str(p) for p in images]
