"""Build or reuse the artifact for (model, target, precision): ``benchmark --target`` and nightly.

An artifact already at the path is reused when its checksums pass and it was built from the same
model weights, backend version and edgecsp version; otherwise it is rebuilt (and the reason said).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable  # typing's: collections.abc.Callable[...] is not subscriptable at run time on 3.8

from edgecsp.errors import EdgeCSPError

Progress = Callable[[str], None]


def artifact_path(out_root: Path, model: str | None, target: str, precision: str, batch: int | str | None = None) -> Path:
    stem = Path(str(model or "demo")).stem
    suffix = f"-b{batch}" if batch not in (None, 1) else ""
    return Path(out_root) / f"{stem}-{target}-{precision}{suffix}"


def stale_reason(manifest: dict, model_hash: str, backend_version: str) -> str | None:
    """Why an existing artifact cannot be reused, or None when it can."""
    from edgecsp import __version__
    from edgecsp.manifest import Manifest

    typed = Manifest.of(manifest)
    if typed.model_hash != model_hash:
        return "the model's weights changed"
    if typed.backend_version != backend_version:
        return f"backend version {typed.backend_version} -> {backend_version}"
    if manifest.get("edgecsp_version") != __version__:
        return f"edgecsp {manifest.get('edgecsp_version')} -> {__version__}"
    return None


def ensure_artifact(model: str | None, target: str, precision: str | None, out_root: Path = Path("artifacts"),
                    batch: int | str | None = None, rebuild: bool = False, verify_images: int | None = None,
                    data: Path | None = None, allow_accuracy_drop: bool = False,
                    progress: Progress = print, sign: Path | None = None) -> tuple[Path, dict, bool]:
    """(artifact root, manifest, built now?)."""
    from edgecsp.artifact import SIGNATURE, open_artifact
    from edgecsp.backends import get_backend
    from edgecsp.models.checkpoint import resolve_model
    from edgecsp.pipeline import CompileOptions, compile_artifact, model_hash_of
    from edgecsp.targets import load_target

    profile = load_target(target)
    precision = profile.check_precision(precision)
    backend = get_backend(profile.backend)
    version = backend.version()  # a missing backend library: one line with the install hint
    out = artifact_path(out_root, model, profile.name, precision, batch)
    if out.exists() and not rebuild:
        try:
            root, manifest = open_artifact(out)
        except EdgeCSPError as err:
            progress(f"rebuilding {out}: {err}")
        else:
            reason = stale_reason(manifest, model_hash_of(resolve_model(model)[0]), version)
            if reason is None and sign is not None and not (root / SIGNATURE).is_file():
                reason = "not signed, and a signing key is given"
            if reason is None:
                progress(f"reusing {out} (same model, {backend.name} {version}, checksums pass)")
                return root, manifest, False
            progress(f"rebuilding {out}: {reason}")
    opts = CompileOptions(target=target, model=model, precision=precision, out=out, batch=batch,
                          verify_images=verify_images, data=data, allow_accuracy_drop=allow_accuracy_drop,
                          sign=sign)
    root, manifest = compile_artifact(opts, progress=progress)
    return root, manifest, True
