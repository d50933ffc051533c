"""The typed manifest: its accessors answer from the JSON, build facts in one place, bad JSON is one line."""

from __future__ import annotations

import json

import pytest

from edgecsp.errors import EdgeCSPError

# -- the typed manifest (issue 14 item 3) -------------------------------------------------------


def test_the_typed_manifest_answers_from_the_json(ort_artifact):
    from edgecsp.artifact import open_manifest
    from edgecsp.manifest import Manifest

    root, manifest = open_manifest(ort_artifact)
    raw = json.loads((root / "manifest.json").read_text())
    assert manifest.raw == raw and Manifest.read(root) == manifest
    assert manifest.engine == raw["engine"] and manifest.precision == raw["precision"] == "fp32"
    assert manifest.backend_name == "onnxruntime" and manifest.build_info == raw["backend"]["info"]
    assert manifest.input_size == raw["model"]["input_size"][0] and manifest.batch == raw["inputs"][0]["shape"][0]
    assert manifest.accuracy.status == manifest.accuracy_status == "passed"
    assert manifest.accuracy.to_manifest() == raw["accuracy"]
    assert manifest.graph_counts == raw["model"]["graph"] and manifest.bundle is None
    assert Manifest.of(raw).build_info == manifest.build_info and Manifest.of(None).build_info == {}


def test_backends_read_build_information_in_one_place():
    """OpenVINO looked in four places; the manifest says where: backend.info, nowhere else."""
    from edgecsp.backends.openvino_backend import _manifest_info

    assert _manifest_info({"backend": {"name": "openvino", "info": {"device": "CPU"}}}) == {"device": "CPU"}
    assert _manifest_info({"backend": {"name": "openvino"}, "build_info": {"device": "GPU"}}) == {}


def test_a_manifest_that_is_not_json_is_one_line(tmp_path):
    from edgecsp.manifest import Manifest

    with pytest.raises(EdgeCSPError, match="is corrupt"):
        Manifest.parse(b"{not json", tmp_path / "manifest.json")
