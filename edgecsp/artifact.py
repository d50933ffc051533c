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
import os
import shutil
import stat
import tarfile
from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError, shown
from edgecsp.faults import failpoint
from edgecsp.fsutil import locked_dir, private_tmpdir, private_tmpfile, remove_stale

# The manifest's names and checks live with its type (edgecsp.manifest); re-exported here.
from edgecsp.manifest import (  # noqa: F401 - callers import these from here
    MANIFEST,
    MANIFEST_DIGEST,
    MAX_MANIFEST_BYTES,
    META_FILES,
    SCHEMA,
    SIGNATURE,
    Manifest,
    check_manifest_digest,
    validate_manifest,
    write_manifest,
)
from edgecsp.manifest import safe_member_name as _safe_member_name

# Limits on an archive before extracting it: a bomb or a junk archive is refused, not unpacked.
MAX_MEMBERS = 10_000
MAX_UNPACKED_BYTES = 8 << 30
MAX_HEADER_BYTES = 1 << 20


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

    What killed runs left beside ``final`` is removed first. An existing ``final`` that is not an
    artifact (a user's folder or file) is never replaced.
    """
    if final.is_symlink() or (final.exists() and not (final / MANIFEST).is_file()):
        raise EdgeCSPError(f"{shown(final)} exists and is not an edgecsp artifact; choose another --out or remove it")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, *_leftover_prefixes(final))
    return private_tmpdir(final.parent, f".{final.name}.partial-")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finalize(staging: Path, final: Path, manifest: dict[str, Any], tarball: bool = True,
             signing_key: Any = None) -> Path:
    """Hash every file, write the manifest, build the .tar.gz, then publish both.

    Every file is on disk (fsync) before anything is published, so a power cut leaves the old
    artifact or the new one. Publishing holds a lock on ``final``'s folder, so two compiles
    writing the same path publish one after the other (the last one wins, whole); the new
    directory replaces the old one in one atomic exchange where the kernel offers it. The old
    .tar.gz is removed before the new directory goes in: a kill between the two leaves a complete
    directory without a .tar.gz, never a directory beside another build's .tar.gz.
    """
    files = sorted(p for p in staging.rglob("*")
                   if p.is_file() and p.relative_to(staging).as_posix() not in META_FILES)
    manifest = dict(manifest, schema=SCHEMA)
    manifest["files"] = {p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                         for p in files}
    write_manifest(staging, manifest)
    if signing_key is not None:
        from edgecsp.signing import sign_artifact

        sign_artifact(staging, signing_key)
    for p in [*files, *(staging / name for name in META_FILES if (staging / name).is_file())]:
        _fsync(p)
    failpoint("artifact.manifest_written")
    tar_tmp = None
    try:
        if tarball:
            tar_tmp = _write_tarball(staging, final)
        staging.chmod(0o755)
        tar_final = final.with_name(final.name + ".tar.gz")
        with locked_dir(final.parent):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tar_final)
            old = _replace_dir(staging, final)
            failpoint("artifact.dir_published")
            if tar_tmp:
                os.replace(tar_tmp, tar_final)
                tar_tmp = None
            _fsync(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        if tar_tmp:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tar_tmp)


def _write_tarball(staging: Path, final: Path) -> Path:
    """The artifact as a .tar.gz temporary beside ``final``, on disk, ready to be renamed."""
    tar_tmp = private_tmpfile(final.parent, f".{final.name}.tar.")
    try:
        with tarfile.open(tar_tmp, "w:gz") as tar:
            for p in sorted(staging.rglob("*")):
                if p.is_file():
                    tar.add(p, arcname=f"{final.name}/{p.relative_to(staging).as_posix()}")
        _fsync(tar_tmp)
        # mkdtemp/mkstemp create owner-only entries; an artifact is meant to be shared and deployed.
        os.chmod(tar_tmp, 0o644)
        failpoint("artifact.tarball_written")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tar_tmp)
        raise
    return tar_tmp


def publish(staging: Path, out: Path, manifest: dict[str, Any], signing_key: Any = None) -> tuple[Path, Manifest]:
    """The compile's last step (a host compile and an on-device build from a bundle alike): hash
    every file, write (and sign) the manifest, move the artifact into place, and read it back."""
    final = finalize(staging, out, manifest, signing_key=signing_key)
    return final, Manifest.read(final)


def _replace_dir(new: Path, final: Path) -> Path | None:
    """Put directory ``new`` at ``final``; return where the old one went (to be removed), if any.

    Linux: one renameat2(RENAME_EXCHANGE), so ``final`` is never missing and never half of
    either. Elsewhere (or on a file system without it): the old one is moved aside first.
    """
    if not final.exists():
        os.replace(new, final)
        return None
    if _exchange(new, final):
        return new  # now holds the old artifact
    old = private_tmpdir(final.parent, f".{final.name}.old-")
    os.replace(final, old / final.name)
    os.replace(new, final)
    return old


def _exchange(a: Path, b: Path) -> bool:
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # glibc < 2.28
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


# -- reading ----------------------------------------------------------------------------------


class _ArchiveRefused(tarfile.TarError):
    pass


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers before tarfile reads them into memory (a few
    compressed bytes can declare gigabytes of header) and sparse members."""

    def _proc_member(self, tarfile_):
        if self.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                         tarfile.GNUTYPE_LONGLINK) and self.size > MAX_HEADER_BYTES:
            raise _ArchiveRefused(f"an extended header of {self.size} bytes (limit {MAX_HEADER_BYTES})")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _ArchiveRefused(f"a sparse member ({self.name!r})")
        return super()._proc_member(tarfile_)


