"""Crash-safe file system steps shared by compile, the caches and the artifact code.

The rules they follow: write into a private temporary beside the destination and rename it into
place (a reader sees the old file or the new one, never half of one); name every temporary with
the writing process's pid, so the next run can remove what a killed run left behind; serialize
the publishing of one destination across processes with a lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgecsp.errors import EdgeCSPError

# OS errors that mean "this location cannot take the write", i.e. the user's environment, not a bug.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def write_problem(err: OSError, where: str | Path | None = None) -> EdgeCSPError | None:
    """A one-line EdgeCSPError for an OS error that means the output location is unusable."""
    if err.errno not in WRITE_ERRNOS:
        return None
    place = err.filename or where or "the output location"
    advice = {errno.ENOSPC: "free some disk space or write elsewhere (--out, EDGECSP_CACHE_DIR, TMPDIR)",
              errno.EDQUOT: "the disk quota is used up; free space or write elsewhere",
              errno.EFBIG: "a file size limit stopped the write (ulimit -f); raise it or write elsewhere",
              errno.EROFS: "the file system is read-only; choose a writable location (--out, EDGECSP_CACHE_DIR)"}
    return EdgeCSPError(f"cannot write {place}: {os.strerror(err.errno or 0)}; "
                        f"{advice.get(err.errno or 0, 'check its permissions or choose a writable location')}")


def private_tmpdir(parent: Path, prefix: str) -> Path:
    """A new directory ``parent/<prefix><pid>-XXXX`` (same file system as its destination)."""
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Remove ``<prefix><pid>-*`` entries in ``parent`` whose writing process is gone (killed)."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid_text = entry.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a pid-named temporary and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def publish_dir_once(tmp: Path, dest: Path) -> bool:
    """Rename a finished ``tmp`` directory to ``dest`` unless another process got there first.

    For content-addressed cache entries: the same key means the same content, so the first
    complete entry wins and a late one is discarded. Returns whether ``tmp`` became ``dest``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, dest)  # fails on an existing non-empty dest instead of nesting into it
        return True
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False


@contextlib.contextmanager
def locked_dir(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on directory ``path`` itself (no lock file left behind).

    The kernel drops it when the holder exits or is killed, so a crash never leaves it stuck.
    """
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
