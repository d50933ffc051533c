"""Artifacts: a directory (and a .tar.gz of it) holding engine files and ``manifest.json``.

The manifest is the one contract between compile, load, evaluate, benchmark and nightly. Every
file's sha256 is in it and is checked on load, so a tampered or truncated engine is refused.
Artifacts come from elsewhere (copied between machines, downloaded by device fleets), so opening
one trusts nothing in it: archives are checked member by member before extraction, the manifest
is validated against its JSON schema, and no path in it may leave the artifact directory.
Artifacts are assembled in a staging directory and published only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError
from edgecsp.faults import failpoint
from edgecsp.fsutil import locked_dir, private_tmpdir, remove_stale

SCHEMA = "edgecsp-artifact/1"
MANIFEST = "manifest.json"
# Limits on an archive before extracting it: a bomb or a junk archive is refused, not unpacked.
MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 8 << 30
MAX_MANIFEST_BYTES = 16 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- writing ----------------------------------------------------------------------------------


def _leftover_prefixes(final: Path) -> list[str]:
    return [f".{final.name}.partial-", f".{final.name}.old-", f".{final.name}.tar."]


def staging_dir(final: Path) -> Path:
    """A fresh directory beside ``final`` (same file system, so the final rename is atomic).

    What killed runs left beside ``final`` (their pid is gone) is removed first.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    for prefix in _leftover_prefixes(final):
        remove_stale(final.parent, prefix)
    return private_tmpdir(final.parent, f".{final.name}.partial-")


def finalize(staging: Path, final: Path, manifest: dict[str, Any], tarball: bool = True) -> Path:
    """Hash every file, write the manifest, build the .tar.gz, then publish both.

    Publishing holds a lock on ``final``'s folder, so two compiles writing the same path publish one
    after the other (the last one wins, whole). The old .tar.gz is removed before the new
    directory goes in: a kill between the two renames leaves a complete directory without a
    .tar.gz, never a directory beside another build's .tar.gz.
    """
    files = sorted(p for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = dict(manifest, schema=SCHEMA)
    manifest["files"] = {p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                         for p in files}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    failpoint("artifact.manifest_written")
    tar_tmp = None
    try:
        if tarball:
            fd, tar_tmp = tempfile.mkstemp(prefix=f".{final.name}.tar.{os.getpid()}-", dir=final.parent)
            os.close(fd)
            with tarfile.open(tar_tmp, "w:gz") as tar:
                for p in sorted(staging.rglob("*")):
                    if p.is_file():
                        tar.add(p, arcname=f"{final.name}/{p.relative_to(staging).as_posix()}")
            # mkdtemp/mkstemp create owner-only entries; an artifact is meant to be shared and deployed.
            os.chmod(tar_tmp, 0o644)
            failpoint("artifact.tarball_written")
        staging.chmod(0o755)
        tar_final = final.with_name(final.name + ".tar.gz")
        with locked_dir(final.parent):
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
                os.replace(final, old / final.name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tar_final)
            os.replace(staging, final)
            failpoint("artifact.dir_published")
            if tar_tmp:
                os.replace(tar_tmp, tar_final)
                tar_tmp = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        if tar_tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tar_tmp)


# -- reading ----------------------------------------------------------------------------------


