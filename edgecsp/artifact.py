"""Artifacts: a directory (and a .tar.gz of it) holding engine files and ``manifest.json``.

The manifest is the one contract between compile, load, evaluate, benchmark and nightly. Every
file's sha256 is in it and is checked on load, so a tampered or truncated engine is refused.
Artifacts are assembled in a staging directory and renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError

SCHEMA = "edgecsp-artifact/1"
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def staging_dir(final: Path) -> Path:
    """A fresh directory beside ``final`` (same file system, so the final rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))


def finalize(staging: Path, final: Path, manifest: dict[str, Any], tarball: bool = True) -> Path:
    """Hash every file, write the manifest, build the .tar.gz, then move both into place."""
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = dict(manifest, schema=SCHEMA)
    manifest["files"] = {str(p.relative_to(staging)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                         for p in files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    tar_tmp = None
    if tarball:
        fd, tar_tmp = tempfile.mkstemp(prefix=f".{final.name}.tar.", dir=final.parent)
        os.close(fd)
        with tarfile.open(tar_tmp, "w:gz") as tar:
            for p in sorted(staging.rglob("*")):
                if p.is_file():
                    tar.add(p, arcname=f"{final.name}/{p.relative_to(staging)}")
    # mkdtemp/mkstemp create owner-only entries; an artifact is meant to be shared and deployed.
    staging.chmod(0o755)
    if tar_tmp:
        os.chmod(tar_tmp, 0o644)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(staging, final)
    if tar_tmp:
        os.replace(tar_tmp, final.with_name(final.name + ".tar.gz"))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _extract(tar_path: Path) -> Path:
    """Unpack a .tar.gz artifact once into the cache (keyed by the tarball's hash)."""
    from edgecsp.paths import cache_dir

    key = sha256_file(tar_path)[:16]
    dest = cache_dir() / "artifacts" / key
    if not (dest / ".complete").exists():
        tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent if dest.parent.exists() else None))
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                tar.extractall(tmp, filter="data")  # the "data" filter refuses absolute paths and links out
        except (tarfile.TarError, EOFError, OSError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EdgeCSPError(f"artifact {tar_path} is not a readable .tar.gz ({err}); copy it again") from None
        (tmp / ".complete").touch()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise EdgeCSPError(f"artifact {tar_path} should hold one artifact directory, found {len(roots)}")
    return roots[0]


def open_artifact(path: str | Path, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """Resolve a directory or .tar.gz artifact; check the manifest and every file's sha256."""
    path = Path(path)
    if not path.exists():
        raise EdgeCSPError(f"artifact {path} does not exist; build one with python -m edgecsp.compile --target ...")
    root = _extract(path) if path.is_file() else path
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise EdgeCSPError(f"{root} is not an edgecsp artifact (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise EdgeCSPError(f"{manifest_path} is corrupt ({err}); rebuild the artifact") from None
    if manifest.get("schema") != SCHEMA:
        raise EdgeCSPError(f"{manifest_path} has schema {manifest.get('schema')!r}; this edgecsp reads {SCHEMA}")
    if verify:
        for name, entry in manifest.get("files", {}).items():
            f = root / name
            if not f.is_file():
                raise EdgeCSPError(f"artifact {root} is missing {name}; rebuild it with python -m edgecsp.compile")
            if f.stat().st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
                raise EdgeCSPError(f"artifact file {f} fails its sha256 check (tampered or truncated); "
                                   "rebuild it with python -m edgecsp.compile")
    return root, manifest
