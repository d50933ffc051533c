"""detector.stream and detector(list) (edgecsp.predictor, edgecsp.streaming) on real engines:
order kept, the same detections as one image at a time, whole batches to a batch engine, errors
raised at their frame, video frames counted; OpenVINO's in-model normalisation (PrePostProcessor)
against the numpy-preprocessed path."""

from __future__ import annotations

import numpy as np
import pytest

import edgecsp
from edgecsp.errors import EdgeCSPError


def _images(shapes_small, n):
    return sorted((shapes_small["val"] / "images").iterdir())[:n]


def _same(a, b) -> bool:
    return (len(a) == len(b) and np.allclose(a.boxes, b.boxes, atol=1e-3) and np.array_equal(a.labels, b.labels)
            and np.allclose(a.scores, b.scores, atol=1e-5))


class _Spy:
    """Records the batch shape of every engine call, then calls the real runner."""

    def __init__(self, runner):
        self.runner, self.calls = runner, []
        self.real = runner.run
        runner.run = self

    def __call__(self, batch):
        self.calls.append(tuple(batch.shape))
        return self.real(batch)


@pytest.mark.parametrize("which", ["ov_artifact", "ort_artifact"])
def test_stream_keeps_order_and_matches_one_at_a_time(request, shapes_small, which):
    paths = _images(shapes_small, 8)
    # paths and arrays alike (a path may be decoded at reduced size, so each is compared with itself)
    mixed = [p if i % 2 else edgecsp.data.load_image_rgb(p) for i, p in enumerate(paths)]
    with edgecsp.load(request.getfixturevalue(which)) as detector:
        single = [detector(item)[0] for item in mixed]
        streamed = list(detector.stream(iter(mixed), workers=3))
        listed = detector(mixed)
    assert len(streamed) == len(listed) == len(paths)
    assert sum(len(d) for d in single) > 0
    assert all(_same(a, b) for a, b in zip(single, streamed))
    assert all(_same(a, b) for a, b in zip(single, listed))


def test_batch_one_engine_gets_one_call_per_image_without_stacking(ov_artifact, shapes_small):
    paths = _images(shapes_small, 5)
    with edgecsp.load(ov_artifact) as detector:
        spy = _Spy(detector.runner)
        detector(paths)
        list(detector.stream(paths))
    assert spy.calls == [(1, 320, 320, 3)] * 10  # uint8 NHWC frames: normalised inside the model


@pytest.fixture(scope="module")
def ort_batch4(tmp_path_factory, shapes_small):
    from edgecsp.pipeline import CompileOptions, compile_artifact

    out, _ = compile_artifact(CompileOptions(target="onnxruntime", precision="fp32", data=shapes_small["val"],
                                             out=tmp_path_factory.mktemp("b4") / "art", batch=4, verify_images=4),
                              progress=lambda line: None)
    return out


def test_batch_engine_gets_whole_batches(ort_batch4, shapes_small):
    paths = _images(shapes_small, 10)
    with edgecsp.load(ort_batch4) as detector:
        assert detector.batch == 4
        single = [detector(p)[0] for p in paths]
        spy = _Spy(detector.runner)
        listed = detector(paths)
        assert spy.calls == [(4, 3, 320, 320)] * 3  # 4 + 4 + 2 padded: never 10 single calls
        spy.calls.clear()
        streamed = list(detector.stream(paths, batch=1))  # a static batch wins over the stream's
        assert spy.calls == [(4, 3, 320, 320)] * 3
    assert all(_same(a, b) for a, b in zip(single, listed))
    assert all(_same(a, b) for a, b in zip(single, streamed))


def test_errors_are_raised_at_their_frame_and_the_runner_is_free_after(ort_artifact, shapes_small, tmp_path):
    paths = _images(shapes_small, 6)
    with edgecsp.load(ort_artifact) as detector:
        got = []
        with pytest.raises(EdgeCSPError, match="image file not found"):
            got.extend(detector.stream(paths[:3] + [tmp_path / "missing.jpg"] + paths[3:]))
        assert len(got) == 3

        def broken():
            yield paths[0]
            raise ValueError("camera unplugged")

        with pytest.raises(ValueError, match="camera unplugged"):
            list(detector.stream(broken()))
        early = detector.stream(paths)
        next(early)
        early.close()  # stops the threads; the engine is free for the next call
        assert len(detector(paths)) == len(paths)


def test_stream_over_video_frames(ov_artifact, shapes_small, tmp_path):
    cv2 = pytest.importorskip("cv2")
    from edgecsp.video import VideoSource, frames

    images = [edgecsp.data.load_image_rgb(p) for p in _images(shapes_small, 4)]
    path = tmp_path / "clip.avi"  # MJPG: every OpenCV build writes it
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (160, 120))
    for i in range(9):
        writer.write(cv2.resize(images[i % 4], (160, 120))[..., ::-1].copy())
    writer.release()
    with VideoSource(path) as v:
        assert (v.width, v.height) == (160, 120)
        decoded = list(v)
    assert len(decoded) == 9 and decoded[0].shape == (120, 160, 3)
    with edgecsp.load(ov_artifact) as detector:
        streamed = list(detector.stream(frames(path)))
        single = [detector(f)[0] for f in decoded]
    assert len(streamed) == 9 and all(_same(a, b) for a, b in zip(single, streamed))


def test_openvino_u8_input_matches_the_numpy_path(ov_artifact, shapes_small):
    """PrePostProcessor (u8 NHWC, convert and /255 in the model) vs numpy's float NCHW: the same
    engine outputs within 1e-4 (the same values up to the last float bit), the same detections."""
    paths = _images(shapes_small, 6)
    with edgecsp.load(ov_artifact) as fused, edgecsp.load(ov_artifact, u8_input=False) as host:
        assert fused.u8_input and not host.u8_input
        assert fused.runner.describe()["input_layout"] == "nhwc-u8"
        for p in paths:
            a, b = fused._infer([fused.prepare(p)[0]]), host._infer([host.prepare(p)[0]])
            assert a.shape == b.shape and np.abs(a - b).max() <= 1e-4
        assert all(_same(a, b) for a, b in zip(fused(paths), host(paths)))
        from edgecsp.data.preprocess import preprocess

        x, _ = preprocess(paths, 320)  # the float batch contract still works (evaluation, gate)
        assert np.abs(fused.predict_batch(x) - host.predict_batch(x)).max() <= 1e-4