def _safe_member_name(name: str) -> str | None:
    """The member's normalized relative name, or None when it is absolute or climbs out."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        return None
    norm = posixpath.normpath(name)
    if norm.startswith("../") or norm == ".." or os.path.isabs(norm):
        return None
    if ".." in name.split("/"):  # even a "a/../b" that stays inside is not what compile writes
        return None
    return norm


def check_archive(tar: tarfile.TarFile, tar_path: Path) -> None:
    """Refuse an archive holding anything but regular files and directories inside one root."""
    members = tar.getmembers()
    if len(members) > MAX_MEMBERS:
        raise EdgeCSPError(f"artifact {tar_path} has {len(members)} entries (limit {MAX_MEMBERS}); it is not "
                           "an edgecsp artifact")
    total, roots = 0, set()
    for m in members:
        name = _safe_member_name(m.name)
        if name is None:
            raise EdgeCSPError(f"artifact {tar_path} has an unsafe path {m.name!r} (absolute or '..'); refused, "
                               "nothing extracted")
        kind = ("symlink" if m.issym() else "hard link" if m.islnk() else "device file" if m.isdev()
                else "fifo" if m.isfifo() else None if m.isfile() or m.isdir() else "special entry")
        if kind:
            raise EdgeCSPError(f"artifact {tar_path} holds a {kind} ({m.name!r}); artifacts hold only regular "
                               "files: refused, nothing extracted")
        roots.add(name.split("/", 1)[0])
        total += m.size
    if total > MAX_UNPACKED_BYTES:
        raise EdgeCSPError(f"artifact {tar_path} unpacks to {total / 2**30:.1f} GiB (limit "
                           f"{MAX_UNPACKED_BYTES / 2**30:.0f} GiB); refused")
    if len(roots) != 1:
        raise EdgeCSPError(f"artifact {tar_path} should hold one artifact directory, found {len(roots)}")


def _extract(tar_path: Path) -> Path:
    """Unpack a .tar.gz artifact once into the cache (keyed by the tarball's hash)."""
    from edgecsp.paths import cache_dir

    key = sha256_file(tar_path)[:16]
    parent = cache_dir() / "artifacts"
    dest = parent / key
    if not (dest / ".complete").exists():
        remove_stale(parent, ".extract-")
        tmp = private_tmpdir(parent, ".extract-")
        try:
            with tarfile.open(tar_path, "r:gz") as tar:
                check_archive(tar, tar_path)
                tar.extractall(tmp, filter="data")  # a second guard: the standard library's own checks
        except (tarfile.TarError, EOFError, OSError, ValueError) as err:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EdgeCSPError(f"artifact {tar_path} is not a readable .tar.gz ({err}); copy it again") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").touch()
        shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process extracted the same archive meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise EdgeCSPError(f"artifact {tar_path} should hold one artifact directory, found {len(roots)}")
    return roots[0]


@cache
def _manifest_validator():
    import jsonschema

    schema = json.loads((Path(__file__).parent / "schemas" / "artifact-manifest.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    """Check the manifest against its schema and check that every path stays inside the artifact."""
    if not isinstance(manifest, dict):
        raise EdgeCSPError(f"{where} is not an edgecsp manifest (top level is not an object); rebuild the artifact")
    if manifest.get("schema") != SCHEMA:
        raise EdgeCSPError(f"{where} has schema {str(manifest.get('schema'))[:40]!r}; this edgecsp reads {SCHEMA}")
    error = next(iter(sorted(_manifest_validator().iter_errors(manifest), key=lambda e: list(e.path))), None)
    if error is not None:
        field = "/".join(str(p) for p in error.path) or "(top level)"
        raise EdgeCSPError(f"{where} is invalid at {field}: {error.message[:160]}; rebuild the artifact")
    for name in manifest["files"]:
        if _safe_member_name(name) is None or name == MANIFEST:
            raise EdgeCSPError(f"{where} lists an unsafe file path {name[:80]!r} (absolute, '..' or the manifest "
                               "itself); refused")
    if manifest["engine"] not in manifest["files"]:
        raise EdgeCSPError(f"{where}: engine {manifest['engine'][:80]!r} is not among the files it lists and "
                           "checksums; refused (only listed, verified files are loaded)")
    return manifest


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """Every listed file: a regular file (no link) inside ``root`` with the recorded size and sha256."""
    real_root = root.resolve()
    for name, entry in manifest["files"].items():
        f = root / name
        try:
            st = f.lstat()
        except (FileNotFoundError, NotADirectoryError):
            raise EdgeCSPError(f"artifact {root} is missing {name}; rebuild it with python -m edgecsp.compile") from None
        if not stat.S_ISREG(st.st_mode) or not f.resolve().is_relative_to(real_root):
            raise EdgeCSPError(f"artifact file {f} is not a regular file inside the artifact (a link?); refused")
        if st.st_size != entry["bytes"] or sha256_file(f) != entry["sha256"]:
            raise EdgeCSPError(f"artifact file {f} fails its sha256 check (tampered or truncated); "
                               "rebuild it with python -m edgecsp.compile")


def open_artifact(path: str | Path, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """Resolve a directory or .tar.gz artifact; check the manifest and every file's sha256."""
    path = Path(path)
    if not path.exists():
        raise EdgeCSPError(f"artifact {path} does not exist; build one with python -m edgecsp.compile --target ...")
    root = _extract(path) if path.is_file() else path
    manifest_path = root / MANIFEST
    if not manifest_path.is_file() or manifest_path.is_symlink():
        raise EdgeCSPError(f"{root} is not an edgecsp artifact (no {MANIFEST})")
    if manifest_path.stat().st_size > MAX_MANIFEST_BYTES:
        raise EdgeCSPError(f"{manifest_path} is {manifest_path.stat().st_size} bytes, too large for a manifest")
    try:
        manifest = json.loads(manifest_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise EdgeCSPError(f"{manifest_path} is corrupt ({str(err)[:120]}); rebuild the artifact") from None
    validate_manifest(manifest, manifest_path)
    if verify:
        verify_files(root, manifest)
    return root, manifest
