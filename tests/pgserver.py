"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temporary folder, 127.0.0.1 on a
free port, trust authentication. Debian's server binaries refuse to run as root, so as root they
run as the ``postgres`` user (created by the postgresql package)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return versions[-1] if versions else None


def missing() -> str | None:
    """Why no server can start here, or None."""
    for name in ("initdb", "pg_ctl"):
        if pg_bin(name) is None:
            return f"PostgreSQL's {name} is not installed (apt-get install postgresql)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root needs runuser to start PostgreSQL as the postgres user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver is not installed (pip install 'edgecsp[fleet]')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres(port: int | None = None) -> Iterator[str]:
    """Start a server; yields its SQLAlchemy URL; stops it and deletes its files."""
    port = port or free_port()
    root = Path(tempfile.mkdtemp(prefix="edgecsp-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    try:
        subprocess.run(as_user + [str(pg_bin("initdb")), "-D", str(data), "-U", "edgecsp", "--auth=trust",
                                  "--no-sync", "-E", "UTF8"], check=True, **out)
        subprocess.run(as_user + [str(pg_bin("pg_ctl")), "-D", str(data), "-l", str(root / "server.log"), "-w",
                                  "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                                  "start"], check=True, **out)
        try:
            yield f"postgresql+psycopg://edgecsp@127.0.0.1:{port}/postgres"
        finally:
            subprocess.run(as_user + [str(pg_bin("pg_ctl")), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except subprocess.CalledProcessError as err:
        raise RuntimeError(f"PostgreSQL did not start: {err.stdout}") from None
    finally:
        shutil.rmtree(root, ignore_errors=True)
