"""Replay issue 13's independent-attack reproductions against a checkout and count how many are
refused cleanly (docs/reliability.md, "Independent attack").

    python benchmarks/attack_replay.py --checkout DIR [--work DIR] [--json OUT]

Each attack runs in its own process with ``PYTHONPATH=DIR`` (so two checkouts, before and after
a change, are compared on the same machine), a 6 GiB address-space limit and a 60 s timeout. An
attack counts as refused cleanly when it exits 2 with one ``error:`` line on stderr and no
traceback (or, for the library attacks, raises EdgeCSPError); anything else is a misbehaviour:
a traceback, an exit 0 where it should refuse, a memory kill, a hang.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

MEMORY_LIMIT = 6 << 30
TIMEOUT_S = 60


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def attacks(work: Path, val: Path, image: Path, artifact: Path) -> list[tuple[str, str, list[str]]]:
    """(group, label, argv after python): the issue's reproductions."""
    cli = [
        ("gate", "compile --verify-images 0", ["-m", "edgecsp.compile", "--target", "onnxruntime", "--data", str(val),
                                               "--verify-images", "0", "--out", str(work / "g0")]),
        ("gate", "compile --verify-images -3", ["-m", "edgecsp.compile", "--target", "onnxruntime", "--data",
                                                str(val), "--verify-images", "-3", "--out", str(work / "g1")]),
        ("gate", "benchmark --accuracy --eval-images 0", ["-m", "edgecsp.benchmark", "--artifact", str(artifact),
                                                          "--accuracy", "--eval-images", "0", "--duration", "0.1",
                                                          "--warmup", "0", "--min-queries", "1", "--no-plots",
                                                          "--no-platform", "--data", str(val), "--out",
                                                          str(work / "b0")]),
    ]
    numeric = [
        ("compile", ["--batch", "two"]), ("compile", ["--batch", "99999999999999999999"]),
        ("compile", ["--batch", "100000"]), ("compile", ["--batch", "0"]), ("evaluate", ["--batch", "0"]),
        ("evaluate", ["--batch", "-1"]), ("evaluate", ["--model", "demo", "--input-size", "7"]),
        ("benchmark", ["--duration", "nan"]), ("benchmark", ["--duration", "inf"]), ("benchmark", ["--batch", "0"]),
        ("summary", ["cspdarknet53", "--width", "nan"]), ("summary", ["cspdarknet53", "--depth", "1e9"]),
        ("train", ["--batch", "0"]), ("train", ["--lr", "nan"]), ("train", ["--input-size", "7"]),
        ("train", ["--device", "tpu"]), ("train", ["--workers", "-1"]), ("export", ["--input-size", "320000"]),
        ("detect", ["--score", "nan"]), ("detect", ["--iou", "-1"]),
    ]
    extra = {"compile": ["--target", "onnxruntime", "--data", str(val), "--verify-images", "4"],
             "evaluate": ["--data", str(val)],
             "benchmark": ["--artifact", str(artifact), "--no-plots", "--no-platform", "--min-queries", "1",
                           "--warmup", "0"],
             "train": ["--data", str(val), "--epochs", "1"], "export": [],
             "detect": [str(image)], "summary": []}
    for verb, args in numeric:
        out = ["--out", str(work / f"{verb}-{len(cli)}")] if verb in ("compile", "detect", "benchmark", "train") \
            else (["--out", str(work / f"e{len(cli)}.onnx")] if verb == "export" else [])
        cli.append(("options", f"{verb} {' '.join(args)}", ["-m", f"edgecsp.{verb}", *extra[verb], *args, *out]))
    return cli


