"""The worker command and what runs on devices, without a cluster: device detection, the ray start
command it prints, the suite's [fleet] settings, and the artifact unpacking on the device."""

from __future__ import annotations

import io
import json
import shlex
import tarfile
from pathlib import Path

import pytest
from fleetenv import need

from edgecsp import cli
from edgecsp.bench.suite import load_suite
from edgecsp.errors import EdgeCSPError
from edgecsp.fleet import device
from edgecsp.fleet.tasks import pack, unpack
from edgecsp.nightly import main as nightly_main
from edgecsp.worker import main as worker_main


def ray_missing() -> str | None:
    try:
        import ray  # noqa: F401
    except ImportError:
        return "Ray is not installed (pip install -e '.[fleet]')"
    return None


def fake_orin(root: Path) -> Path:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (root / "proc/device-tree/compatible").write_bytes(b"nvidia,p3768-0000+p3767-0005\x00nvidia,tegra234\x00")
    (root / "etc").mkdir()
    (root / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64\n")
    return root


def printed_command(out: str) -> tuple[dict[str, str], list[str]]:
    line = out.strip().splitlines()[-1]
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if "=" in w.split("/")[0] and not w.startswith("-"))
    return env, [w for w in words if w not in {f"{k}={v}" for k, v in env.items()}]


def test_a_jetson_joins_with_its_target_resource_and_labels(tmp_path, monkeypatch, capsys):
    need(ray_missing())
    monkeypatch.setenv("EDGECSP_JETSON_ROOT", str(fake_orin(tmp_path)))
    assert cli.run(worker_main, ["--head", "10.0.0.1:6379", "--name", "orin-01", "--dry-run"]) == 0
    env, argv = printed_command(capsys.readouterr().out)
    assert env == {"EDGECSP_WORKER_NAME": "orin-01", "EDGECSP_WORKER_TARGETS": "jetson-orin-nano",
                   "EDGECSP_WORKER_BUILDER": "0"}  # a Jetson builds engines from bundles, not artifacts
    assert argv[1:3] == ["start", "--address=10.0.0.1:6379"]
    resources = json.loads(next(a for a in argv if a.startswith("--resources=")).split("=", 1)[1])
    assert resources == {"edgecsp-device": 1.0, "target:jetson-orin-nano": 1.0}
    labels = next(a for a in argv if a.startswith("--labels=")).split("=", 1)[1]
    assert "edgecsp.device=orin-01" in labels and "edgecsp.jetpack=6.2" in labels
    assert "edgecsp.model=NVIDIA_Jetson_Orin_Nano_Developer_Kit" in labels
    # What the head's describe task on that node sees, through the variables the command passes on:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    info = device.describe()
    assert info["name"] == "orin-01" and info["targets"] == ["jetson-orin-nano"] and not info["builder"]
    assert info["jetson"] == {"target": "jetson-orin-nano", "l4t": "36.4.3", "jetpack": "6.2"}


def test_an_x86_worker_serves_the_cpu_targets_it_has_and_builds(tmp_path, monkeypatch, capsys):
    need(ray_missing())
    monkeypatch.setenv("EDGECSP_JETSON_ROOT", str(tmp_path))  # no device tree: not a Jetson
    assert cli.run(worker_main, ["--head", "h:1", "--name", "x86", "--dry-run", "--", "--temp-dir=/x"]) == 0
    env, argv = printed_command(capsys.readouterr().out)
    resources = json.loads(next(a for a in argv if a.startswith("--resources=")).split("=", 1)[1])
    assert "target:onnxruntime" in resources and resources["edgecsp-builder"] == 1.0  # ONNX Runtime and torch here
    assert argv[-1] == "--temp-dir=/x"  # what follows -- goes to ray start as is
    assert cli.run(worker_main, ["--head", "h:1", "--only-build", "--dry-run"]) == 0
    env, argv = printed_command(capsys.readouterr().out)
    resources = json.loads(next(a for a in argv if a.startswith("--resources=")).split("=", 1)[1])
    assert not [r for r in resources if r.startswith("target:")] and env["EDGECSP_WORKER_TARGETS"] == ""
    monkeypatch.setenv("EDGECSP_WORKER_TARGETS", "")
    assert device.describe()["targets"] == []  # set but empty: a builder, not "detect"


def test_worker_and_nightly_refuse_bad_input_in_one_line(tmp_path, capsys):
    assert cli.run(worker_main, ["--head", "h:1", "--target", "jetson-orin-nanoo", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "jetson-orin-nanoo" in err[0]
    suite = tmp_path / "s.toml"
    suite.write_text('[suite]\nmodels = ["demo"]\ntargets = ["onnxruntime"]\n[fleet]\nplacement = "everywhere"\n')
    with pytest.raises(EdgeCSPError, match="placement"):
        load_suite(suite)
    suite.write_text('[suite]\nmodels = ["demo"]\ntargets = ["onnxruntime"]\n[fleet]\nplacement = "one-device"\n'
                     'on_device_lost = "retry"\n')
    s = load_suite(suite)
    assert (s.placement, s.on_device_lost) == ("one-device", "retry")
    assert cli.run(nightly_main, ["--suite", str(suite), "--night", "n1", "--db", str(tmp_path / "h.sqlite")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--cluster" in err[0]
    if ray_missing() is None:
        import socket

        with socket.socket() as s:  # a port nobody listens on: refused at once, not a wait for minutes
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for cluster, match in ((f"127.0.0.1:{port}", "nothing answers at"), ("headonly", "HOST:PORT")):
            args = ["--suite", str(suite), "--cluster", cluster, "--db", str(tmp_path / "h.sqlite")]
            assert cli.run(nightly_main, args) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and match in err[0], err


def test_the_device_unpacks_only_plain_files_inside_its_folder(tmp_path):
    src = tmp_path / "art"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"\x01" * 100)
    (src / "sub" / "x.json").write_text("{}")
    dest = tmp_path / "out"
    dest.mkdir()
    unpack(pack(src), dest)
    assert (dest / "model.onnx").read_bytes() == b"\x01" * 100 and (dest / "sub" / "x.json").read_text() == "{}"
    for member in (tarfile.TarInfo("../escape.txt"), tarfile.TarInfo("link")):
        if member.name == "link":
            member.type, member.linkname = tarfile.SYMTYPE, "/etc/passwd"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(member, io.BytesIO(b"") if member.isfile() else None)
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        with pytest.raises(EdgeCSPError, match="refused"):
            unpack(buf.getvalue(), bad)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "bad" / "link").exists()
