"""Video files and cameras as frames, and annotated frames back to a video file (OpenCV: its
wheel carries FFmpeg for files and V4L2 for /dev/video* cameras).

Frames are HxWx3 uint8 RGB arrays, like every image in edgecsp.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from edgecsp.errors import EdgeCSPError

PathLike = Union[str, Path]
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
_CAMERA = re.compile(r"^/dev/video(\d+)$")


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """File descriptor 2 to /dev/null for a moment: native libraries' log lines, not Python's."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _cv2() -> Any:
    from edgecsp.backends.base import import_library

    return import_library("cv2", "OpenCV (video decoding)", "pip install opencv-python-headless")


def is_camera(source: PathLike) -> bool:
    return bool(_CAMERA.match(str(source)))


def is_video(path: PathLike) -> bool:
    return is_camera(path) or Path(path).suffix.lower() in VIDEO_SUFFIXES


class VideoSource:
    """A video file or camera, opened; iterate for RGB frames. ``fps`` and ``frame_count`` are the
    container's figures (0 where it has none, e.g. a camera)."""

    def __init__(self, source: PathLike):
        cv2 = _cv2()
        text = str(source)
        camera = _CAMERA.match(text)
        if not camera and not Path(text).is_file():
            raise EdgeCSPError(f"video file not found: {text}; check the path")
        # cameras by their V4L2 index, which is what OpenCV opens without a GStreamer pipeline
        with _native_stderr_quiet():  # FFmpeg prints its own lines for a file it cannot read
            self.capture = cv2.VideoCapture(int(camera.group(1)) if camera else text)
        if not self.capture.isOpened():
            raise EdgeCSPError(f"cannot open video {text} (not a video OpenCV's FFmpeg/V4L2 can read, or the "
                               "camera is busy)")
        self.source = text
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = max(0, int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
        self.width = int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        self.height = int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self._cv2 = cv2

    def read(self) -> np.ndarray | None:
        """The next frame (RGB), or None at the end."""
        ok, frame = self.capture.read()
        if not ok or frame is None:
            return None
        return self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frames(source: PathLike) -> Iterator[np.ndarray]:
    """The RGB frames of a video file or camera, closed at the end (or when the caller stops)."""
    with VideoSource(source) as video:
        yield from video


class VideoWriter:
    """Writes RGB frames to an .mp4 (MPEG-4 Part 2, which every OpenCV wheel encodes) or .avi (MJPG)."""

    def __init__(self, path: PathLike, fps: float, width: int, height: int):
        cv2 = _cv2()
        self.path = Path(path)
        codec = "MJPG" if self.path.suffix.lower() == ".avi" else "mp4v"
        self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), float(fps or 25.0),
                                      (int(width), int(height)))
        if not self.writer.isOpened():
            raise EdgeCSPError(f"cannot write video {self.path}; use an .mp4 or .avi name in a writable folder")
        self._cv2 = cv2

    def write(self, frame: np.ndarray) -> None:
        self.writer.write(self._cv2.cvtColor(np.ascontiguousarray(frame), self._cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self.writer.release()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