def library_attacks(work: Path, val: Path, artifact: Path) -> list[tuple[str, str, str, int]]:
    """(group, label, python code run with -c, the clean exit status): 2 where the attack must be
    refused (EdgeCSPError, printed as one line), 0 where it must just not misbehave (the code
    exits 1 with a message on a misbehaviour it sees itself)."""
    tarball = artifact.with_name(artifact.name + ".tar.gz")
    edit = textwrap.dedent(f"""
        import json, shutil, sys
        from pathlib import Path
        import edgecsp
        root = Path({str(work)!r}) / ("m-" + sys.argv[1])
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree({str(artifact)!r}, root)
        m = json.loads((root / "manifest.json").read_text())
        exec(sys.argv[2])
        (root / "manifest.json").write_text(json.dumps(m))
        import hashlib
        if (root / "manifest.sha256").exists():  # an attacker recomputes the digest too
            (root / "manifest.sha256").write_text(hashlib.sha256((root / "manifest.json").read_bytes()).hexdigest()
                                                  + "  manifest.json\\n")
        p = edgecsp.load(root)
        import numpy as np
        dets = p(np.full((240, 320, 3), 114, np.uint8))
        print("loaded", p.manifest["precision"], len(p.class_names))
    """)
    edits = {
        "class_names 3": 'm["model"]["class_names"] = m["model"]["class_names"][:3]',
        "class_names 20": 'm["model"]["class_names"] = [f"c{i}" for i in range(20)]',
        "num_classes": 'm["model"]["num_classes"] = 20',
        "precision fp16": 'm["precision"] = "fp16"',
        "precision int8": 'm["precision"] = "int8"; m["backend"]["info"]["precision"] = "int8"',
        "backend.name": 'm["backend"]["name"] = "openvino"',
        "inputs name": 'm["inputs"][0]["name"] = "x"',
        "batch": 'm["inputs"][0]["shape"][0] = 4',
        "strides": 'm["model"]["strides"] = [s * 2 for s in m["model"]["strides"]]',
        "outputs": 'm["outputs"][0]["shape"][2] = 25',
    }
    out = [("manifest", f"edited {k}", f"import sys; sys.argv = ['x', {k.replace(' ', '_')!r}, {v!r}]\n{edit}", 2)
           for k, v in edits.items()]
    bad = work / "bad-val"
    out.append(("data", "every box zero-size/negative/outside", textwrap.dedent(f"""
        import json, os, shutil, subprocess, sys
        from pathlib import Path
        bad = Path({str(bad)!r}); shutil.rmtree(bad, ignore_errors=True); bad.mkdir()
        d = json.loads(Path({str(val)!r}, "annotations.json").read_text())
        for k, a in enumerate(d["annotations"]):
            a["bbox"] = [[10, 10, 0, 5], [10, 10, -4, -4], [1e6, 1e6, 10, 10]][k % 3]
        (bad / "annotations.json").write_text(json.dumps(d)); os.symlink({str(val / "images")!r}, bad / "images")
        r = subprocess.run([sys.executable, "-m", "edgecsp.evaluate", "--data", str(bad)], capture_output=True,
                           text=True)
        sys.stderr.write(r.stderr); sys.exit(r.returncode)
    """), 2))
    out.append(("data", "renamed classes, same ids", textwrap.dedent(f"""
        import json, os, shutil, subprocess, sys
        from pathlib import Path
        bad = Path({str(work / "renamed")!r}); shutil.rmtree(bad, ignore_errors=True); bad.mkdir()
        d = json.loads(Path({str(val)!r}, "annotations.json").read_text())
        d["categories"][0]["name"] = "ellipse"
        (bad / "annotations.json").write_text(json.dumps(d)); os.symlink({str(val / "images")!r}, bad / "images")
        r = subprocess.run([sys.executable, "-m", "edgecsp.evaluate", "--data", str(bad)], capture_output=True,
                           text=True)
        sys.stderr.write(r.stderr); sys.exit(r.returncode)
    """), 2))
    out.append(("library", "load(.tar.gz) with an unusable cache", textwrap.dedent(f"""
        import os
        from pathlib import Path
        block = Path({str(work / "blocker")!r}); block.write_text("x")
        os.environ["EDGECSP_CACHE_DIR"] = str(block / "cache")
        import edgecsp
        edgecsp.load({str(tarball)!r})
    """), 2))
    out.append(("library", "nested archive leaves no extraction", textwrap.dedent(f"""
        import io, os, sys, tarfile
        from pathlib import Path
        cache = Path({str(work / "nested-cache")!r}); os.environ["EDGECSP_CACHE_DIR"] = str(cache)
        outer = Path({str(work / "outer.tar.gz")!r})
        data = Path({str(tarball)!r}).read_bytes()
        with tarfile.open(outer, "w:gz") as tar:
            d = tarfile.TarInfo("art"); d.type = tarfile.DIRTYPE; d.mode = 0o755; tar.addfile(d)
            i = tarfile.TarInfo("art/inner.tar.gz"); i.size = len(data); tar.addfile(i, io.BytesIO(data))
        import edgecsp
        try:
            edgecsp.load(outer)
        finally:
            left = list((cache / "artifacts").iterdir()) if (cache / "artifacts").exists() else []
            if left:
                print(f"extraction left in the cache: {{left}}", file=sys.stderr)
                os._exit(1)
    """), 2))
    out.append(("nightly", "SIGKILLed run closed by the next", textwrap.dedent(f"""
        import os, signal, subprocess, sys
        from pathlib import Path
        db = Path({str(work / "h.sqlite")!r}); db.unlink(missing_ok=True)
        code = ("import os, signal, socket; from edgecsp.bench.history import History; "
                f"h = History({{str(db)!r}}); h.start_run('dev', 's', hostname=socket.gethostname()); "
                "os.kill(os.getpid(), signal.SIGKILL)")
        subprocess.run([sys.executable, "-c", code])
        import socket
        from edgecsp.bench.history import History
        with History(db) as h:
            close = getattr(h, "close_killed_runs", None)
            if close is not None:
                close(socket.gethostname())
            status = h.engine.connect().exec_driver_sql("SELECT status FROM edgecsp_runs").scalar_one()
        if status == "running":
            raise SystemExit("the killed run still says running")
    """), 0))
    return out


