"""Fuzzing the data-side parsers: COCO annotations, YOLO txt datasets and image files.

Every input must load (and then give sane items) or be refused with one EdgeCSPError line
(``expect_clean``). Inputs that once found a bug stay as regression cases: the files under
corpus/coco and corpus/image, and the ``@example``s on the YOLO test.
"""

from __future__ import annotations

import io
import json
import math
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fuzz_harness import REJECTED, expect_clean
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from edgecsp.data import CocoDataset, YoloDataset, image_size, load_image_rgb, resolve_dataset

CORPUS = Path(__file__).parent / "corpus"
# numpy's RuntimeWarnings (NaN/overflow in a cast) and unclosed files mean something went wrong
# quietly: fail on them. DataWarning (repaired boxes) and Pillow's notes on odd metadata are fine.
pytestmark = [pytest.mark.filterwarnings("error::RuntimeWarning"), pytest.mark.filterwarnings("error::ResourceWarning"),
              pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore::edgecsp.data.DataWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning:PIL")]


# ---------------------------------------------------------------- seed images


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(w: int, h: int, depth: int = 8, colour: int = 2, idat: bytes = b"") -> bytes:
    """A PNG that declares w x h but carries (almost) no pixel data: a decompression-bomb header."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(idat))
            + _png_chunk(b"IEND", b""))


def _patch(data: bytes, offset: int, packed: bytes) -> bytes:
    return data[:offset] + packed + data[offset + len(packed):]


def _seed_images() -> dict[str, bytes]:
    rgb = Image.new("RGB", (12, 8), (200, 60, 30))
    seeds = {
        "png_rgb": _encode(rgb, "PNG"),
        "png_rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png_l": _encode(rgb.convert("L"), "PNG"),
        "png_la": _encode(rgb.convert("LA"), "PNG"),
        "png_1bit": _encode(rgb.convert("1"), "PNG"),
        "png_p_transparent": _encode(rgb.convert("P"), "PNG", transparency=0),
        "png_16bit": _encode(Image.fromarray(np.arange(96, dtype=np.uint16).reshape(8, 12) * 600), "PNG"),
        "jpeg_rgb": _encode(rgb, "JPEG"),
        "jpeg_l": _encode(rgb.convert("L"), "JPEG"),
        "jpeg_cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "gif_animated": _encode(rgb.convert("P"), "GIF", save_all=True,
                                append_images=[Image.new("P", (12, 8), 3)], duration=10),
        "png_animated": _encode(rgb, "PNG", save_all=True, append_images=[Image.new("RGB", (12, 8))]),
        "bmp": _encode(rgb, "BMP"),
        "tiff_cmyk": _encode(rgb.convert("CMYK"), "TIFF"),
        "tiff_float": _encode(Image.fromarray(np.array([[0, np.nan, np.inf, -np.inf]] * 3, np.float32)), "TIFF"),
        "tiff_i32": _encode(Image.fromarray(np.arange(12, dtype=np.int32).reshape(3, 4) - 5), "TIFF"),
        "webp": _encode(rgb, "WEBP"),
        "png_huge": png_header(100_000, 100_000),  # 10 G pixels: Pillow's own bomb error
        "png_big": png_header(12_000, 12_000),  # 144 M pixels: only a Pillow warning
        "png_zero": png_header(0, 8),
        "text": b"this is not an image\n",
        "empty": b"",
    }
    jpeg = seeds["jpeg_rgb"]
    sof = jpeg.index(b"\xff\xc0")
    seeds["jpeg_huge"] = _patch(jpeg, sof + 5, struct.pack(">HH", 65_000, 65_000))
    gif = seeds["gif_animated"]
    seeds["gif_huge"] = _patch(gif, 6, struct.pack("<HH", 65_535, 65_535))
    seeds["bmp_huge"] = _patch(seeds["bmp"], 18, struct.pack("<ii", 100_000, 100_000))
    return seeds


SEEDS = _seed_images()
PNG_OK = SEEDS["png_rgb"]
EXTENSIONS = [".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".webp", ".PNG", ".txt", ""]


@st.composite
def mutated_bytes(draw, seeds: dict[str, bytes] = SEEDS) -> bytes:
    """A seed file, maybe truncated, with some bytes overwritten or inserted."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "none"]))
        at = draw(st.integers(0, max(len(data), 1)))
        if op == "truncate":
            del data[at:]
        elif op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(max_size=8))
    return bytes(data)


def _load_image(path: Path) -> np.ndarray:
    image = load_image_rgb(path)
    h, w = image.shape[:2]
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and h > 0 and w > 0
    # the dataset readers rely on the header size matching the decoded image
    assert image_size(path) == (w, h), f"image_size {image_size(path)} != decoded {(w, h)}"
    return image


