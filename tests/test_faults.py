"""Faults mid-compile: real compile processes killed at exact points, full and read-only disks,
two compiles on one output path, two writers on one history database, a crashing nightly job.

After every fault the rule is the same: no partial artifact at the output path (a complete one,
or none), no cache entry a later compile would trust that does not verify, and the next compile
succeeds and clears what the killed one left behind.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from edgecsp.artifact import open_artifact

TINY_RECIPE = """[calibration]
source = "shapes"
num_images = 24
seed = 0
method = "minmax"
per_channel = true
keep_head_float = true
"""


@pytest.fixture
def env(tmp_path, shapes_small):
    """A private cache and temp dir per test, so leftovers and cache entries are this test's own."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tiny.toml").write_text(TINY_RECIPE)
    e = {**os.environ, "EDGECSP_CACHE_DIR": str(tmp_path / "cache"), "TMPDIR": str(tmp_path / "tmp"),
         "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    e.pop("EDGECSP_FAILPOINT", None)
    return {"env": e, "data": shapes_small["val"], "root": tmp_path}


def compile_cmd(ctx, out: Path, precision: str = "fp32") -> list[str]:
    cmd = [sys.executable, "-m", "edgecsp.compile", "--target", "onnxruntime", "--precision", precision,
           "--data", str(ctx["data"]), "--verify-images", "4", "--out", str(out)]
    return cmd + (["--calibration", str(ctx["root"] / "tiny.toml")] if precision == "int8" else [])


def run(ctx, out: Path, precision: str = "fp32", failpoint: str | None = None, **kw) -> subprocess.CompletedProcess:
    e = dict(ctx["env"], **({"EDGECSP_FAILPOINT": failpoint} if failpoint else {}))
    return subprocess.run(compile_cmd(ctx, out, precision), env=e, capture_output=True, text=True, timeout=600, **kw)


def leftovers(ctx, out: Path) -> list[str]:
    """Temporaries a killed run may leave: staging, old copies, tarball temporaries, cache temps, work dirs."""
    found = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    engines = ctx["root"] / "cache" / "engines"
    found += [p.name for p in engines.iterdir() if p.name.startswith(".")] if engines.is_dir() else []
    found += [p.name for p in (ctx["root"] / "tmp").iterdir() if p.name.startswith("edgecsp-compile-")]
    return found


def assert_consistent(ctx, out: Path) -> None:
    """A complete artifact or none; a .tar.gz only beside its own directory; cache entries verify."""
    tarball = out.with_name(out.name + ".tar.gz")
    if out.exists():
        _, manifest = open_artifact(out)  # every checksum
        if tarball.exists():
            with tarfile.open(tarball) as tar:
                packed = json.load(tar.extractfile(f"{out.name}/manifest.json"))
            assert packed == manifest, "the .tar.gz is another build's"
    else:
        assert not tarball.exists(), "a .tar.gz without its directory"
    engines = ctx["root"] / "cache" / "engines"
    for entry in engines.iterdir() if engines.is_dir() else []:
        if entry.name.startswith("."):
            continue  # a temporary: never read by a compile
        meta = json.loads((entry / "result.json").read_text())
        from edgecsp.artifact import sha256_file

        assert all(sha256_file(entry / n) == meta["sha256"][n] for n in meta["files"]), f"cache entry {entry} is damaged"


# -- killed at exact points ---------------------------------------------------------------------------------


@pytest.mark.parametrize("point, precision, published", [
    ("calibration.image", "int8", False),
    ("build.engine_written", "int8", False),
    ("cache.engine_copied", "int8", False),
    ("artifact.manifest_written", "fp32", False),
    ("artifact.tarball_written", "fp32", False),
    ("artifact.dir_published", "fp32", True),
])
def test_a_compile_killed_at_any_step_leaves_no_partial_artifact_and_the_next_one_succeeds(env, point, precision,
                                                                                           published):
    out = env["root"] / "artifacts" / "demo"
    killed = run(env, out, precision, failpoint=f"{point}:kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert out.exists() == published  # a directory only once it is complete
    assert_consistent(env, out)
    assert leftovers(env, out), "the kill should have left temporaries for the next run to clear"

    again = run(env, out, precision)
    assert again.returncode == 0, again.stderr[-2000:]
    assert_consistent(env, out)
    assert out.with_name("demo.tar.gz").exists()
    assert leftovers(env, out) == []


def test_a_compile_killed_from_outside_during_the_engine_build_leaves_nothing(env):
    """SIGKILL from another process (an OOM killer, a CI timeout) at an unplanned moment."""
    out = env["root"] / "artifacts" / "demo"
    # 96 calibration images: step 3 lasts seconds even on a fast machine, so the kill lands inside it
    (env["root"] / "tiny.toml").write_text(TINY_RECIPE.replace("num_images = 24", "num_images = 96"))
    proc = subprocess.Popen(compile_cmd(env, out, "int8"), env=env["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("[3/4]"):  # calibration statistics and quantization run in this step
            time.sleep(0.5)
            proc.kill()
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    assert_consistent(env, out)
    assert leftovers(env, out)
    assert run(env, out, "int8").returncode == 0
    assert_consistent(env, out)
    assert leftovers(env, out) == []


# -- the disk fills up, the output is read-only -----------------------------------------------------------


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    return lines[-1]


def test_disk_full_while_writing_the_artifact_is_one_line_and_nothing_half_written(env):
    out = env["root"] / "artifacts" / "demo"
    r = run(env, out, failpoint="artifact.tarball_written:enospc")
    assert r.returncode == 2
    assert "No space left on device" in _one_error_line(r.stderr)
    assert not out.exists() and not out.with_name("demo.tar.gz").exists()
    assert leftovers(env, out) == []


def _limit_file_size():
    # Any write past 64 KiB fails with EFBIG, as on a nearly full disk (SIGXFSZ would kill instead).
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))


def test_a_real_write_limit_mid_compile_is_one_line_and_nothing_half_written(env):
    out = env["root"] / "artifacts" / "demo"
    r = run(env, out, preexec_fn=_limit_file_size)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "File too large" in _one_error_line(r.stderr)
    assert not out.exists() and leftovers(env, out) == []


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_a_really_full_disk_is_one_line_and_nothing_half_written(env):
    disk = env["root"] / "small-disk"
    if not _mount_tmpfs(disk, "size=2m"):
        pytest.skip("needs root to mount a 2 MB tmpfs (the write-limit test above covers the rest)")
    try:
        out = disk / "demo"
        r = run(env, out)
        assert r.returncode == 2, r.stderr[-2000:]
        assert "No space left on device" in _one_error_line(r.stderr)
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_read_only_output_location_fails_at_once_with_one_line(env):
    ro = env["root"] / "read-only"
    if os.geteuid() != 0:
        ro.mkdir()
        ro.chmod(0o555)
    elif not _mount_tmpfs(ro, "ro,size=1m"):
        pytest.skip("as root, a read-only location needs a read-only mount, and mounting is not allowed here")
    try:
        r = run(env, ro / "demo")
        assert r.returncode == 2
        line = _one_error_line(r.stderr)
        assert str(ro) in line and ("Read-only" in line or "Permission denied" in line)
        assert "[1/4]" not in r.stdout + r.stderr  # refused before any work (steps go to stderr)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)


# -- two writers at once ----------------------------------------------------------------------------------


def test_two_compiles_writing_the_same_output_path_leave_one_whole_artifact(env):
    out = env["root"] / "artifacts" / "demo"
    procs = [subprocess.Popen(compile_cmd(env, out, p), env=env["env"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in ("fp32", "int8")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [code for code, _ in results] == [0, 0], results
    assert_consistent(env, out)  # whole, and the .tar.gz matches the directory
    assert leftovers(env, out) == []


def _publish_many(final: str, tag: str, n: int, pause_s: float = 0.0) -> None:
    from edgecsp.artifact import finalize, staging_dir

    for i in range(n):
        time.sleep(pause_s)
        staging = staging_dir(Path(final))
        (staging / "engine.bin").write_bytes(os.urandom(2048))
        finalize(staging, Path(final), {"writer": tag, "round": i, "engine": "engine.bin", "precision": "fp32",
                                        "backend": {"name": "onnxruntime"}, "inputs": [{"shape": [1, 3, 320, 320]}],
                                        "model": {"input_size": [320, 320], "class_names": ["a"]}})


def test_many_concurrent_publishes_of_one_path_never_mix_two_builds(tmp_path):
    final = tmp_path / "demo"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_publish_many, args=(str(final), tag, 25)) for tag in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    manifest = json.loads((final / "manifest.json").read_text())
    from edgecsp.artifact import verify_files

    verify_files(final, manifest)
    with tarfile.open(tmp_path / "demo.tar.gz") as tar:
        assert json.load(tar.extractfile("demo/manifest.json")) == manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "demo.tar.gz"]


def _write_history(db: str, tag: str, n: int, start) -> None:
    from edgecsp.bench.history import History, Record

    start.wait()  # all writers open the new database at the same moment
    with History(db) as h:
        run_id = h.start_run(device="dev", suite="concurrency")
        for i in range(n):
            h.values("dev", f"job{i}", "fps", 5)  # the nightly's read-then-write pattern
            h.record(run_id, "dev", Record(job=f"job{i}", status="ok", fps=float(i)))
        h.finish_run(run_id, "ok")


def test_nightly_runs_writing_one_history_database_at_once_lose_no_row(tmp_path):
    """Before BEGIN IMMEDIATE and one-transaction table creation, such starts failed in 2 of 3 and
    4 of 9 trials ("table edgecsp_runs already exists"); three trials here."""
    import sqlite3

    ctx = multiprocessing.get_context("spawn")
    writers, rows = 6, 30
    for trial in range(3):  # a new database each time: the first-open race is the likeliest failure
        db = tmp_path / f"history{trial}.sqlite"
        start = ctx.Barrier(writers)
        procs = [ctx.Process(target=_write_history, args=(str(db), str(k), rows, start)) for k in range(writers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(300)
        assert [p.exitcode for p in procs] == [0] * writers
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT COUNT(*) FROM edgecsp_results").fetchone()[0] == writers * rows
            assert conn.execute("SELECT COUNT(*) FROM edgecsp_runs WHERE status = 'ok'").fetchone()[0] == writers


def test_a_real_job_whose_backend_crashes_is_recorded_as_that_jobs_failure(env, monkeypatch, tmp_path):
    """A native crash (SIGSEGV) inside a real nightly job's benchmark: the job fails, the caller goes on."""
    from edgecsp.bench.nightly import JobFailed, isolated_executor
    from edgecsp.bench.suite import Job, load_suite

    for key in ("EDGECSP_CACHE_DIR", "TMPDIR"):
        monkeypatch.setenv(key, env["env"][key])
    monkeypatch.setenv("EDGECSP_FAILPOINT", "benchmark.measure:segv")
    suite_file = tmp_path / "suite.toml"
    suite_file.write_text(f'[suite]\nname = "crash"\nmodels = ["demo"]\ntargets = ["onnxruntime"]\n'
                          f'precisions = ["fp32"]\nscenarios = ["latency"]\nartifacts_dir = "{tmp_path / "art"}"\n'
                          f'data = "{env["data"]}"\neval_images = 4\n'
                          f'[benchmark]\nduration_s = 0.2\nwarmup_s = 0.1\nmin_queries = 2\n')
    suite = load_suite(suite_file)
    with pytest.raises(JobFailed, match="signal SIGSEGV"):
        isolated_executor()(Job("demo", "onnxruntime", "fp32"), suite, tmp_path / "job")


def test_a_bad_output_path_is_one_line(env):
    blocker = env["root"] / "a-file"
    blocker.write_text("not a folder")
    r = run(env, blocker / "demo")  # a file where a folder is needed
    assert r.returncode == 2
    assert "a-file" in _one_error_line(r.stderr)
    r = run(env, env["root"] / ("x" * 250))  # a name the file system refuses once a suffix is added
    assert r.returncode == 2
    assert "File name too long" in _one_error_line(r.stderr)


def _read_until(final: str, stop, errors) -> None:
    from edgecsp.artifact import open_artifact as open_
    from edgecsp.errors import EdgeCSPError

    reads = 0
    while not stop.is_set() or reads == 0:
        try:
            open_(final, bind=False)  # the files and digest; the stand-in engine is no real model
        except (EdgeCSPError, OSError) as err:
            errors.put(f"{type(err).__name__}: {err}")
        reads += 1


def test_readers_never_see_a_half_replaced_artifact(tmp_path):
    """A benchmark or evaluate reading an artifact while a nightly rebuild republishes it."""
    final = tmp_path / "demo"
    _publish_many(str(final), "first", 1)
    ctx = multiprocessing.get_context("spawn")
    stop, errors = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_read_until, args=(str(final), stop, errors)) for _ in range(2)]
    for r in readers:
        r.start()
    # Republishing 10 times a second, far more often than any nightly rebuild.
    writer = ctx.Process(target=_publish_many, args=(str(final), "w", 40, 0.1))
    writer.start()
    writer.join(300)
    stop.set()
    for r in readers:
        r.join(120)
    assert writer.exitcode == 0 and [r.exitcode for r in readers] == [0, 0]
    seen = []
    while not errors.empty():
        seen.append(errors.get())
    assert seen == []
