"""manifest.json as one type: read, validated against its JSON schema, written with its digest.

``Manifest`` wraps the JSON object (``raw``, what is written and what older code and tests read)
and answers the questions every reader asks (engine, precision, build information, input size,
accuracy) in one place, so no reader guesses where a field sits. The JSON stays as the schema
(schemas/artifact-manifest.schema.json) says; artifacts written by older edgecsp still load.

Device side: Python 3.8, no torch, no ONNX.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgecsp.errors import EdgeCSPError, shown
from edgecsp.gate import GateResult, status_of

SCHEMA = "edgecsp-artifact/1"
MANIFEST = "manifest.json"
# The manifest's own sha256 ("<hex>  manifest.json", sha256sum's format): an edited manifest is
# a tampered artifact. It says "not damaged, not edited in passing"; who built it is the
# signature's job (edgecsp.signing, manifest.sig).
MANIFEST_DIGEST = "manifest.sha256"
SIGNATURE = "manifest.sig"
# Files beside the manifest that it cannot list (they describe the manifest itself).
META_FILES = (MANIFEST, MANIFEST_DIGEST, SIGNATURE)
MAX_MANIFEST_BYTES = 16 << 20


def safe_member_name(name: str) -> str | None:
    """The normalized relative name, or None when it is absolute or climbs out."""
    if not name or name.startswith(("/", "\\")) or "\\" in name or "\x00" in name:
        return None
    norm = posixpath.normpath(name)
    if norm.startswith("../") or norm == ".." or os.path.isabs(norm):
        return None
    if ".." in name.split("/"):  # even a "a/../b" that stays inside is not what compile writes
        return None
    return norm


@lru_cache(maxsize=None)  # functools.cache is 3.9+
def _validator() -> Any:
    import jsonschema

    schema = json.loads((Path(__file__).parent / "schemas" / "artifact-manifest.schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: Any, where: Path) -> dict[str, Any]:
    """Check the manifest against its schema and check that every path stays inside the artifact."""
    if not isinstance(manifest, dict):
        raise EdgeCSPError(f"{where} is not an edgecsp manifest (top level is not an object); rebuild the artifact")
    if manifest.get("schema") != SCHEMA:
        raise EdgeCSPError(f"{where} has schema {str(manifest.get('schema'))[:40]!r}; this edgecsp reads {SCHEMA}")
    error = next(iter(sorted(_validator().iter_errors(manifest), key=lambda e: list(e.path))), None)
    if error is not None:
        field = "/".join(str(p) for p in error.path) or "(top level)"
        raise EdgeCSPError(f"{where} is invalid at {field}: {error.message[:160]}; rebuild the artifact")
    for name in manifest["files"]:
        if safe_member_name(name) is None or name in META_FILES:
            raise EdgeCSPError(f"{where} lists an unsafe file path {name[:80]!r} (absolute, '..' or the manifest "
                               "itself); refused")
    if manifest["engine"] not in manifest["files"]:
        raise EdgeCSPError(f"{where}: engine {manifest['engine'][:80]!r} is not among the files it lists and "
                           "checksums; refused (only listed, verified files are loaded)")
    return manifest


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """manifest.json and its digest. Any stale signature goes: it signed other bytes."""
    raw = json.dumps(manifest, indent=1).encode()
    (root / MANIFEST).write_bytes(raw)
    (root / MANIFEST_DIGEST).write_text(f"{hashlib.sha256(raw).hexdigest()}  {MANIFEST}\n")
    with contextlib.suppress(FileNotFoundError):
        (root / SIGNATURE).unlink()


def check_manifest_digest(root: Path, raw: bytes) -> None:
    """The manifest's bytes match manifest.sha256: an edited manifest is refused before it is read."""
    path = root / MANIFEST_DIGEST
    try:
        if path.is_symlink() or not path.is_file():
            raise EdgeCSPError(f"artifact {shown(root)} has no {MANIFEST_DIGEST} (built by an older edgecsp, or its "
                               "manifest was replaced); refused: rebuild the artifact")
        recorded = path.read_bytes()[:256].split()
    except OSError as err:
        raise EdgeCSPError(f"cannot read {shown(path)} ({err.strerror}); check the artifact") from None
    if not recorded or recorded[0].decode("ascii", "replace") != hashlib.sha256(raw).hexdigest():
        raise EdgeCSPError(f"{shown(root / MANIFEST)} fails its sha256 check ({MANIFEST_DIGEST}): the manifest was "
                           "edited or damaged; refused: rebuild the artifact with python -m edgecsp.compile")


