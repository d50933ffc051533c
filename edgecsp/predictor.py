"""``edgecsp.load(artifact)``: a predictor over any artifact, whatever its backend.

It checks the artifact's checksums, opens the backend named in the manifest, and returns
detections in original image coordinates through the same pre- and postprocessing as every
other path in edgecsp.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgecsp.artifact import open_artifact
from edgecsp.backends import Runner, get_backend
from edgecsp.backends.base import run_in_static_batches
from edgecsp.data.preprocess import letterbox, load_image_rgb, resize_mode, to_tensor_batch
from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE, Detections, postprocess


class Predictor:
    def __init__(self, root: Path, manifest: dict[str, Any], runner: Runner):
        self.root, self.manifest, self.runner = root, manifest, runner
        self.input_size = int(manifest["model"]["input_size"][0])
        self.class_names: list[str] = list(manifest["model"]["class_names"])
        self.resize = resize_mode(manifest.get("preprocessing"))  # letterbox, or stretch (Darknet's default)
        self.batch = int(manifest["inputs"][0]["shape"][0]) if isinstance(manifest["inputs"][0]["shape"][0], int) else 0

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed NCHW batch -> decoded (N, K, 5 + C); splits or pads to the engine's batch."""
        return run_in_static_batches(self.runner.run, batch, self.batch)

    def __call__(self, images: Sequence[np.ndarray | str | Path] | np.ndarray | str | Path,
                 score_threshold: float = DEFAULT_SCORE, iou_threshold: float = DEFAULT_IOU) -> list[Detections]:
        """RGB uint8 images (or paths) -> detections in each image's own pixel coordinates."""
        if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        boxed, infos = [], []
        for item in images:
            image = load_image_rgb(item) if isinstance(item, (str, Path)) else item
            lb, info = letterbox(image, self.input_size, mode=self.resize)
            boxed.append(lb)
            infos.append(info)
        out = self.predict_batch(to_tensor_batch(boxed))
        return [postprocess(rows, info, score_threshold, iou_threshold) for rows, info in zip(out, infos)]

    predict = __call__

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(artifact: str | Path, trusted_keys: Any = None, require_signature: bool | None = None,
         **runner_options: Any) -> Predictor:
    """Open an artifact: checksums, manifest digest, manifest against engine, and with
    ``trusted_keys`` (public key files, see edgecsp.signing) its signature; an unsigned artifact is
    refused where ``require_signature`` (default: whenever trusted keys are given; device-wide:
    EDGECSP_TRUSTED_KEYS, EDGECSP_REQUIRE_SIGNATURE=1)."""
    from edgecsp.gate import warn_unless_passed
    from edgecsp.signing import signature_policy

    trusted, required = signature_policy(trusted_keys, require_signature)  # bad keys fail before any work
    root, manifest = open_artifact(artifact)
    if trusted is not None:
        check_signature(root, manifest, trusted, required)
    warn_unless_passed(manifest, artifact)
    backend = get_backend(manifest["backend"]["name"])
    backend.version()  # a missing backend library: one line with the install hint
    runner = backend.open_runner(root / manifest["engine"], manifest, **runner_options)
    return Predictor(root, manifest, runner)


def check_signature(root: Path, manifest: dict[str, Any], trusted: dict[str, Any], required: bool) -> str | None:
    """The signing key's id; an unsigned artifact is refused when ``required``, else logged."""
    import json
    import logging

    from edgecsp.artifact import MANIFEST, SIGNATURE
    from edgecsp.errors import EdgeCSPError
    from edgecsp.signing import verify_signature

    if not required and not (root / SIGNATURE).exists():
        logging.getLogger("edgecsp").warning("artifact %s is not signed", root)
        return None
    try:
        raw = (root / MANIFEST).read_bytes()
        same = json.loads(raw) == manifest
    except (OSError, ValueError):
        same = False
    if not same:  # replaced between the checks and now: what is verified must be what was checked
        raise EdgeCSPError(f"artifact {root} changed while it was being opened; refused")
    return verify_signature(root, trusted, raw)
