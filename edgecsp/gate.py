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

Every path measures into one ``GateResult`` (compile against FP32 PyTorch, the Jetson bundle on
the device against the FP32 ONNX, ``benchmark --accuracy``); its JSON keeps the layout each
path always wrote (``to_manifest``), and ``from_manifest`` reads any of them back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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


METRICS = ("AP", "AP50", "AP75")
# Where each path's JSON keeps the two measurements: the compile's manifest (reference, artifact),
# the on-device check (reference_fp32_onnx, engine).
LAYOUTS = {"compile": ("reference", "artifact"), "device": ("reference_fp32_onnx", "engine")}


def _points(reference: float, measured: float) -> float:
    return round((reference - measured) * 100, 3)


@dataclass(frozen=True)
class GateResult:
    """One accuracy check: a candidate's AP against a reference's on the same images."""

    status: str  # one of STATUSES
    tolerance_points: float  # the target's max AP50 drop
    reference: dict[str, float] | None = None  # AP, AP50, AP75 (None: unverified)
    candidate: dict[str, float] | None = None
    dataset: str | None = None
    images: int | None = None
    layout: str = "compile"  # the JSON layout it came from and goes back to (LAYOUTS)
    extra: dict[str, Any] = field(default_factory=dict)  # what one path adds (host_models, evaluator)

    @classmethod
    def measure(cls, reference: dict[str, Any], candidate: dict[str, Any], tolerance_points: float,
                dataset: object, images: int | None, layout: str = "compile", **extra: Any) -> GateResult:
        """The verdict on two AP measurements (edgecsp.coco_eval's or cocoap's dicts)."""
        ref = {k: reference[k] for k in METRICS if k in reference}
        cand = {k: candidate[k] for k in METRICS if k in candidate}
        status = verdict(ref["AP50"], _points(ref["AP50"], cand["AP50"]), tolerance_points)
        return cls(status, float(tolerance_points), ref, cand, str(dataset), images, layout, dict(extra))

    @classmethod
    def unverified(cls, tolerance_points: float, layout: str = "compile") -> GateResult:
        return cls("unverified", float(tolerance_points), layout=layout)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def ap50_drop_points(self) -> float | None:
        if not self.reference or not self.candidate:
            return None
        return _points(self.reference["AP50"], self.candidate["AP50"])

    @property
    def ap_drop_points(self) -> float | None:
        if not self.reference or not self.candidate or "AP" not in self.candidate:
            return None
        return _points(self.reference["AP"], self.candidate["AP"])

    def with_tolerance(self, tolerance_points: float) -> GateResult:
        """The same measurement judged against another tolerance (a reused check, a changed profile)."""
        if self.reference is None or self.candidate is None:
            return GateResult(self.status, float(tolerance_points), layout=self.layout, extra=self.extra)
        return GateResult.measure(self.reference, self.candidate, tolerance_points, self.dataset, self.images,
                                  self.layout, **self.extra)

    def enforce(self, allow_drop: bool, data: object, drop_message: str) -> None:
        """Raise unless the gate passed (or the drop is allowed): ``drop_message`` for a drop, the
        vacuous-reference message for a reference that detects nothing."""
        if self.status in ("passed", "unverified") or allow_drop:
            return
        if self.status == "vacuous-reference":
            raise EdgeCSPError(vacuous_message((self.reference or {}).get("AP50", 0.0), data))
        raise EdgeCSPError(drop_message)

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``accuracy`` (or ``accuracy.device``) object, in its path's layout."""
        if self.reference is None or self.candidate is None:
            return {"status": self.status, "dataset": self.dataset, "images": self.images, "passed": False,
                    "tolerance_points": self.tolerance_points, **self.extra}
        ref_key, cand_key = LAYOUTS[self.layout]
        out: dict[str, Any] = {"status": self.status, "dataset": self.dataset, "images": self.images}
        out.update(self.extra)
        out.update({ref_key: dict(self.reference), cand_key: dict(self.candidate),
                    "ap50_drop_points": self.ap50_drop_points, "tolerance_points": self.tolerance_points,
                    "passed": self.passed})
        return out

    def to_report(self) -> dict[str, Any]:
        """The benchmark report's ``accuracy``: the candidate's AP at the top, the reference beside it."""
        return {"dataset": self.dataset, "images": self.images, **(self.candidate or {}),
                "reference": dict(self.reference or {}), "ap_drop_points": self.ap_drop_points,
                "ap50_drop_points": self.ap50_drop_points, "tolerance_points": self.tolerance_points,
                "status": self.status, "passed": self.passed}

    @classmethod
    def from_manifest(cls, accuracy: Any) -> GateResult:
        """Any of the layouts above, and manifests written before ``status`` existed."""
        if not isinstance(accuracy, dict):
            return cls.unverified(1.0)
        status = status_of({"accuracy": accuracy})
        layout = next((name for name, (r, c) in LAYOUTS.items() if isinstance(accuracy.get(r), dict)
                       and isinstance(accuracy.get(c), dict)), None)
        known = {"status", "dataset", "images", "passed", "tolerance_points", "ap50_drop_points", "device"}
        if layout is None:
            extra = {k: v for k, v in accuracy.items() if k not in known}
            return cls(status, float(accuracy.get("tolerance_points") or 1.0), dataset=accuracy.get("dataset"),
                       images=accuracy.get("images"), extra=extra)
        ref_key, cand_key = LAYOUTS[layout]
        extra = {k: v for k, v in accuracy.items() if k not in known | {ref_key, cand_key}}
        return cls(status, float(accuracy.get("tolerance_points") or 1.0), dict(accuracy[ref_key]),
                   dict(accuracy[cand_key]), accuracy.get("dataset"), accuracy.get("images"), layout, extra)


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
