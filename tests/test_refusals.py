"""Data sets that cannot be evaluated, library errors and killed nightly runs (issue 13): each is
refused or repaired in one line, never a traceback, an AP of 0.0 or a row 'running' forever."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import edgecsp
from edgecsp.errors import EdgeCSPError


def _copy_set(val: Path, dest: Path, edit) -> Path:
    data = json.loads((val / "annotations.json").read_text())
    edit(data)
    dest.mkdir()
    (dest / "annotations.json").write_text(json.dumps(data))
    (dest / "images").symlink_to(val / "images")
    return dest


def _no_valid_box(data: dict) -> None:
    for k, a in enumerate(data["annotations"]):
        a["bbox"] = [[10, 10, 0, 5], [10, 10, -4, -4], [1e6, 1e6, 10, 10]][k % 3]  # zero, negative, outside


def test_a_set_whose_every_box_is_invalid_is_refused_not_scored_zero(tmp_path, shapes_small):
    from edgecsp.coco_eval import evaluate
    from edgecsp.data.coco import resolve_dataset

    root = _copy_set(shapes_small["val"], tmp_path / "bad", _no_valid_box)
    with pytest.warns(UserWarning, match="dropped"):
        dataset = resolve_dataset(root)
    called = []
    with pytest.raises(EdgeCSPError, match="no valid box left"):
        evaluate(lambda batch: called.append(1), dataset, 320)
    assert not called  # refused before any prediction
    r = subprocess.run([sys.executable, "-m", "edgecsp.evaluate", "--data", str(root)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 2 and "no valid box left" in r.stderr and "Traceback" not in r.stderr
    # The dropped-box warning and the error: one line each, no source line under the warning.
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and "DataWarning: dropped" in lines[0] and lines[1].startswith("error: "), r.stderr


def test_renamed_classes_with_the_same_ids_are_refused(tmp_path, shapes_small):
    from edgecsp.pipeline import CompileOptions, compile_artifact

    def rename(data: dict) -> None:
        data["categories"][0]["name"] = "ellipse"

    root = _copy_set(shapes_small["val"], tmp_path / "renamed", rename)
    r = subprocess.run([sys.executable, "-m", "edgecsp.evaluate", "--data", str(root)], capture_output=True,
                       text=True, check=False)
    assert r.returncode == 2 and "class names differ" in r.stderr and "'ellipse'" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(EdgeCSPError, match="class names differ"):
        compile_artifact(CompileOptions(target="onnxruntime", precision="fp32", data=root, out=tmp_path / "a"),
                         progress=lambda line: None)
    assert not (tmp_path / "a").exists()


def test_an_artifact_with_renamed_classes_is_not_evaluated(tmp_path, shapes_small, ort_artifact):
    def rename(data: dict) -> None:
        data["categories"][1]["name"] = data["categories"][1]["name"].upper() + "X"

    root = _copy_set(shapes_small["val"], tmp_path / "renamed", rename)
    r = subprocess.run([sys.executable, "-m", "edgecsp.evaluate", "--artifact", str(ort_artifact), "--data",
                        str(root)], capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "class names differ" in r.stderr, r.stderr


def test_an_unusable_cache_is_an_edgecsp_error_not_an_os_error(tmp_path, ort_artifact, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(EdgeCSPError, match="cannot be used to unpack .*EDGECSP_CACHE_DIR"):
        edgecsp.load(ort_artifact.with_name(ort_artifact.name + ".tar.gz"))


def _tar(path: Path, members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_nested_archive_is_refused_and_leaves_no_extraction(tmp_path, ort_artifact, monkeypatch):
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path / "cache"))
    inner = ort_artifact.with_name(ort_artifact.name + ".tar.gz").read_bytes()
    for name, members, dirs in [("top.tar.gz", {"onnxruntime.tar.gz": inner}, ()),
                                ("indir.tar.gz", {"art/onnxruntime.tar.gz": inner}, ("art",))]:
        outer = _tar(tmp_path / name, members, dirs)
        with pytest.raises(EdgeCSPError, match=r"holds no artifact directory with a manifest.json") as err:
            edgecsp.load(outer)
        assert str(tmp_path / "cache") not in str(err.value)
        extracted = tmp_path / "cache" / "artifacts"
        assert not extracted.exists() or list(extracted.iterdir()) == []


def test_a_refused_archive_names_itself_and_leaves_no_extraction(tmp_path, ort_artifact, monkeypatch):
    monkeypatch.setenv("EDGECSP_CACHE_DIR", str(tmp_path / "cache"))
    copy = tmp_path / "onnxruntime"
    shutil.copytree(ort_artifact, copy)
    with open(copy / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\xff\xfe")
    with tarfile.open(tmp_path / "bad.tar.gz", "w:gz") as tar:
        tar.add(copy, arcname="onnxruntime")
    with pytest.raises(EdgeCSPError, match="fails its sha256 check") as err:
        edgecsp.load(tmp_path / "bad.tar.gz")
    assert "bad.tar.gz" in str(err.value) and str(tmp_path / "cache") not in str(err.value)
    assert list((tmp_path / "cache" / "artifacts").iterdir()) == []


def test_a_killed_nightly_run_is_closed_as_killed_by_the_next(tmp_path):
    from edgecsp.bench.history import History

    db = tmp_path / "history.sqlite"
    code = (f"import os, signal; from edgecsp.bench.history import History; h = History({str(db)!r}); "
            "h.start_run('dev', 'suite', hostname='host'); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == -signal.SIGKILL
    with History(db) as h:
        alive = h.start_run("dev", "suite", hostname="host")  # this process: still running
        other_host = h.start_run("dev", "suite", hostname="elsewhere")
        killed = h.close_killed_runs("host")
        statuses = {row[0]: row[1] for row in h.engine.connect().exec_driver_sql(
            "SELECT id, status FROM edgecsp_runs").all()}
    assert killed == [1] and statuses == {1: "killed", alive: "running", other_host: "running"}


def test_a_set_with_some_valid_boxes_is_still_evaluated(tmp_path, shapes_small):
    from edgecsp.coco_eval import check_evaluable
    from edgecsp.data.coco import resolve_dataset

    def spoil_half(data: dict) -> None:
        for a in data["annotations"][::2]:
            a["bbox"] = [10, 10, 0, 0]

    root = _copy_set(shapes_small["val"], tmp_path / "half", spoil_half)
    with pytest.warns(UserWarning, match="dropped"):
        dataset = resolve_dataset(root)
    check_evaluable(dataset)
    assert sum(len(dataset.targets(i)[0]) for i in range(len(dataset))) > 0


def test_first_line_of_a_library_error_is_one_bounded_line():
    from edgecsp.errors import first_line

    assert first_line(RuntimeError("  bad graph\n  node 1\n  node 2")) == "bad graph"
    assert first_line(ValueError("")) == "ValueError" and first_line(KeyError()) == "KeyError"
    long = first_line(RuntimeError("x" * 1000), limit=200)
    assert len(long) == 200 and long.endswith("...")


@pytest.mark.parametrize("module, argv", [
    ("compile", ["--target", "intel-cpu", "--batch", "two"]),
    ("export", ["--batch", "two"]),
    ("evaluate", ["--batch", "two"]),
    ("benchmark", ["--target", "intel-cpu", "--batch", "two"]),
    ("train", ["--data", ".", "--batch", "two"]),
    ("worker", ["--head", "127.0.0.1:6379", "--num-cpus", "two"]),
    ("nightly", ["report", "--html", "site", "--nights", "two"]),
])
def test_every_commands_numbers_are_refused_in_one_line(module, argv, capsys):
    """A number that is not one is one line and exit code 2 in every command (argparse's own error
    prints the usage first), before any work."""
    import importlib

    from edgecsp import cli

    main = importlib.import_module(f"edgecsp.{module}").main
    with pytest.raises(SystemExit) as exit_:
        cli.run(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "'two'" in err[0], err
