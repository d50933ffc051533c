"""Signed artifacts: who built it, not only "not damaged".

Checksums and the manifest digest say an artifact is intact; anyone can recompute them. A fleet
that ships artifacts to devices also needs to know they come from its own build machines:
``compile --sign KEY`` signs the manifest with an Ed25519 private key (the manifest lists every
file's sha256, so the signature covers every byte of the artifact), and devices load with the
matching public keys (``edgecsp.load(..., trusted_keys=...)``, ``python -m edgecsp.verify``).

Files: a private key is an unencrypted PKCS#8 PEM (keep it on the build machine, mode 0600); a
public key is a SubjectPublicKeyInfo PEM; ``trusted_keys`` is such a file (one or more keys) or a
folder of ``*.pub``/``*.pem`` files. The signature is ``manifest.sig`` beside the manifest:
JSON with the algorithm, the signing key's id (sha256 of its raw public bytes, 16 hex digits)
and the signature, base64.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgecsp.artifact import MANIFEST, SIGNATURE
from edgecsp.errors import EdgeCSPError, shown

# Signed bytes are this prefix + the manifest: a signature made for anything else never verifies here.
DOMAIN = b"edgecsp-artifact-signature/1\n"
MAX_KEY_BYTES = 64 << 10
MAX_SIGNATURE_BYTES = 4 << 10


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgeCSPError("signing needs the cryptography package: pip install cryptography") from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read(path: Path, what: str) -> bytes:
    try:
        if not path.is_file():
            raise EdgeCSPError(f"{what} {shown(path)} does not exist or is not a file")
        if path.stat().st_size > MAX_KEY_BYTES:
            raise EdgeCSPError(f"{what} {shown(path)} is too large to be a key file")
        return path.read_bytes()
    except OSError as err:
        raise EdgeCSPError(f"cannot read {what} {shown(path)} ({err.strerror})") from None


def load_private_key(path: str | Path) -> Any:
    serialization, ed25519 = _crypto()
    data = _read(Path(path), "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise EdgeCSPError(f"signing key {shown(path)} is not an unencrypted PEM private key ({shown(str(err)[:80])}); "
                           "make one with python -m edgecsp.verify --keygen DIR") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise EdgeCSPError(f"signing key {shown(path)} is not an Ed25519 key; make one with python -m edgecsp.verify "
                           "--keygen DIR")
    return key


def load_trusted_keys(spec: str | Path | list[str | Path]) -> dict[str, Any]:
    """key id -> public key, from PEM files, folders of *.pub / *.pem, or a list of either."""
    serialization, ed25519 = _crypto()
    specs = spec if isinstance(spec, list) else [spec]
    files: list[Path] = []
    for item in specs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in (".pub", ".pem") and p.is_file())
        else:
            files.append(path)
    keys: dict[str, Any] = {}
    for path in files:
        data = _read(path, "trusted key file")
        blocks = [b"-----BEGIN PUBLIC KEY-----" + part for part in data.split(b"-----BEGIN PUBLIC KEY-----")[1:]]
        if not blocks:
            raise EdgeCSPError(f"trusted key file {shown(path)} holds no PEM public key")
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block)
            except (ValueError, TypeError) as err:
                raise EdgeCSPError(f"trusted key file {shown(path)} holds a damaged public key "
                                   f"({shown(str(err)[:80])})") from None
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise EdgeCSPError(f"trusted key file {shown(path)} holds a key that is not Ed25519")
            keys[key_id(key)] = key
    if not keys:
        raise EdgeCSPError(f"no trusted keys found in {', '.join(shown(s) for s in specs)}")
    return keys


def sign_artifact(root: Path, private_key: Any) -> str:
    """Write manifest.sig for ``root``'s manifest.json; returns the key id."""
    if isinstance(private_key, (str, Path)):
        private_key = load_private_key(private_key)
    raw = (root / MANIFEST).read_bytes()
    public = private_key.public_key()
    signature = {"algorithm": "ed25519", "key_id": key_id(public),
                 "signature": base64.b64encode(private_key.sign(DOMAIN + raw)).decode()}
    (root / SIGNATURE).write_text(json.dumps(signature) + "\n")
    return signature["key_id"]


def verify_signature(root: Path, trusted: dict[str, Any], manifest_bytes: bytes | None = None) -> str:
    """The signing key's id when manifest.sig verifies with a trusted key; else EdgeCSPError."""
    from cryptography.exceptions import InvalidSignature

    path = root / SIGNATURE
    try:
        if path.is_symlink() or not path.is_file():
            raise EdgeCSPError(f"artifact {shown(root)} is not signed ({SIGNATURE} missing) and a signature is "
                               "required; refused: sign it with python -m edgecsp.compile --sign KEY")
        if path.stat().st_size > MAX_SIGNATURE_BYTES:
            raise EdgeCSPError(f"{shown(path)} is too large to be a signature; refused")
        raw_sig = path.read_bytes()
        raw = manifest_bytes if manifest_bytes is not None else (root / MANIFEST).read_bytes()
    except OSError as err:
        raise EdgeCSPError(f"cannot read the signature of {shown(root)} ({err.strerror}); refused") from None
    try:
        sig = json.loads(raw_sig)
        if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519":
            raise ValueError("not an ed25519 signature record")
        kid, value = str(sig["key_id"]), base64.b64decode(str(sig["signature"]), validate=True)
    except (ValueError, KeyError, TypeError, RecursionError):
        raise EdgeCSPError(f"{shown(path)} is not a readable edgecsp signature; refused") from None
    key = trusted.get(kid)
    if key is None:
        raise EdgeCSPError(f"artifact {shown(root)} is signed by key {shown(kid)[:16]}, which is not among the trusted "
                           f"keys ({', '.join(sorted(trusted))}); refused")
    try:
        key.verify(value, DOMAIN + raw)
    except InvalidSignature:
        raise EdgeCSPError(f"artifact {shown(root)}: its signature by key {kid} does not verify (the manifest changed "
                           "after signing); refused") from None
    return kid


def generate_keypair(folder: str | Path, name: str = "edgecsp-signing") -> tuple[Path, Path]:
    """A new Ed25519 key pair: ``name``.key (private, 0600) and ``name``.pub in ``folder``; never overwrites."""
    serialization, ed25519 = _crypto()
    folder = Path(folder)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private, public):
        if path.exists():
            raise EdgeCSPError(f"{shown(path)} exists; keys are never overwritten: choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def signature_policy(trusted_keys: Any, require_signature: bool | None) -> tuple[dict[str, Any] | None, bool]:
    """(trusted keys, required?) from load's arguments, else the device-wide settings
    EDGECSP_TRUSTED_KEYS (a path) and EDGECSP_REQUIRE_SIGNATURE=1."""
    if trusted_keys is None and os.environ.get("EDGECSP_TRUSTED_KEYS"):
        trusted_keys = os.environ["EDGECSP_TRUSTED_KEYS"]
    if require_signature is None:
        env = os.environ.get("EDGECSP_REQUIRE_SIGNATURE", "").strip().lower()
        require_signature = env in ("1", "true", "yes") or (trusted_keys is not None and env not in ("0", "false", "no"))
    if require_signature and trusted_keys is None:
        raise EdgeCSPError("a signature is required but no trusted keys are given; pass trusted_keys (or set "
                           "EDGECSP_TRUSTED_KEYS)")
    trusted = None
    if trusted_keys is not None:
        trusted = trusted_keys if isinstance(trusted_keys, dict) else load_trusted_keys(trusted_keys)
    return trusted, bool(require_signature)
