"""The e2e benchmark scenario (edgecsp.bench.e2e), the machine-load record (edgecsp.bench.load)
and the stall report: what they write, checked for shape and sense; never for speed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgecsp.bench.harness import stall_stats
from edgecsp.bench.load import LoadMonitor, warning


@pytest.fixture
def few_images(shapes_small, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted((shapes_small["val"] / "images").iterdir())[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def test_e2e_report_has_stages_ratios_and_load(ov_artifact, few_images):
    from edgecsp.bench.e2e import STAGES, E2EOptions, format_table, run_e2e

    seen = []
    report = run_e2e(E2EOptions(artifact=ov_artifact, images=few_images, duration_s=0.0, warmup_s=0.0, min_rounds=1,
                                extra_paths={"again": lambda d, item: seen.append(d(item))}), progress=lambda line: None)
    assert report["schema"] == "edgecsp-benchmark-e2e/1" and report["source"]["frames"] == 4
    assert report["engine_only"]["frames"] == report["sequential"]["frames"] == report["stream"]["frames"] == 4
    for stage in STAGES:
        assert report["stages_ms"][stage]["mean"] > 0
    ratios = report["ratios"]
    assert ratios["stream_vs_engine"] == pytest.approx(report["stream"]["fps"] / report["engine_only"]["fps"], rel=1e-3)
    assert len(seen) == 4 and report["extra_paths"]["again"]["frames"] == 4
    assert report["settings"]["engine_input"] == "nhwc-u8" and report["settings"]["decoder"].startswith("opencv")
    assert set(report["load"]) >= {"before", "during", "busy", "cpus"}
    table = format_table(report)
    assert "detector.stream(frames)" in table and "decode" in table and "machine load" in table
    json.dumps(report)  # JSON-ready as it is


def test_e2e_cli_on_a_video_and_its_errors(ort_artifact, shapes_small, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from edgecsp.data import load_image_rgb

    video = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (160, 120))
    for p in sorted((shapes_small["val"] / "images").iterdir())[:5]:
        writer.write(np.ascontiguousarray(cv2.resize(load_image_rgb(p), (160, 120))[..., ::-1]))
    writer.release()
    out = tmp_path / "e2e.json"
    base = [sys.executable, "-m", "edgecsp.benchmark", "--artifact", str(ort_artifact)]
    r = subprocess.run(base + ["--scenario", "e2e", "--video", str(video), "--duration", "0.01", "--warmup", "0",
                               "--json-out", str(out), "--out", str(tmp_path / "rep")], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["source"]["kind"] == "video" and report["stream"]["frames"] >= 5 and "x engine" in r.stdout
    for args in (["--scenario", "e2e"], ["--images", str(tmp_path)], ["--scenario", "e2e", "--images", str(tmp_path)]):
        r = subprocess.run(base + args, capture_output=True, text=True, check=False)
        assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr


def test_stalls_are_counted_not_averaged():
    lat = np.full(1000, 2_000_000, dtype=np.int64)  # 2 ms
    assert stall_stats(lat)["count"] == 0 and stall_stats(lat)["p99_over_p50"] == 1.0
    lat[::100] = 2_000_000_000  # ten 2-second stalls
    st = stall_stats(lat)
    assert st["count"] == 10 and st["worst_over_median"] == 1000.0 and st["fraction_of_time"] > 0.9


def test_load_monitor_reports_fractions_and_warns_only_when_busy():
    with LoadMonitor(sample_s=0.05) as mon:
        sum(i * i for i in range(200_000))  # this process's own work is not "other processes"
    load = mon.result()
    for value in (load["before"]["others_busy_fraction"], load["during"]["others_busy_fraction"]):
        assert value is None or 0.0 <= value <= 1.0
    assert (warning(load) is None) == (not load["busy"])
    busy = {**load, "busy": True, "busy_reasons": ["other processes used 90% of the CPUs during the run"]}
    assert "busy" in warning(busy) and "90%" in warning(busy)


def test_torch_baseline_runs_on_the_engines_threads():
    import torch

    from edgecsp.bench.baselines import TorchRunner

    before = torch.get_num_threads()
    runner = TorchRunner(torch.nn.Identity(), (1, 3, 8, 8), threads=1)
    assert torch.get_num_threads() == 1 and runner.describe()["threads"] == 1
    runner.close()
    assert torch.get_num_threads() == before
