"""``edgecsp.load(artifact)``: a predictor over any artifact, whatever its backend.

It checks the artifact's checksums, opens the backend named in the manifest, and returns
detections in original image coordinates through the same pre- and postprocessing as every
other path in edgecsp.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgecsp.artifact import open_manifest
from edgecsp.backends import Runner, get_backend
from edgecsp.backends.base import run_in_static_batches
from edgecsp.data.preprocess import LetterboxInfo, letterbox, letterbox_file, resize_mode
from edgecsp.postprocess import DEFAULT_IOU, DEFAULT_SCORE, Detections, postprocess

Frame = Union[np.ndarray, str, Path]
# Frames being prepared or waiting for the engine, per engine batch: enough for the decode and
# resize threads to keep ahead of inference without holding a video in memory.
LOOKAHEAD_BATCHES = 4


class Predictor:
    def __init__(self, root: Path, manifest: dict[str, Any], runner: Runner):
        self.root, self.manifest, self.runner = root, manifest, runner
        self.input_size = int(manifest["model"]["input_size"][0])
        self.class_names: list[str] = list(manifest["model"]["class_names"])
        self.resize = resize_mode(manifest.get("preprocessing"))  # letterbox, or stretch (Darknet's default)
        self.batch = int(manifest["inputs"][0]["shape"][0]) if isinstance(manifest["inputs"][0]["shape"][0], int) else 0
        # What the engine takes: float NCHW in [0, 1], or (OpenVINO's PrePostProcessor) the
        # letterboxed uint8 NHWC frame, normalised inside the compiled model.
        self.u8_input = getattr(runner, "input_layout", "nchw-f32") == "nhwc-u8"

    def predict_batch(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed NCHW float batch -> decoded (N, K, 5 + C); splits or pads to the engine's batch."""
        if self.u8_input:  # the float contract's values are k/255: back to the frames exactly
            batch = np.ascontiguousarray((np.asarray(batch) * 255.0).round().clip(0, 255).astype(np.uint8)
                                         .transpose(0, 2, 3, 1))
        return run_in_static_batches(self.runner.run, batch, self.batch)

    def prepare(self, item: Frame) -> tuple[np.ndarray, LetterboxInfo]:
        """One frame (path or RGB uint8 array) -> (the engine's input for it, without the batch
        axis; how it was letterboxed). Paths are decoded at the reduced size the input allows."""
        if isinstance(item, (str, Path)):
            lb, info = letterbox_file(item, self.input_size, mode=self.resize)
        else:
            lb, info = letterbox(item, self.input_size, mode=self.resize)
        return (lb if self.u8_input else frame_tensor(lb)), info

    def _chunk(self, n: int) -> int:
        """Frames per engine call: the engine's static batch, else ``n`` (a dynamic batch)."""
        return self.batch or max(1, n)

    def _infer(self, tensors: list[np.ndarray]) -> np.ndarray:
        """One engine call for a chunk of prepared frames (a batch-1 engine gets a view, no stack)."""
        x = tensors[0][None] if len(tensors) == 1 else np.stack(tensors)
        return run_in_static_batches(self.runner.run, x, self.batch)

    def __call__(self, images: Sequence[Frame] | np.ndarray | str | Path,
                 score_threshold: float = DEFAULT_SCORE, iou_threshold: float = DEFAULT_IOU) -> list[Detections]:
        """RGB uint8 images (or paths) -> detections in each image's own pixel coordinates.

        A list goes to the engine in its batches: one call per static batch (or one call for a
        dynamic one); a batch-1 engine gets one call per image, without a stacked copy."""
        if isinstance(images, (str, Path)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            images = [images]
        prepared = [self.prepare(item) for item in images]
        step = self._chunk(len(prepared))
        out: list[Detections] = []
        for i in range(0, len(prepared), step):
            chunk = prepared[i:i + step]
            rows = self._infer([t for t, _ in chunk])
            out += [postprocess(r, info, score_threshold, iou_threshold) for r, (_, info) in zip(rows, chunk)]
        return out

    predict = __call__

    def stream(self, frames: Iterable[Frame], score_threshold: float = DEFAULT_SCORE, iou_threshold: float = DEFAULT_IOU,
               batch: int | None = None, workers: int = 2) -> Iterator[Detections]:
        """Detections for each frame of ``frames`` (paths, RGB arrays, video frames), in order.

        Pipelined (edgecsp.streaming): the next frames are decoded and letterboxed on ``workers``
        threads while the engine runs the current batch and the caller's thread postprocesses
        the last one. ``batch``: frames per engine call for a dynamic-batch engine (default 1, the
        lowest latency); a static-batch engine always gets its own batch size, whole."""
        from edgecsp.streaming import pipeline

        step = self.batch or int(batch or 1)
        for rows, info in pipeline(frames, self.prepare, self._infer, step, workers, LOOKAHEAD_BATCHES * step):
            yield postprocess(rows, info, score_threshold, iou_threshold)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frame_tensor(boxed: np.ndarray) -> np.ndarray:
    """One letterboxed HxWx3 uint8 frame -> the float32 CHW tensor in [0, 1] (to_tensor_batch's values)."""
    x = boxed.transpose(2, 0, 1).astype(np.float32)  # one pass: the cast writes the CHW copy
    x *= 1.0 / 255.0
    return x


def load(artifact: str | Path, trusted_keys: Any = None, require_signature: bool | None = None,
         **runner_options: Any) -> Predictor:
    """Open an artifact: checksums, manifest digest, manifest against engine, and with
    ``trusted_keys`` (public key files, see edgecsp.signing) its signature; an unsigned artifact is
    refused where ``require_signature`` (default: whenever trusted keys are given; device-wide:
    EDGECSP_TRUSTED_KEYS, EDGECSP_REQUIRE_SIGNATURE=1)."""
    from edgecsp.gate import warn_unless_passed
    from edgecsp.signing import signature_policy

    trusted, required = signature_policy(trusted_keys, require_signature)  # bad keys fail before any work
    root, typed = open_manifest(artifact)
    manifest = typed.raw
    if trusted is not None:
        check_signature(root, manifest, trusted, required)
    warn_unless_passed(manifest, artifact)
    backend = get_backend(typed.backend_name)
    backend.version()  # a missing backend library: one line with the install hint
    if backend.name == "openvino":  # frames go in as uint8, normalised inside the model (u8_input=False: float NCHW)
        runner_options.setdefault("u8_input", True)
    runner = backend.open_runner(root / typed.engine, manifest, **runner_options)
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
