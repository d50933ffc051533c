"""The nightly across a fleet of devices (docs/fleet.md).

Ray runs the work: every device joins one Ray cluster (``python -m edgecsp.worker``) with one
custom resource per target it serves; the head (``python -m edgecsp.nightly --cluster``) builds
each artifact once on a CPU worker, sends it through Ray's object store to every live device of
its target, one job per device at a time, and writes each result into the history as it
arrives. Ray and the PostgreSQL driver are the ``fleet`` extra, imported in these modules only.

What runs on devices (``device``, ``tasks``, ``edgecsp.worker``) keeps to Python 3.8 syntax:
JetPack 5 ships Python 3.8.
"""

from __future__ import annotations

from edgecsp.errors import EdgeCSPError

INSTALL_HINT = "pip install 'edgecsp[fleet]' (Ray and the PostgreSQL driver)"


def import_ray():
    """Ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError as err:
        raise EdgeCSPError(f"the fleet needs Ray ({err}); {INSTALL_HINT}") from None
    return ray