def check_archive(tar: tarfile.TarFile, tar_path: Path) -> None:
    """Refuse an archive holding anything but regular files and directories inside one root."""
    total, roots, count = 0, set(), 0
    for m in tar:  # one member at a time: a million-entry archive is refused at entry 10,001
        count += 1
        if count > MAX_MEMBERS:
            raise EdgeCSPError(f"artifact {shown(tar_path)} has over {MAX_MEMBERS} entries; it is not an edgecsp "
                               "artifact")
        name = _safe_member_name(m.name)
        if name is None:
            raise EdgeCSPError(f"artifact {shown(tar_path)} has an unsafe path {m.name[:80]!r} (absolute or '..'); "
                               "refused, nothing extracted")
        kind = ("symlink" if m.issym() else "hard link" if m.islnk() else "device file" if m.isdev()
                else "fifo" if m.isfifo() else None if m.isfile() or m.isdir() else "special entry")
        if kind:
            raise EdgeCSPError(f"artifact {shown(tar_path)} holds a {kind} ({m.name[:80]!r}); artifacts hold only "
                               "regular files: refused, nothing extracted")
        roots.add(name.split("/", 1)[0])
        total += m.size
        if total > MAX_UNPACKED_BYTES:
            raise EdgeCSPError(f"artifact {shown(tar_path)} unpacks to over {MAX_UNPACKED_BYTES / 2**30:.0f} GiB; "
                               "refused")
    if len(roots) != 1:
        raise EdgeCSPError(f"artifact {shown(tar_path)} should hold one artifact directory, found {len(roots)}")


def _extract(tar_path: Path) -> Path:
    """Unpack a .tar.gz artifact once into the cache (keyed by the tarball's hash).

    A complete extraction is never removed: a process extracting the same archive at the same
    time discards its own copy instead, so a reader's files never vanish under it.
    """
    from edgecsp.paths import cache_dir

    try:
        key = sha256_file(tar_path)[:16]
    except OSError as err:
        raise EdgeCSPError(f"cannot read artifact {shown(tar_path)} ({err.strerror}); check the file") from None
    parent, tmp = Path("the cache"), None
    try:
        parent = cache_dir() / "artifacts"
        dest = parent / key
        if not (dest / ".complete").exists():
            remove_stale(parent, ".extract-")
            tmp = private_tmpdir(parent, ".extract-")
    except OSError as err:  # an unwritable or full cache: the user's to fix, one line
        raise EdgeCSPError(f"the artifact cache {shown(err.filename or parent)} cannot be used to unpack "
                           f"{shown(tar_path)} ({err.strerror}); set EDGECSP_CACHE_DIR to a writable folder") from None
    if tmp is not None:
        _unpack(tar_path, tmp, dest)
    roots = [p for p in dest.iterdir() if p.is_dir()]
    if len(roots) != 1:
        raise EdgeCSPError(f"artifact {shown(tar_path)} should hold one artifact directory, found {len(roots)}")
    return roots[0]


def _unpack(tar_path: Path, tmp: Path, dest: Path) -> None:
    """Check and extract the archive into ``tmp``, then publish it at ``dest`` (or keep another
    process's copy already there)."""
    try:
        with tarfile.open(tar_path, "r:gz", tarinfo=_BoundedTarInfo) as tar:
            check_archive(tar, tar_path)
            if hasattr(tarfile, "data_filter"):  # Python 3.12, 3.11.4, 3.8.17+
                tar.extractall(tmp, filter="data")  # a second guard: the standard library's own checks
            else:  # an older 3.8 (JetPack 5): check_archive above is the guard
                tar.extractall(tmp)
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        why = str(err)[:160] if isinstance(err, _ArchiveRefused) else f"{type(err).__name__}: {str(err)[:120]}"
        raise EdgeCSPError(f"artifact {shown(tar_path)} is not a readable edgecsp .tar.gz ({shown(why)}); "
                           "copy it again") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entries = list(tmp.iterdir())
    if len(entries) != 1 or not entries[0].is_dir() or not (entries[0] / MANIFEST).is_file():
        shutil.rmtree(tmp, ignore_errors=True)  # nothing of a refused archive stays in the cache
        raise EdgeCSPError(f"artifact {shown(tar_path)} holds no artifact directory with a {MANIFEST} (an archive "
                           "inside an archive?); refused, nothing kept")
    (tmp / ".complete").touch()
    if dest.exists() and not (dest / ".complete").exists():
        shutil.rmtree(dest, ignore_errors=True)  # left by an older edgecsp that renamed before marking
    try:
        os.rename(tmp, dest)
    except OSError:  # another process published the same extraction meanwhile: use theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _inside(path: Path, root: Path) -> bool:
    """Path.is_relative_to (Python 3.9+)."""
    return path == root or root in path.parents


