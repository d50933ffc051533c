"""The manifest is bound to its engine: digest beside it and in the archive, every edit refused by name."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

import edgecsp
from edgecsp.artifact import open_artifact, write_manifest
from edgecsp.errors import EdgeCSPError


def _copy(artifact: Path, dest: Path) -> tuple[Path, dict]:
    shutil.copytree(artifact, dest)
    return dest, json.loads((dest / "manifest.json").read_text())


def _edits(manifest: dict) -> list[tuple[str, dict, str]]:
    names = manifest["model"]["class_names"]
    size = manifest["model"]["input_size"][0]

    def edit(**changes) -> dict:
        m = json.loads(json.dumps(manifest))
        for path, value in changes.items():
            node = m
            keys = path.split("__")
            for key in keys[:-1]:
                node = node[int(key)] if isinstance(node, list) else node[key]
            node[keys[-1]] = value
        return m

    out_shape = manifest["outputs"][0]["shape"]
    return [
        ("3 class names", edit(model__class_names=names[:3] if len(names) > 3 else ["a", "b", "c"]), "class names"),
        ("20 class names", edit(model__class_names=[f"c{i}" for i in range(20)]), "class names"),
        ("20 names and num_classes", edit(model__class_names=[f"c{i}" for i in range(20)], model__num_classes=20),
         "output width"),
        ("20 names, num_classes and outputs", edit(model__class_names=[f"c{i}" for i in range(20)],
                                                   model__num_classes=20,
                                                   outputs__0__shape=[*out_shape[:2], 25]), "output predictions shape"),
        ("num_classes", edit(model__num_classes=len(names) + 1), "num_classes"),
        ("precision int8", edit(precision="int8"), "precision int8 differs from its backend's record"),
        ("precision int8 on an FP32 engine", edit(precision="int8", backend__info__precision="int8"),
         "precision int8 does not match its engine, which holds fp32 weights"),
        ("precision fp16 on onnxruntime", edit(precision="fp16"), "precision fp16 is not one backend"),
        ("backend openvino", edit(backend__name="openvino"), "backend openvino does not run a .onnx"),
        ("backend tensorrt", edit(backend__name="tensorrt"), "TensorRT bundle"),
        ("backend unknown", edit(backend__name="tflite"), "backend 'tflite' is not one"),
        ("input name", edit(inputs__0__name="pixels"), "inputs"),
        ("batch", edit(inputs__0__shape=[4, 3, size, size], outputs__0__shape=[4, *out_shape[1:]]),
         "input images shape"),
        ("batch dynamic", edit(inputs__0__shape=["dynamic", 3, size, size]), "input images shape"),
        ("input size", edit(model__input_size=[size + 32, size + 32]), "input_size"),
        ("input size and shapes", edit(model__input_size=[size + 32, size + 32],
                                       inputs__0__shape=[1, 3, size + 32, size + 32]), "output rows"),
        ("strides", edit(model__strides=[s * 2 for s in manifest["model"]["strides"]]), "output rows"),
        ("output name", edit(outputs__0__name="boxes"), "outputs"),
        ("output rows", edit(outputs__0__shape=[out_shape[0], out_shape[1] + 1, out_shape[2]]), "output rows"),
    ]


def test_the_manifest_digest_is_beside_it_and_in_the_archive(ort_artifact):
    import hashlib

    digest = (ort_artifact / "manifest.sha256").read_text().split()[0]
    assert digest == hashlib.sha256((ort_artifact / "manifest.json").read_bytes()).hexdigest()
    with tarfile.open(ort_artifact.with_name(ort_artifact.name + ".tar.gz")) as tar:
        assert f"{ort_artifact.name}/manifest.sha256" in tar.getnames()


def test_a_manifest_edited_by_one_byte_is_refused(tmp_path, ort_artifact):
    root, _ = _copy(ort_artifact, tmp_path / "a")
    raw = bytearray((root / "manifest.json").read_bytes())
    at = raw.index(b'"preprocessing"') + 1
    raw[at] = ord("P")  # one byte, still valid JSON and still valid against the schema
    (root / "manifest.json").write_bytes(bytes(raw))
    with pytest.raises(EdgeCSPError, match="manifest.json fails its sha256 check"):
        edgecsp.load(root)


def test_a_manifest_without_its_digest_is_refused(tmp_path, ort_artifact):
    root, _ = _copy(ort_artifact, tmp_path / "a")
    (root / "manifest.sha256").unlink()
    with pytest.raises(EdgeCSPError, match="has no manifest.sha256"):
        open_artifact(root)


def test_each_edit_of_the_issue_is_refused_by_name_even_with_a_recomputed_digest(tmp_path, ort_artifact):
    root, manifest = _copy(ort_artifact, tmp_path / "a")
    assert manifest["precision"] == "fp32" and manifest["inputs"][0]["shape"][0] == 1
    for label, edited, message in _edits(manifest):
        write_manifest(root, edited)  # the attacker recomputes manifest.sha256 too
        with pytest.raises(EdgeCSPError, match=message) as err:
            edgecsp.load(root)
        assert "refused" in str(err.value) and "\n" not in str(err.value), label
    write_manifest(root, manifest)
    edgecsp.load(root).close()  # the untouched manifest, resealed, still loads


def test_an_openvino_manifest_is_checked_against_its_ir(tmp_path, ov_artifact):
    root, manifest = _copy(ov_artifact, tmp_path / "a")
    for precision, message in (("fp16", "precision fp16 does not match its engine, which holds fp32"),
                               ("int8", "precision int8 does not match")):
        write_manifest(root, {**manifest, "precision": precision,
                              "backend": {**manifest["backend"], "info": {**manifest["backend"]["info"],
                                                                          "precision": precision}}})
        with pytest.raises(EdgeCSPError, match=message):
            edgecsp.load(root)
    write_manifest(root, {**manifest, "inputs": [{**manifest["inputs"][0], "name": "x"}]})
    with pytest.raises(EdgeCSPError, match="inputs"):
        edgecsp.load(root)


def test_an_int8_engine_cannot_be_described_as_fp32(tmp_path, shapes_small):
    from edgecsp.pipeline import CompileOptions, compile_artifact

    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[calibration]\nsource = "coco"\npath = "{shapes_small["train"]}"\nnum_images = 4\n')
    out, manifest = compile_artifact(CompileOptions(target="onnxruntime", precision="int8", calibration=str(recipe),
                                                    data=shapes_small["val"], out=tmp_path / "q", verify_images=4,
                                                    allow_accuracy_drop=True), progress=lambda line: None)
    edgecsp.load(out).close()
    write_manifest(out, {**manifest, "precision": "fp32",
                         "backend": {**manifest["backend"], "info": {**manifest["backend"]["info"],
                                                                     "precision": "fp32"}}})
    with pytest.raises(EdgeCSPError, match=r"precision fp32 does not match its engine, which holds int8 weights \(Q/DQ\)"):
        edgecsp.load(out)