@given(data=st.one_of(mutated_bytes(), st.binary(max_size=64)), suffix=st.sampled_from(EXTENSIONS))
def test_fuzz_image_file(data, suffix):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"x{suffix}"
        path.write_bytes(data)
        expect_clean("image", _load_image, path)
        expect_clean("image_size", image_size, path)


def _image_corpus() -> list[Path]:
    return sorted((CORPUS / "image").iterdir())


@pytest.mark.parametrize("path", _image_corpus(), ids=lambda p: p.name)
def test_image_corpus(path):
    """Regression inputs: files named ok_* load, every other one is refused with one line."""
    refused = REJECTED["image"]
    expect_clean("image", _load_image, path)
    assert (REJECTED["image"] == refused) == path.name.startswith("ok_"), path.name


@pytest.mark.parametrize("seed", ["png_huge", "png_big", "jpeg_huge", "gif_huge", "bmp_huge"])
def test_decompression_bomb_refused_before_decoding(tmp_path, seed):
    from fuzz_harness import memory_growth_mb

    from edgecsp.bench.memory import PeakRSS

    path = tmp_path / "bomb.png"
    path.write_bytes(SEEDS[seed])
    with PeakRSS() as memory:
        for fn in (load_image_rgb, image_size):
            with pytest.raises(Exception) as info:
                fn(path)
            assert type(info.value).__name__ == "EdgeCSPError" and "pixels" in str(info.value), str(info.value)
    assert memory_growth_mb(memory) < 100, "the bomb was decoded before being refused"


def test_directory_named_like_an_image(tmp_path):
    (tmp_path / "dir.png").mkdir()
    assert expect_clean("image", load_image_rgb, tmp_path / "dir.png") is None
    assert expect_clean("image_size", image_size, tmp_path / "dir.png") is None


def test_png_named_jpg_loads_and_text_named_png_is_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(PNG_OK)
    assert expect_clean("image", _load_image, tmp_path / "a.jpg").shape == (8, 12, 3)
    (tmp_path / "b.png").write_text("hello")
    assert expect_clean("image", _load_image, tmp_path / "b.png") is None


# ---------------------------------------------------------------- COCO annotations


