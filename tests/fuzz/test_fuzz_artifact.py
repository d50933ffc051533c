"""Fuzzing what arrives with an artifact: its manifest, its .tar.gz, and archives of any shape.

Every input must end in a working predictor or in one line of EdgeCSPError, and no archive may
write anything outside the extraction cache.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_harness import examples, expect_clean
from hypothesis import given, settings
from hypothesis import strategies as st

import edgecsp

IMAGE = np.full((96, 128, 3), 114, np.uint8)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(node, prefix=()):
    """Every key path in a JSON tree (the places a mutation can hit)."""
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


def _mutate(manifest: dict, path: tuple, value, delete: bool) -> object:
    if not path:
        return value
    m = copy.deepcopy(manifest)
    node = m
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        node.pop(path[-1])
    else:
        node[path[-1]] = value
    return m


def _reseal(root: Path, raw: bytes) -> None:
    """Write a manifest with a matching manifest.sha256, as an attacker would: what lies behind the
    digest check (parsing, schema, binding to the engine) is what these tests fuzz."""
    import hashlib

    (root / "manifest.json").write_bytes(raw)
    (root / "manifest.sha256").write_text(f"{hashlib.sha256(raw).hexdigest()}  manifest.json\n")


def _load_and_predict(root: Path) -> None:
    with edgecsp.load(root) as predictor:
        predictor(IMAGE)


@pytest.fixture(scope="module")
def manifest_paths(ort_artifact):
    manifest = json.loads((ort_artifact / "manifest.json").read_text())
    return manifest, sorted(_paths(manifest), key=str)


@settings(max_examples=examples(120))
@given(data=st.data(), value=json_values, delete=st.booleans())
def test_mutated_manifests_load_or_fail_in_one_line(tmp_path_factory, ort_artifact, manifest_paths, data, value,
                                                    delete):
    manifest, paths = manifest_paths
    # Half the mutations hit what a loader uses; the rest anywhere (most of it is information).
    used = [p for p in paths if p and p[0] in ("engine", "files", "backend", "model", "inputs", "precision", "target",
                                                "schema")]
    path = data.draw(st.sampled_from(used) | st.sampled_from(paths))
    root = tmp_path_factory.mktemp("m") / "art"
    shutil.copytree(ort_artifact, root)
    mutated = _mutate(manifest, path, value, delete)
    _reseal(root, json.dumps(mutated, allow_nan=True).encode())
    expect_clean("artifact manifest (mutated)", _load_and_predict, root)


@settings(max_examples=examples(60))
@given(raw=st.binary(max_size=2000))
def test_manifest_bytes_load_or_fail_in_one_line(tmp_path_factory, ort_artifact, raw):
    root = tmp_path_factory.mktemp("b") / "art"
    shutil.copytree(ort_artifact, root)
    _reseal(root, raw)
    expect_clean("artifact manifest (bytes)", _load_and_predict, root)


@settings(max_examples=examples(80))
@given(cut=st.integers(0, 10**7), flips=st.lists(st.integers(0, 10**7), max_size=4))
def test_damaged_tarballs_load_or_fail_in_one_line(tmp_path_factory, monkeypatch_module, ort_artifact, cut, flips):
    good = ort_artifact.with_name(ort_artifact.name + ".tar.gz").read_bytes()
    data = bytearray(good[: cut % (len(good) + 1)])
    for f in flips:
        if data:
            data[f % len(data)] ^= 0xFF
    path = tmp_path_factory.mktemp("t") / "art.tar.gz"
    path.write_bytes(bytes(data))
    expect_clean("artifact .tar.gz (damaged)", _load_and_predict, path)


member_names = st.one_of(
    st.text(st.sampled_from("ab./\\-_~\x00"), min_size=1, max_size=24),
    st.sampled_from(["/etc/x", "../x", "a/../../x", "a/./b", "a//b", "./a", "a/", "~/x", "a\\..\\x"]),
    st.integers(90, 400).map(lambda n: "art/" + "d/" * (n // 2)),  # long names: pax / GNU long-name headers
)
member_kinds = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE,
                                tarfile.BLKTYPE, tarfile.FIFOTYPE])


@settings(max_examples=examples(150))
@given(members=st.lists(st.tuples(member_names, member_kinds, member_names, st.binary(max_size=64)), max_size=6),
       fmt=st.sampled_from([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
def test_archives_of_any_shape_never_write_outside(tmp_path_factory, monkeypatch_module, members, fmt):
    root = tmp_path_factory.mktemp("z")
    path = root / "art.tar.gz"
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for name, kind, link, data in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    before = set(root.parent.iterdir())
    expect_clean("artifact .tar.gz (crafted)", _load_and_predict, path)
    assert set(root.parent.iterdir()) == before  # nothing new beside the archive's folder
    assert sorted(p.name for p in root.iterdir()) == ["art.tar.gz"]
    extracted = Path(monkeypatch_module.cache) / "artifacts"  # where a "../x" from .extract-* would land
    if extracted.exists():  # only complete extractions of good archives, no strays or temporaries
        assert [p.name for p in extracted.iterdir() if not (p / ".complete").is_file()] == []


@pytest.fixture(scope="module")
def monkeypatch_module(tmp_path_factory):
    """Extraction goes to a cache of this module's own (checked for strays by the tests)."""
    mp = pytest.MonkeyPatch()
    mp.cache = str(tmp_path_factory.mktemp("fuzz-cache"))
    mp.setenv("EDGECSP_CACHE_DIR", mp.cache)
    yield mp
    mp.undo()