def wrapped(code: str) -> str:
    """The library attack with EdgeCSPError printed as the CLI does: one line, exit 2."""
    return ("import sys\nfrom edgecsp.errors import EdgeCSPError\ntry:\n" + textwrap.indent(code, "    ")
            + "\nexcept EdgeCSPError as err:\n    print(f'error: {err}', file=sys.stderr)\n    sys.exit(2)\n")


def clean(rc: int | None, stderr: str, want: int) -> bool:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if rc != want or "Traceback" in stderr:
        return False
    return want == 0 or (len([ln for ln in lines if ln.startswith("error")]) == 1 and lines[-1].startswith("error"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--data", type=Path, required=True, help="a shapes val split (annotations.json + images/)")
    parser.add_argument("--artifact", type=Path, required=True, help="an onnxruntime artifact folder built by the "
                                                                     "checkout, its .tar.gz beside it")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="attack-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {"PYTHONPATH": str(args.checkout.resolve()), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
           "EDGECSP_CACHE_DIR": str(work / "cache"), "HOME": str(work)}
    image = next((args.data / "images").iterdir())
    rows = []
    runs = [(g, label, argv, 2) for g, label, argv in attacks(work, args.data, image, args.artifact)]
    runs += [(g, label, ["-c", wrapped(code)], want)
             for g, label, code, want in library_attacks(work, args.data, args.artifact)]
    for group, label, argv, want in runs:
        try:
            r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, cwd=work,
                               timeout=TIMEOUT_S, preexec_fn=_limit, check=False)
            rc, err = r.returncode, r.stderr
        except subprocess.TimeoutExpired:
            rc, err = None, f"no result after {TIMEOUT_S} s"
        ok = clean(rc, err, want)
        last = (err.strip().splitlines() or [""])[-1][:140]
        rows.append({"group": group, "attack": label, "clean": ok, "rc": rc, "last_line": last})
        print(f"{'clean' if ok else 'BAD  '} [{group}] {label}: rc={rc} {last}", flush=True)
    print(f"{sum(r['clean'] for r in rows)} of {len(rows)} refused cleanly")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