def read_manifest_bytes(root: Path) -> bytes:
    """manifest.json's bytes, refused when it is missing, a link or too large."""
    path = root / MANIFEST
    try:
        if not path.is_file() or path.is_symlink():
            raise EdgeCSPError(f"{shown(root)} is not an edgecsp artifact (no {MANIFEST})")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise EdgeCSPError(f"{shown(path)} is too large for a manifest")
        return path.read_bytes()
    except OSError as err:
        raise EdgeCSPError(f"cannot read {shown(path)} ({err.strerror}); check the artifact") from None


@dataclass(frozen=True)
class Manifest:
    """One artifact's manifest. ``raw`` is the JSON object as written (do not mutate it)."""

    raw: dict[str, Any]

    # -- reading and writing -------------------------------------------------------------------

    @classmethod
    def parse(cls, raw: bytes, where: Path) -> Manifest:
        """JSON bytes -> a validated manifest (schema, paths inside the artifact, engine listed)."""
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise EdgeCSPError(f"{shown(where)} is corrupt ({shown(str(err)[:120])}); rebuild the artifact") from None
        return cls(validate_manifest(data, where))

    @classmethod
    def read(cls, root: str | Path) -> Manifest:
        """An artifact directory's manifest.json: its digest checked, then parsed and validated."""
        root = Path(root)
        raw = read_manifest_bytes(root)
        check_manifest_digest(root, raw)
        return cls.parse(raw, root / MANIFEST)

    @classmethod
    def of(cls, manifest: Manifest | dict[str, Any] | None) -> Manifest:
        """A manifest a caller already holds (checked when it was opened), as the type."""
        if isinstance(manifest, Manifest):
            return manifest
        return cls(manifest if isinstance(manifest, dict) else {})

    def write(self, root: Path) -> None:
        write_manifest(root, self.raw)

    def to_dict(self) -> dict[str, Any]:
        return self.raw

    # -- what readers ask ----------------------------------------------------------------------

    def _section(self, key: str) -> dict[str, Any]:
        value = self.raw.get(key)
        return value if isinstance(value, dict) else {}

    @property
    def model(self) -> dict[str, Any]:
        return self._section("model")

    @property
    def model_name(self) -> str | None:
        return self.model.get("name")

    @property
    def model_hash(self) -> str | None:
        return self.model.get("hash")

    @property
    def input_size(self) -> int:
        return int(self.model["input_size"][0])

    @property
    def class_names(self) -> list[str]:
        return list(self.model.get("class_names") or [])

    @property
    def target(self) -> dict[str, Any]:
        return self._section("target")

    @property
    def target_name(self) -> str | None:
        return self.target.get("name")

    @property
    def tolerance_points(self) -> float:
        """The AP50 drop its target allowed when it was built (the profile's copy)."""
        return float(self.target.get("max_ap50_drop", 1.0))

    @property
    def precision(self) -> str:
        return str(self.raw["precision"]).lower()

    @property
    def engine(self) -> str:
        return str(self.raw["engine"])

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self._section("files")

    @property
    def backend_name(self) -> str:
        return str(self._section("backend").get("name"))

    @property
    def backend_version(self) -> str | None:
        return self._section("backend").get("version")

    @property
    def build_info(self) -> dict[str, Any]:
        """What the backend's build recorded (BuildResult.info): always ``backend.info``."""
        info = self._section("backend").get("info")
        return info if isinstance(info, dict) else {}

    @property
    def bundle(self) -> dict[str, Any] | None:
        """A Jetson bundle's description (backend.info.bundle), else None."""
        bundle = self.build_info.get("bundle")
        return bundle if isinstance(bundle, dict) else None

    @property
    def batch(self) -> int | str:
        """The engine's batch: an int, or "dynamic"."""
        dim = self.raw["inputs"][0]["shape"][0]
        return dim if isinstance(dim, int) and dim > 0 else "dynamic"

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        value = self.raw.get("preprocessing")
        return value if isinstance(value, dict) else None

    @property
    def graph_counts(self) -> dict[str, int] | None:
        """MACs and CIO per frame, as the host counted them (a device has no torch to count)."""
        counts = self.model.get("graph")
        if isinstance(counts, dict) and isinstance(counts.get("macs"), int) and isinstance(counts.get("cio"), int):
            return {"macs": counts["macs"], "cio": counts["cio"]}
        return None

    @property
    def accuracy(self) -> GateResult:
        """The accuracy gate as the build recorded it (the host's, for a bundle)."""
        return GateResult.from_manifest(self.raw.get("accuracy"))

    @property
    def accuracy_status(self) -> str:
        return status_of(self.raw)

    @property
    def device_accuracy(self) -> GateResult | None:
        """The on-device check of an engine built from a bundle, else None."""
        acc = self.raw.get("accuracy")
        device = acc.get("device") if isinstance(acc, dict) else None
        return GateResult.from_manifest(device) if isinstance(device, dict) else None

    @property
    def reuse(self) -> dict[str, Any]:
        """Which compile steps a warm compile reused from the cache (empty: all ran)."""
        return self._section("reused")
