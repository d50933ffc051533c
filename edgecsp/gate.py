"""The accuracy gate's verdict, shared by compile, the Jetson bundle build, benchmark --accuracy,
edgecsp.load and the nightly.

An artifact's ``accuracy.status`` says how far its accuracy may be believed:

- ``passed``: measured on real validation images, within the target's AP50 tolerance of an FP32
  reference that itself detects something;
- ``accepted-drop``: measured, beyond the tolerance, kept with --allow-accuracy-drop;
- ``vacuous-reference``: the FP32 reference scores below REFERENCE_AP50_FLOOR on the data, so
  "no drop" means nothing (wrong data set, class mapping or preprocessing); kept with
  --allow-accuracy-drop;
- ``unverified``: built with --no-verify, never measured.
"""

from __future__ import annotations

import logging
from typing import Any

from edgecsp.errors import EdgeCSPError, shown

STATUSES = ("passed", "accepted-drop", "vacuous-reference", "unverified")
# Below this AP50 the reference detects (almost) nothing: a gate comparing against it is vacuous.
REFERENCE_AP50_FLOOR = 0.05

log = logging.getLogger("edgecsp")


def verdict(reference_ap50: float, drop_points: float, tolerance_points: float) -> str:
    """``passed``, ``vacuous-reference`` or ``accepted-drop`` (the last two fail the gate)."""
    if reference_ap50 < REFERENCE_AP50_FLOOR:
        return "vacuous-reference"
    return "passed" if drop_points <= tolerance_points else "accepted-drop"


def vacuous_message(reference_ap50: float, data: object) -> str:
    return (f"the FP32 reference scores AP50 {reference_ap50:.4f} on {data} (floor {REFERENCE_AP50_FLOOR}): it detects "
            "nothing on this data (wrong data set, class mapping or preprocessing?); pass the model's own validation "
            "data with --data, or --allow-accuracy-drop to keep the artifact anyway")


def check_image_count(images: int | None, option: str) -> None:
    """Zero or negative images would verify nothing and report it as a pass: refused."""
    if images is not None and (isinstance(images, bool) or not isinstance(images, int) or images < 1):
        raise EdgeCSPError(f"{option} must be a positive number of images, got {images!r}; to build without "
                           "verification say so with --no-verify")


def status_of(manifest: dict[str, Any]) -> str:
    """The manifest's accuracy status; manifests written before it existed get it from ``passed``."""
    acc = manifest.get("accuracy")
    if not isinstance(acc, dict):
        return "unverified"
    status = acc.get("status")
    if status in STATUSES:
        return str(status)
    if acc.get("images") in (None, 0):  # older edgecsp let --verify-images 0 through as a pass
        return "unverified"
    return "passed" if acc.get("passed") is True else "accepted-drop"


def warn_unless_passed(manifest: dict[str, Any], where: object) -> str:
    """One log line (not Python's two-line warning format) for an artifact whose gate did not pass."""
    status = status_of(manifest)
    if status != "passed":
        why = {"unverified": "its accuracy was never verified",
               "accepted-drop": "it was kept with --allow-accuracy-drop beyond its AP50 tolerance",
               "vacuous-reference": "its FP32 reference detected nothing on the verification data"}[status]
        log.warning("artifact %s has accuracy status %s: %s", shown(where), status, why)
    return status
