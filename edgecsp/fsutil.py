"""Crash-safe file system steps shared by compile, the caches and the artifact code.

The rules they follow: write into a private temporary beside the destination and rename it into
place (a reader sees the old file or the new one, never half of one); hold every temporary under
an flock while its writer lives (and name it with the writer's pid), so the next run removes what
a killed run left behind and nothing a live one, here or in another container, is using;
serialize the publishing of one destination across processes with a lock on its folder.
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

from edgecsp.errors import EdgeCSPError, shown

# What to do about an OS error on a path, by errno.
_ADVICE = {
    errno.ENOSPC: "free some disk space or write elsewhere (--out, EDGECSP_CACHE_DIR, TMPDIR)",
    errno.EDQUOT: "the disk quota is used up; free space or write elsewhere",
    errno.EFBIG: "a file size limit stopped the write (ulimit -f); raise it or write elsewhere",
    errno.EROFS: "the file system is read-only; choose a writable location (--out, EDGECSP_CACHE_DIR)",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.EEXIST: "a file is in the way; remove it or choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder; fix the path",
    errno.EISDIR: "it is a folder; pass a file",
    errno.ENOENT: "check the path",
}


def os_problem(err: OSError, where: str | Path | None = None) -> EdgeCSPError | None:
    """A one-line EdgeCSPError for an OS error about a path (full disk, permissions, a bad path):
    the user's environment to fix, not a bug. None for errors that name no path and no known cause."""
    if err.errno is None or (err.errno not in _ADVICE and err.filename is None):
        return None
    place = shown(err.filename or where or "the output location")
    return EdgeCSPError(f"{place}: {os.strerror(err.errno)}; {_ADVICE.get(err.errno, 'check the path')}")


# Temporaries this process is writing: path -> an open fd holding an exclusive flock on it. The
# lock, not the pid in the name, is what marks a temporary as alive: it works across containers
# and hosts sharing a folder (whose pids mean nothing here) and the kernel drops it on any death.
_HELD: dict[str, int] = {}
_MIN_AGE_S = 1.0  # a temporary younger than this may not be locked yet by its creator


def _hold(path: Path) -> None:
    for held, fd in list(_HELD.items()):  # temporaries renamed into place or removed: let go
        if not os.path.lexists(held):
            os.close(_HELD.pop(held))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks: the temporary is then never judged stale
        os.close(fd)
        return
    _HELD[str(path)] = fd


def private_tmpdir(parent: Path, prefix: str) -> Path:
    """A new directory ``parent/<prefix><pid>-XXXX`` (same file system as its destination), held
    locked by this process until it is renamed or removed."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    _hold(path)
    return path


def private_tmpfile(parent: Path, prefix: str) -> Path:
    """A new empty file ``parent/<prefix><pid>-XXXX``, held locked like ``private_tmpdir``."""
    parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    os.close(fd)
    _hold(Path(name))
    return Path(name)


def _pid_alive(name: str, prefix: str) -> bool:
    """Whether the pid in a temporary's name is a live process here (a second, local check)."""
    pid = name[len(prefix):].split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _unlocked(entry: Path) -> int | None:
    """An fd holding ``entry``'s lock when nobody else holds it, else None (also when the file
    system cannot lock: then nothing is ever removed, which only leaks a temporary)."""
    try:
        fd = os.open(entry, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:  # held: its writer is alive, wherever it runs
        os.close(fd)
        return None


def remove_stale(parent: Path, *prefixes: str) -> list[Path]:
    """Remove ``<prefix>*`` temporaries in ``parent`` that no live process holds (killed runs')."""
    import time

    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        prefix = next((p for p in prefixes if entry.name.startswith(p)), None)
        if prefix is None or str(entry) in _HELD or _pid_alive(entry.name, prefix):
            continue
        try:
            if time.time() - entry.lstat().st_mtime < _MIN_AGE_S:
                continue
        except OSError:
            continue
        fd = _unlocked(entry)
        if fd is None:
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
        finally:
            os.close(fd)
        removed.append(entry)
    return removed


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` via a pid-named temporary, fsync and a rename: readers see the
    old file or the new one. The file gets the usual permissions (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        return path
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
