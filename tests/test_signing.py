"""Signed artifacts (issue 13): compile --sign, edgecsp.load(trusted_keys=...), python -m
edgecsp.verify, require_signature on load and in the nightly suite."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

import edgecsp
from edgecsp import cli
from edgecsp.artifact import write_manifest
from edgecsp.errors import EdgeCSPError
from edgecsp.signing import generate_keypair, sign_artifact


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    ours, theirs = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("theirs")
    private, public = generate_keypair(ours)
    other_private, other_public = generate_keypair(theirs)
    return {"private": private, "public": public, "other_private": other_private, "other_public": other_public}


def _verify_cli(*argv: str) -> tuple[int, str, str]:
    from edgecsp.verify import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli.run(main, list(argv))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path):
    code, out, _ = _verify_cli("--keygen", str(tmp_path / "k"))
    assert code == 0 and "key id" in out
    private = tmp_path / "k" / "edgecsp-signing.key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600 and (tmp_path / "k" / "edgecsp-signing.pub").is_file()
    code, _, err = _verify_cli("--keygen", str(tmp_path / "k"))
    assert code == 2 and "never overwritten" in err and len(err.strip().splitlines()) == 1


def test_a_signed_compile_is_verified_on_load_directory_and_tarball(tmp_path, shapes_small, keys):
    from edgecsp.pipeline import CompileOptions, compile_artifact

    out, _ = compile_artifact(CompileOptions(target="onnxruntime", precision="fp32", data=shapes_small["val"],
                                             out=tmp_path / "signed", verify_images=4, sign=keys["private"]),
                              progress=lambda line: None)
    assert (out / "manifest.sig").is_file()
    tarball = out.with_name(out.name + ".tar.gz")
    with tarfile.open(tarball) as tar:
        assert f"{out.name}/manifest.sig" in tar.getnames()
    for path in (out, tarball):
        with edgecsp.load(path, trusted_keys=keys["public"]) as predictor:
            assert predictor.class_names
    code, stdout, _ = _verify_cli(str(out), "--trusted", str(keys["public"]))
    assert code == 0 and "signed by trusted key" in stdout


def _signed_copy(ort_artifact: Path, tmp_path: Path, private: Path) -> Path:
    root = tmp_path / "a"
    shutil.copytree(ort_artifact, root)
    sign_artifact(root, private)
    return root


def test_an_unsigned_artifact_is_refused_where_a_signature_is_required(tmp_path, ort_artifact, keys, monkeypatch):
    with pytest.raises(EdgeCSPError, match=r"is not signed \(manifest.sig missing\)"):
        edgecsp.load(ort_artifact, trusted_keys=keys["public"])
    with pytest.raises(EdgeCSPError, match="no trusted keys are given"):
        edgecsp.load(ort_artifact, require_signature=True)
    edgecsp.load(ort_artifact, trusted_keys=keys["public"], require_signature=False).close()  # allowed, logged
    monkeypatch.setenv("EDGECSP_TRUSTED_KEYS", str(keys["public"]))  # the device-wide setting
    with pytest.raises(EdgeCSPError, match="is not signed"):
        edgecsp.load(ort_artifact)
    code, _, err = _verify_cli(str(ort_artifact), "--trusted", str(keys["public"]))
    assert code == 2 and "is not signed" in err and len(err.strip().splitlines()) == 1


def test_a_signature_by_another_key_is_refused(tmp_path, ort_artifact, keys):
    root = _signed_copy(ort_artifact, tmp_path, keys["other_private"])
    with pytest.raises(EdgeCSPError, match="which is not among the trusted keys"):
        edgecsp.load(root, trusted_keys=keys["public"])
    edgecsp.load(root, trusted_keys=[keys["public"], keys["other_public"]]).close()  # both trusted: fine


def test_a_manifest_changed_after_signing_is_refused_even_with_its_digest_recomputed(tmp_path, ort_artifact, keys):
    root = _signed_copy(ort_artifact, tmp_path, keys["private"])
    edgecsp.load(root, trusted_keys=keys["public"]).close()
    signature = (root / "manifest.sig").read_bytes()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["preprocessing"] = {"edited": True}  # nothing the engine check can see: only the signature
    write_manifest(root, manifest)
    (root / "manifest.sig").write_bytes(signature)  # the old signature put back
    with pytest.raises(EdgeCSPError, match="does not verify"):
        edgecsp.load(root, trusted_keys=keys["public"])


def test_damaged_keys_and_signatures_are_one_line(tmp_path, ort_artifact, keys):
    bad = tmp_path / "bad.pub"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(EdgeCSPError, match="damaged public key"):
        edgecsp.load(ort_artifact, trusted_keys=bad)
    with pytest.raises(EdgeCSPError, match="not an unencrypted PEM private key"):
        sign_artifact(tmp_path, bad)
    root = _signed_copy(ort_artifact, tmp_path, keys["private"])
    (root / "manifest.sig").write_text("{not json")
    with pytest.raises(EdgeCSPError, match="not a readable edgecsp signature"):
        edgecsp.load(root, trusted_keys=keys["public"])


def test_the_nightly_suite_can_require_signatures(tmp_path):
    from edgecsp.bench.suite import load_suite

    bench = tmp_path / "benchmarks"
    bench.mkdir()
    suite = bench / "s.toml"
    suite.write_text('[suite]\nmodels = ["demo"]\ntargets = ["onnxruntime"]\nrequire_signature = true\n')
    with pytest.raises(EdgeCSPError, match="require_signature needs trusted_keys"):
        load_suite(suite)
    suite.write_text('[suite]\nmodels = ["demo"]\ntargets = ["onnxruntime"]\nrequire_signature = true\n'
                     'trusted_keys = "keys"\nsigning_key = "keys/edgecsp-signing.key"\n')
    loaded = load_suite(suite)
    assert loaded.require_signature and loaded.trusted_keys == tmp_path / "keys"
    assert loaded.signing_key == tmp_path / "keys" / "edgecsp-signing.key"
    assert os.fspath(loaded.trusted_keys)