def verify_files(root: Path, manifest: dict[str, Any]) -> None:
    """The folder holds exactly the listed files, each a regular file (no link) inside ``root``
    with the recorded size and sha256. An unlisted file is refused too: a backend may read files
    beside its engine by itself (ONNX external data, an OpenVINO .bin), and only verified ones may
    be there to read."""
    real_root = root.resolve()
    listed = manifest["files"]
    extra = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if not p.is_dir() and p.relative_to(root).as_posix() not in listed
                   and p.relative_to(root).as_posix() not in META_FILES)
    if extra:
        raise EdgeCSPError(f"artifact {shown(root)} holds files its manifest does not list ({shown(', '.join(extra[:3]))}"
                           f"{' ...' if len(extra) > 3 else ''}); refused: remove them or rebuild the artifact")
    for name, entry in listed.items():
        f = root / name
        try:
            st = f.lstat()
            if not stat.S_ISREG(st.st_mode) or not _inside(f.resolve(), real_root):
                raise EdgeCSPError(f"artifact file {shown(f)} is not a regular file inside the artifact (a link?); "
                                   "refused")
            intact = st.st_size == entry["bytes"] and sha256_file(f) == entry["sha256"]
        except (FileNotFoundError, NotADirectoryError):
            raise EdgeCSPError(f"artifact {shown(root)} is missing {shown(name)}; rebuild it with "
                               "python -m edgecsp.compile") from None
        except OSError as err:
            raise EdgeCSPError(f"artifact file {shown(f)} cannot be read ({err.strerror}); check it or rebuild the "
                               "artifact") from None
        if not intact:
            raise EdgeCSPError(f"artifact file {shown(f)} fails its sha256 check (tampered or truncated); "
                               "rebuild it with python -m edgecsp.compile")


def open_artifact(path: str | Path, verify: bool = True, bind: bool = True) -> tuple[Path, dict[str, Any]]:
    """``open_manifest`` with the manifest as its JSON object (what most callers index)."""
    root, manifest = open_manifest(path, verify, bind)
    return root, manifest.raw


def open_manifest(path: str | Path, verify: bool = True, bind: bool = True) -> tuple[Path, Manifest]:
    """Resolve a directory or .tar.gz artifact; check the manifest and every file's sha256, and
    (``bind``) the manifest against its engine (edgecsp.binding).

    When the directory is replaced by a new build while it is being checked (a nightly rebuild,
    a compile beside a benchmark), the check starts again on the new one instead of failing.
    """
    path = Path(path)
    for attempt in range(3):
        before = _identity(path)
        try:
            return _open_artifact(path, verify, bind)
        except EdgeCSPError:
            if attempt == 2 or not _replaced_since(path, before):
                raise
    raise AssertionError("unreachable")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
        return st.st_dev, st.st_ino
    except OSError:
        return None


def _replaced_since(path: Path, before: tuple[int, int] | None) -> bool:
    import time

    time.sleep(0.05)  # a publish in flight finishes its swap
    now = _identity(path)
    return now is not None and now != before


def _open_artifact(path: Path, verify: bool, bind: bool = True) -> tuple[Path, Manifest]:
    if not path.exists():
        raise EdgeCSPError(f"artifact {shown(path)} does not exist; build one with python -m edgecsp.compile --target ...")
    if not path.is_file():
        return _check_open(path, verify, bind)
    root = _extract(path)
    try:
        return _check_open(root, verify, bind)
    except EdgeCSPError as err:
        # A refused archive leaves no extraction behind, and the message names the archive, not the cache.
        shutil.rmtree(root.parent, ignore_errors=True)
        raise EdgeCSPError(str(err).replace(str(root), f"{path}:{root.name}")) from None


def _check_open(root: Path, verify: bool, bind: bool) -> tuple[Path, Manifest]:
    manifest = Manifest.read(root)  # digest, JSON, schema, paths
    if verify:
        verify_files(root, manifest.raw)
    if verify and bind:
        from edgecsp.binding import check_binding

        check_binding(root, manifest.raw)  # the manifest tells the truth about its (verified) engine
    return root, manifest
