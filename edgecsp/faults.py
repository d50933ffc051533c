"""Named fault-injection points, inert unless ``EDGECSP_FAILPOINT`` names one.

The reliability tests kill or break a real compile at exact moments (mid-calibration, after the
engine is written, between writing the manifest and publishing the artifact) by running it with
``EDGECSP_FAILPOINT=<point>:<action>``; actions: ``kill`` (SIGKILL, as an OOM killer or a power
cut would), ``segv`` (a native crash), ``enospc`` (the disk fills up here), ``raise`` (a bug).
Production runs never set the variable; a check costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "EDGECSP_FAILPOINT"

# Every point the code declares, so a typo in a test's variable is caught rather than ignored.
POINTS = {
    "calibration.image",  # after each calibration image is read
    "build.engine_written",  # the backend has written its engine into the staging directory
    "cache.engine_copied",  # an engine cache entry is complete but not yet published
    "artifact.manifest_written",  # manifest.json is in the staging directory
    "artifact.tarball_written",  # the .tar.gz temporary is complete
    "artifact.dir_published",  # the directory is in place, the .tar.gz not yet
    "benchmark.measure",  # a benchmark is about to measure its first scenario
}


def failpoint(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, action = spec.partition(":")
    if point not in POINTS:
        raise ValueError(f"{ENV}={spec!r} names no fail point; known: {', '.join(sorted(POINTS))}")
    if point != name:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<fail point {name}>")
    elif action == "raise":
        raise RuntimeError(f"fail point {name}")
    else:
        raise ValueError(f"{ENV}={spec!r}: action must be kill, segv, enospc or raise")
