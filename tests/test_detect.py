"""python -m edgecsp.detect --source: a real video made here, run through a compiled artifact
and through the PyTorch model, frames counted, the annotated video written and read back."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")


def _run(*args):
    return subprocess.run([sys.executable, "-m", "edgecsp.detect", *map(str, args)], capture_output=True, text=True,
                          check=False)


@pytest.fixture
def clip(shapes_small, tmp_path):
    """11 frames of 192x144 from the shapes validation images (MPEG-4 in .mp4, as users have)."""
    from edgecsp.data import load_image_rgb

    images = [load_image_rgb(p) for p in sorted((shapes_small["val"] / "images").iterdir())[:4]]
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (192, 144))
    for i in range(11):
        writer.write(np.ascontiguousarray(cv2.resize(images[i % 4], (192, 144))[..., ::-1]))
    writer.release()
    return path


def test_detect_video_with_an_artifact_writes_the_annotated_video(ov_artifact, clip, tmp_path):
    out = tmp_path / "annotated.mp4"
    r = _run("--artifact", ov_artifact, "--source", clip, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("11 frames, ") and "FPS" in r.stdout
    back = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = back.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == 11 and frames[0].shape == (144, 192, 3)
    original = cv2.VideoCapture(str(clip))
    ok, first = original.read()
    assert ok and np.abs(frames[0].astype(int) - first).max() > 100  # boxes were drawn


def test_detect_folder_and_model_source(ort_artifact, shapes_small, tmp_path, clip):
    r = _run("--source", clip, "--max-frames", "3")  # the PyTorch demo model, no output file
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("3 frames, ")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((shapes_small["val"] / "images").iterdir())[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    r = _run("--artifact", ort_artifact, "--source", folder, "--out", tmp_path / "drawn")
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "drawn").glob("*.png"))) == 3 and (tmp_path / "drawn" / "detections.json").is_file()


def test_detect_source_errors_are_one_line(tmp_path, clip):
    (tmp_path / "not-a-video.mp4").write_bytes(b"junk" * 100)
    for args in (["--source", tmp_path / "missing.mp4"], ["--source", tmp_path / "not-a-video.mp4"],
                 ["--source", clip, "--out", tmp_path / "out.png"], [clip, "--source", clip]):
        r = _run(*args)
        assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
