"""Calibration recipes (TOML in calibration/) and the calibration images they select.

Images go through the same letterbox as inference. The set's hash (of the chosen files and
the preprocessing) plus the recipe's hash key the quantization cache, so a second compile with
the same model, data and recipe does not recalibrate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgecsp.errors import EdgeCSPError
from edgecsp.faults import failpoint
from edgecsp.paths import data_dir
from edgecsp.tomlfile import Table, read_toml

RECIPES_DIR = data_dir("calibration")
SOURCES = ("shapes", "coco", "yolo", "folder")
METHODS = ("minmax", "entropy", "percentile")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class CalibrationRecipe:
    name: str = "default"
    source: str = "shapes"  # shapes | coco | yolo | folder
    path: str = ""  # data set directory (coco/yolo) or image folder; unused for shapes
    num_images: int = 128
    seed: int = 0  # selection seed (and the shapes generator's seed)
    method: str = "minmax"  # minmax | entropy | percentile
    percentile: float = 99.999
    per_channel: bool = True  # per-channel weight scales
    keep_head_float: bool = True  # leave the detection head / decode in float (see pitfalls)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class CalibrationSet:
    images: np.ndarray  # (N, 3, H, W) float32, letterboxed, in [0, 1]
    data_hash: str
    sources: list[str]  # file names used, for the manifest


def list_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.toml"))


# Calibration holds every letterboxed image in memory (5 MB each at 640x640); a few hundred is typical.
MAX_IMAGES = 10_000


def load_recipe(name_or_path: str | Path | None) -> CalibrationRecipe:
    """A recipe name from calibration/ ("default") or a path to a TOML file."""
    spec = str(name_or_path or "default")
    path = Path(spec)
    if not path.suffix:
        if spec not in list_recipes():  # only names of files in calibration/, never a path built from one
            raise EdgeCSPError(f"unknown calibration recipe {spec!r}; known: {', '.join(list_recipes())} "
                               "(or pass a path to a .toml file)")
        path = RECIPES_DIR / f"{spec}.toml"
    data = read_toml(path, "calibration recipe")
    known = list(CalibrationRecipe.__dataclass_fields__)
    if "calibration" in data:  # a [calibration] table, and nothing beside it to be silently ignored
        Table(data, f"calibration recipe {path}", known=["calibration"])
        table = Table(data["calibration"], f"calibration recipe {path} [calibration]", known=known)
    else:
        table = Table(data, f"calibration recipe {path}", known=known)
    recipe = CalibrationRecipe(
        name=table.get("name", "str", path.stem),
        source=table.get("source", "str", "shapes", choices=SOURCES),
        path=table.get("path", "str", ""),
        num_images=table.get("num_images", "int", 128, low=1, high=MAX_IMAGES),
        seed=table.get("seed", "int", 0, low=0),
        method=table.get("method", "str", "minmax", choices=METHODS),
        percentile=table.get("percentile", "number", 99.999, above=0, high=100),
        per_channel=table.get("per_channel", "bool", True),
        keep_head_float=table.get("keep_head_float", "bool", True),
    )
    if recipe.source != "shapes" and not recipe.path:
        raise EdgeCSPError(f"calibration recipe {path}: source {recipe.source!r} needs a 'path'")
    return recipe


def _image_files(recipe: CalibrationRecipe) -> list[Path]:
    if recipe.source == "shapes":
        from edgecsp.data.shapes import ensure_shapes_val
        from edgecsp.paths import cache_dir

        # A split of its own (its own seed), never the validation images the accuracy gate uses.
        root = ensure_shapes_val(cache_dir() / "calibration", n=recipe.num_images, seed=10_000 + recipe.seed)
        return sorted((root / "images").iterdir())
    root = Path(recipe.path).expanduser()
    if not root.exists():
        raise EdgeCSPError(f"calibration data {root} does not exist; fix 'path' in the recipe")
    if recipe.source == "folder":
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif recipe.source == "coco":
        from edgecsp.data.coco import resolve_dataset

        ds = resolve_dataset(root)
        files = [ds.image_path(i) for i in range(len(ds))]
    else:
        from edgecsp.data.yolo_txt import YoloDataset

        ds = YoloDataset(root)
        files = [ds.image_path(i) for i in range(len(ds))]
    if not files:
        raise EdgeCSPError(f"calibration data {root} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                           "point the recipe at a folder or data set with images")
    return files


def selected_files(recipe: CalibrationRecipe) -> list[Path]:
    """The images the recipe selects (``num_images`` of its source, seeded): what calibration_set reads."""
    files = _image_files(recipe)
    rng = np.random.default_rng(recipe.seed)
    if len(files) > recipe.num_images:
        files = [files[i] for i in sorted(rng.choice(len(files), recipe.num_images, replace=False))]
    return files


def calibration_set(recipe: CalibrationRecipe, input_size: int, resize: str = "letterbox") -> CalibrationSet:
    """Select ``num_images`` images (seeded) and letterbox (or stretch) them like inference does."""
    from edgecsp.data.preprocess import letterbox, load_image_rgb, to_tensor_batch

    files = selected_files(recipe)
    h = hashlib.sha256(f"{resize}:{input_size}:114".encode())
    boxed = []
    for path in files:
        try:
            image = load_image_rgb(path)
        except EdgeCSPError as err:
            raise EdgeCSPError(f"calibration image unreadable: {err}") from None
        boxed.append(letterbox(image, input_size, mode=resize)[0])
        failpoint("calibration.image")
        h.update(path.name.encode())
        h.update(Path(path).read_bytes())
    return CalibrationSet(to_tensor_batch(boxed), h.hexdigest()[:16], [p.name for p in files])