def _coco_base() -> dict:
    return {
        "info": {"description": "fuzz seed"},
        "images": [{"id": 1, "file_name": "a.png", "width": 12, "height": 8},
                   {"id": 2, "file_name": "sub/b.png", "width": 12, "height": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 3], "area": 12, "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0, 0, 12, 8], "area": 96, "iscrowd": 0},
                        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 2, 2, 2], "area": 4, "iscrowd": 1}],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    """images/a.png, images/sub/b.png, plus secret.png outside images/ for ../ and absolute names."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images" / "sub").mkdir(parents=True)
    for rel in ("images/a.png", "images/sub/b.png", "secret.png"):
        (root / rel).write_bytes(PNG_OK)
    (root / "images" / "text.png").write_text("not an image")
    (root / "images" / "dir.png").mkdir()
    return root


def _check_dataset(ds) -> int:
    """Load every item; what a dataset gives must be in range and inside its images directory."""
    images_dir = ds.images_dir.resolve()
    for i in range(len(ds)):
        assert ds.image_path(i).resolve().is_relative_to(images_dir), ds.image_path(i)
        image, boxes, labels = ds[i]
        h, w = image.shape[:2]
        assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4) and labels.dtype == np.int64
        assert np.isfinite(boxes).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert ((labels >= 0) & (labels < ds.num_classes)).all()
    return len(ds)


def _load_coco(root: Path) -> int:
    return _check_dataset(resolve_dataset(root))


def _json_values(secret: str) -> st.SearchStrategy:
    names = st.sampled_from(["a.png", "sub/b.png", "sub", "", ".", "../secret.png", "sub/../../secret.png",
                             secret, "/", "text.png", "dir.png", "a.png\n", "a\nb.png", "\x00.png", "A.PNG",
                             "x" * 300 + ".png"])
    numbers = st.one_of(st.integers(-10, 20), st.integers(-(10**30), 10**30), st.sampled_from([10**400, 2**63]),
                        st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.5, 1e308, -0.0]))
    scalars = st.one_of(st.none(), st.booleans(), numbers, names, st.text(max_size=8))
    boxes = st.lists(numbers, max_size=6)
    return st.one_of(scalars, boxes, st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                                                  | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6))


FIELDS = {
    "images": ["id", "file_name", "width", "height"],
    "annotations": ["id", "image_id", "category_id", "bbox", "iscrowd", "area"],
    "categories": ["id", "name"],
}
_coord = st.floats(-20, 30) | st.integers(-20, 30) | st.sampled_from([math.nan, math.inf, 1e-9, 7.999999996])
PLAUSIBLE = {  # values of the right type, so mutations get past the type checks to the value checks
    "id": st.integers(-1, 4), "image_id": st.integers(0, 3), "category_id": st.integers(0, 4),
    "width": st.integers(0, 13) | st.just(12.0), "height": st.integers(0, 9), "iscrowd": st.integers(0, 1),
    "bbox": st.lists(_coord, min_size=4, max_size=4), "area": _coord, "name": st.text(max_size=3),
    "file_name": st.sampled_from(["a.png", "sub/b.png", "text.png", "../secret.png", "b.png"]),
}


@st.composite
def coco_documents(draw, secret: str):
    """The seed document with a few structured mutations: wrong types, bad values, missing keys."""
    doc = _coco_base()
    values = _json_values(secret)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["field"] * 6 + ["delete_field", "element", "duplicate", "top", "delete_top"]))
        key = draw(st.sampled_from(sorted(FIELDS)))
        items = doc.get(key)
        if op == "top":
            doc[key] = draw(values)
        elif op == "delete_top":
            doc.pop(key, None)
        elif isinstance(items, list) and items:
            k = draw(st.integers(0, len(items) - 1))
            if op == "duplicate":
                items.append(json.loads(json.dumps(items[k])))
            elif op == "element":
                items[k] = draw(values)
            elif isinstance(items[k], dict):
                field = draw(st.sampled_from(FIELDS[key]) | st.text(max_size=4))
                if op == "delete_field":
                    items[k].pop(field, None)
                else:
                    items[k][field] = draw(PLAUSIBLE.get(field, values) | values)
    return doc


@given(data=st.data())
def test_fuzz_coco_structured(coco_root, data):
    doc = data.draw(coco_documents(str(coco_root / "secret.png")))
    (coco_root / "annotations.json").write_text(json.dumps(doc))
    expect_clean("coco", _load_coco, coco_root)


@given(raw=st.one_of(st.binary(max_size=200),
                     st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=10),
                                  lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                      st.sampled_from(["images", "annotations", "categories", "id", "bbox"])
                                      | st.text(max_size=5), c, max_size=4), max_leaves=12)))
def test_fuzz_coco_arbitrary(coco_root, raw):
    """Arbitrary bytes and arbitrary JSON documents as the annotation file."""
    (coco_root / "annotations.json").write_bytes(raw if isinstance(raw, bytes) else json.dumps(raw).encode())
    expect_clean("coco", _load_coco, coco_root)


def test_fuzz_coco_deep_nesting(coco_root):
    (coco_root / "annotations.json").write_text("[" * 100_000 + "]" * 100_000)
    assert expect_clean("coco", _load_coco, coco_root) is None


def _coco_corpus() -> list[Path]:
    return sorted((CORPUS / "coco").glob("*.json"))


@pytest.mark.parametrize("path", _coco_corpus(), ids=lambda p: p.name)
def test_coco_corpus(coco_root, path):
    """Regression inputs (annotation files over the fixture's images): ok_* load, the rest are refused.

    ``SECRET`` in a file stands for the absolute path of a real image outside images/.
    """
    raw = path.read_bytes().replace(b"SECRET", str(coco_root / "secret.png").encode())
    (coco_root / "annotations.json").write_bytes(raw)
    refused = REJECTED["coco"]
    expect_clean("coco", _load_coco, coco_root)
    assert (REJECTED["coco"] == refused) == path.name.startswith("ok_"), path.name


def test_coco_explicit_paths_and_missing_images_dir(coco_root, tmp_path):
    (tmp_path / "ann.json").write_text(json.dumps(_coco_base()))
    assert expect_clean("coco", lambda: _check_dataset(CocoDataset(tmp_path / "ann.json", coco_root / "images"))) == 2
    assert expect_clean("coco", CocoDataset, tmp_path / "ann.json", tmp_path / "nope") is None
    assert expect_clean("coco", CocoDataset, tmp_path, coco_root / "images") is None  # a directory as the file


# ---------------------------------------------------------------- YOLO txt datasets

_tokens = st.one_of(
    st.integers(-3, 5).map(str), st.integers(-(10**25), 10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0.5", "1.0", "0", "1e999", "-1e999", "nan", "inf", "1_0", "0x1", "٣", "1.5", "", "#"]),
    st.text(max_size=4),
)
_coord = st.floats(-0.5, 1.5) | st.sampled_from([0.0, 1.0, 0.5, 1e-9, math.nan, math.inf])
_good_line = st.tuples(st.integers(-1, 3), _coord, _coord, _coord, _coord).map(lambda t: " ".join(map(str, t)))
_label_text = st.lists(_good_line | st.lists(_tokens, max_size=7).map(" ".join), max_size=4).map("\n".join)
_label_file = st.one_of(_label_text, st.binary(max_size=16), st.just(None), st.just("dir"))
_image_kind = st.sampled_from(["png"] * 4 + ["jpeg_named_png", "text", "empty", "dir", "huge"])


@st.composite
def yolo_layouts(draw):
    stems = draw(st.lists(st.sampled_from(["a", "b", "sub/c", "d.e", "new\nline"]), unique=True, min_size=1, max_size=3))
    images = {s: (draw(_image_kind), draw(st.sampled_from([".png", ".jpg", ".tif"]))) for s in stems}
    labels = {s: draw(_label_file) for s in draw(st.lists(st.sampled_from(["a", "b", "sub/c", "d.e", "new\nline",
                                                                           "orphan"]),
                                                          unique=True, max_size=4))}
    classes = draw(st.one_of(st.just("x\ny\nz\n"), st.just("x\ny\nz\n"), st.none(), st.text(max_size=10),
                             st.binary(max_size=10), st.just("dir")))
    names = draw(st.one_of(st.none(), st.none(), st.lists(st.text(max_size=3), max_size=3)))
    return images, labels, classes, names


def _write_yolo(root: Path, images: dict, labels: dict, classes) -> None:
    content = {"png": PNG_OK, "jpeg_named_png": SEEDS["jpeg_rgb"], "text": b"hello", "empty": b"",
               "huge": SEEDS["png_huge"]}
    for stem, (kind, ext) in images.items():
        path = root / "images" / f"{stem}{ext}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            path.mkdir()
        else:
            path.write_bytes(content[kind])
    (root / "labels").mkdir(exist_ok=True)
    for stem, text in labels.items():
        path = root / "labels" / f"{stem}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if text == "dir":
            path.mkdir()
        elif text is not None:
            path.write_bytes(text if isinstance(text, bytes) else text.encode())
    if classes == "dir":
        (root / "classes.txt").mkdir()
    elif classes is not None:
        (root / "classes.txt").write_bytes(classes if isinstance(classes, bytes) else classes.encode())


def _load_yolo(root: Path, names) -> int:
    ds = YoloDataset(root, names=names)
    n = _check_dataset(ds)
    # a YOLO set that loads must also convert to COCO and load back the same
    coco = CocoDataset(ds.to_coco(root / "annotations.json"), ds.images_dir)
    for i in range(n):
        np.testing.assert_allclose(coco.targets(i)[0], ds.targets(i)[0], atol=1e-3)
    return n


@given(layout=yolo_layouts())
@example(layout=({"a": ("png", ".png")}, {"a": b"\xff\xfe0 0.5"}, "x\n", None))  # label not UTF-8
@example(layout=({"a": ("png", ".png")}, {}, b"\xff\xfex\n", None))  # classes.txt not UTF-8
@example(layout=({"a": ("png", ".png")}, {"a": "0 0.5 0.5 1e999 0.5"}, "x\n", None))  # inf box
@example(layout=({"a": ("png", ".png")}, {"a": "0 nan 0.5 0.5 0.5"}, "x\n", None))  # NaN box
@example(layout=({"a": ("png", ".png")}, {"a": "0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.5 0.5"}, None, ["x\ny", ""]))
@example(layout=({"a": ("huge", ".png")}, {}, "x\n", None))  # decompression-bomb header
@example(layout=({"a": ("dir", ".png")}, {}, "x\n", None))  # a directory named like an image
@example(layout=({"a": ("png", ".png")}, {"orphan": "0 0.5 0.5 0.5 0.5"}, "x\n", None))  # label without image
@example(layout=({"a": ("png", ".png")}, {"a": "0 0.0 1.0 1.0 1e-09"}, "x\n", None))  # 4e-9 px: 0 in float32
@example(layout=({"a": ("png", ".png")}, {}, None, []))  # no class names given: no COCO categories either
@example(layout=({"new\nline": ("text", ".png")}, {}, "x\n", None))  # newline in a file name: still one line
def test_fuzz_yolo(layout):
    images, labels, classes, names = layout
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _write_yolo(root, images, labels, classes)
        expect_clean("yolo", _load_yolo, root, names)


def test_yolo_finite_boxes_only():
    """Labels with NaN/inf coordinates are dropped (with a DataWarning), never reach training."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        _write_yolo(root, {"a": ("png", ".png")}, {"a": "0 nan 0.5 0.5 0.5\n0 0.5 0.5 inf 0.2\n0 0.5 0.5 0.5 0.5"},
                    "x\n")
        with pytest.warns(Warning, match="dropped 2"):
            ds = YoloDataset(root)
        assert ds.targets(0)[0].shape == (1, 4) and math.isfinite(float(ds.targets(0)[0].sum()))
