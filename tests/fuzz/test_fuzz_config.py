"""Fuzzing the TOML configs: target profiles, calibration recipes, nightly suites and their reader.

Inputs are arbitrary bytes, random text, TOML-looking text spliced from the real files, and
structured mutations of the real files (wrong types, bad values, missing, unknown and misspelt
keys, tables replaced by scalars). Each must load into sane values or be refused with one
EdgeCSPError line. Inputs that once found a bug are the files under corpus/<loader>/.
"""

from __future__ import annotations

import datetime
import json
import math
import tempfile
from pathlib import Path

import pytest
import tomllib
from fuzz_harness import REJECTED, expect_clean
from hypothesis import given
from hypothesis import strategies as st

from edgecsp.bench.harness import SCENARIOS
from edgecsp.bench.suite import load_suite
from edgecsp.calibration import METHODS, SOURCES, load_recipe
from edgecsp.errors import EdgeCSPError
from edgecsp.targets import PRECISIONS, load_target
from edgecsp.tomlfile import read_toml

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
TARGET_FILES = sorted((REPO / "targets").glob("*.toml"))
RECIPE_FILES = sorted((REPO / "calibration").glob("*.toml"))
SUITE_FILE = REPO / "benchmarks" / "nightly.toml"
REAL_FILES = TARGET_FILES + RECIPE_FILES + [SUITE_FILE]
pytestmark = [pytest.mark.filterwarnings("error::RuntimeWarning")]


# ---------------------------------------------------------------- what a loaded config must look like


def _number(v, low=-math.inf) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= low


def _int(v, low=0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _check_target(profile):
    from edgecsp.backends import backend_names

    assert profile.backend in backend_names(), profile.backend
    assert all(isinstance(v, str) for v in (profile.name, profile.device, profile.description))
    assert profile.precisions and set(profile.precisions) <= set(PRECISIONS)
    assert profile.default_precision in profile.precisions
    assert _int(profile.input_size, 0)
    assert profile.batch == "dynamic" or _int(profile.batch, 1)
    assert isinstance(profile.max_ap50_drop, float) and _number(profile.max_ap50_drop, 0)
    assert all(isinstance(t, dict) for t in (profile.build, profile.benchmark, profile.hardware))
    bench = profile.benchmark  # what edgecsp.bench.run and the counters read from it
    assert bench.get("scenario", "latency") in SCENARIOS
    assert _number(bench.get("duration_s", 1), 0) and _number(bench.get("warmup_s", 0), 0)
    assert _int(bench.get("min_queries", 1), 1) and _int(bench.get("tegrastats_interval_ms", 1), 1)
    hw = profile.hardware  # what edgecsp.jetson and edgecsp.bench read from it
    assert all(isinstance(m, str) for key in ("models", "compatible") for m in hw.get(key, []))
    assert _int(hw.get("dla_cores", 0), 0) and isinstance(hw.get("fast_int8", True), bool)
    assert all(_number(hw.get(k, 1), 0) for k in ("peak_dram_gbps", "peak_gmacs", "emc_bus_width_bits"))
    json.dumps(profile.as_dict(), default=str)
    return profile


def _check_recipe(recipe):
    assert recipe.source in SOURCES and recipe.method in METHODS
    assert _int(recipe.num_images, 1) and _int(recipe.seed, 0)
    assert _number(recipe.percentile, 0) and 0 < recipe.percentile <= 100
    assert isinstance(recipe.per_channel, bool) and isinstance(recipe.keep_head_float, bool)
    assert isinstance(recipe.path, str) and isinstance(recipe.name, str)
    assert recipe.source == "shapes" or recipe.path
    recipe.digest()
    return recipe


def _check_suite(suite):
    assert suite.models and all(isinstance(m, str) for m in suite.models)
    assert suite.targets and set(suite.precisions) <= set(PRECISIONS) and set(suite.scenarios) <= set(SCENARIOS)
    assert isinstance(suite.rebuild, bool) and isinstance(suite.isolate, bool)
    assert suite.eval_images is None or _int(suite.eval_images, 1)
    assert _number(suite.job_timeout_s) and suite.job_timeout_s > 0
    assert suite.duration_s is None or (_number(suite.duration_s) and suite.duration_s > 0)
    assert suite.warmup_s is None or _number(suite.warmup_s, 0)
    assert suite.min_queries is None or _int(suite.min_queries, 1)
    assert suite.batch is None or _int(suite.batch, 1)
    assert all(isinstance(e, dict) and all(isinstance(v, str) for v in e.values()) for e in suite.exclude)
    th = suite.thresholds
    assert _number(th.throughput_drop_pct, 0) and _number(th.ap50_drop_points, 0)
    assert all(v is None or _number(v, 0) for v in (th.latency_p99_increase_pct, th.peak_rss_increase_pct))
    assert _int(th.baseline_runs, 1) and _int(th.min_baseline_runs, 1)
    suite.matrix()
    json.dumps(suite.as_dict(), default=str)
    return suite


LOADERS = {
    "toml": lambda p: read_toml(p, "config"),
    "target": lambda p: _check_target(load_target(p)),
    "recipe": lambda p: _check_recipe(load_recipe(p)),
    "suite": lambda p: _check_suite(load_suite(p)),
}


def _load_all(data: bytes, loaders=tuple(LOADERS)) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.toml"
        path.write_bytes(data)
        for name in loaders:
            expect_clean(name, LOADERS[name], path)


# ---------------------------------------------------------------- a small TOML writer for mutated documents


def _key(k: str) -> str:
    return json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v).replace("\x7f", "\\u007f")  # a JSON string is a TOML basic string
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    return str(v)


def dump_toml(doc: dict) -> str:
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for table, body in doc.items():
        if isinstance(body, dict):
            lines.append(f"[{_key(table)}]")
            lines += [f"{_key(k)} = {_value(v)}" for k, v in body.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- structured mutation of the real files

WORDS = ["fp32", "FP16", "int8 ", "bf16", "fp8", "dynamic", "static", "latency", "throughput", "offline", "minmax",
         "entropy", "percentile", "kl", "shapes", "coco", "folder", "yolo", "openvino", "tensorrt", "onnxruntime", "tvm",
         "CPU", "intel-cpu", "jetson", "jetson-nano", "no-such-board", "/nonexistent/data", "", " ", "median", "worst",
         "torch", "ort", "tensorflow", "demo", "edgecsp.jetson.profiles:detect_target", "edgecsp.no_such:detect",
         "no_such_module_xyz:detect", "edgecsp.jetson.profiles:no_such_function", "edgecsp.jetson.profiles", "a\nb"]
_scalars = st.one_of(
    st.integers(-5, 300), st.sampled_from([0, -1, 1, 2**63 - 1, -(2**63), 10**9]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -0.5, 0.5, 1e308, 99.999, 100.0, 100.5]),
    st.booleans(), st.sampled_from(WORDS), st.text(max_size=6),
    st.dates() | st.datetimes() | st.times(),
)
VALUES = st.one_of(_scalars, st.lists(_scalars, max_size=3),
                   st.dictionaries(st.sampled_from(["target", "model", "precision", "x"]), _scalars, max_size=2))


def _like(old) -> st.SearchStrategy:
    """A value of the same type as ``old``: gets past the type checks to the range and name checks."""
    if isinstance(old, bool):
        return st.booleans()
    if isinstance(old, int):
        return st.integers(-2, 300) | st.sampled_from([0, 2**63 - 1, 10**6])
    if isinstance(old, float):
        return st.floats(-10, 1e3) | st.sampled_from([0.0, math.nan, math.inf, 100.0, 100.5])
    if isinstance(old, str):
        return st.sampled_from(WORDS)
    if isinstance(old, list):
        return st.lists(st.sampled_from(WORDS), max_size=3)
    return VALUES


def _typo(draw, key: str) -> str:
    i = draw(st.integers(0, max(len(key) - 1, 0)))
    return draw(st.sampled_from([key[:i] + key[i + 1:], key + "s", key[:i] + key[i:i + 1] * 2 + key[i + 1:],
                                 key.upper(), key.replace("_", "-")]))


@st.composite
def mutated_documents(draw, files=REAL_FILES):
    doc = tomllib.loads(draw(st.sampled_from(files)).read_text())
    for _ in range(draw(st.integers(1, 3))):
        tables = [k for k, v in doc.items() if isinstance(v, dict)]
        op = draw(st.sampled_from(["set"] * 6 + ["delete", "typo", "replace_table", "new_table", "top"]))
        if op == "top":
            doc[draw(st.sampled_from(sorted(doc)) | st.text(max_size=5))] = draw(VALUES)
        elif op == "new_table":
            doc[draw(st.sampled_from(["targte", "accuracy", "benchmarks", "extra"]))] = {"x": draw(VALUES)}
        elif not tables:
            continue
        elif op == "replace_table":
            doc[draw(st.sampled_from(tables))] = draw(VALUES)
        else:
            body = doc[draw(st.sampled_from(tables))]
            if not body:
                continue
            key = draw(st.sampled_from(sorted(body)))
            if op == "set":
                body[key] = draw(_like(body[key]) | VALUES)
            elif op == "delete":
                del body[key]
            else:
                body[_typo(draw, key)] = body.pop(key)
    return dump_toml(doc)


@given(text=mutated_documents(TARGET_FILES))
def test_fuzz_target_profile(text):
    _load_all(text.encode(), ("toml", "target"))


@given(text=mutated_documents(RECIPE_FILES))
def test_fuzz_calibration_recipe(text):
    _load_all(text.encode(), ("toml", "recipe"))


@given(text=mutated_documents([SUITE_FILE]))
def test_fuzz_nightly_suite(text):
    _load_all(text.encode(), ("toml", "suite"))


# ---------------------------------------------------------------- unstructured input to every loader

_LINES = [line for f in REAL_FILES for line in f.read_text().splitlines()]


@given(data=st.one_of(
    st.binary(max_size=120),
    st.text(max_size=120).map(str.encode),
    st.lists(st.sampled_from(_LINES) | st.text(max_size=20), max_size=12).map(lambda ls: "\n".join(ls).encode()),
))
def test_fuzz_any_bytes_to_every_loader(data):
    _load_all(data)


def test_deep_nesting_is_refused():
    _load_all(("a = " + "[" * 50_000 + "]" * 50_000).encode())
    _load_all(("a = " + "{b = " * 3000 + "1" + "}" * 3000).encode())


@pytest.mark.parametrize("name", ["", ".", "..", "../calibration/default", "intel-cpu\n", "a\x00b", "x" * 300,
                                  "nope.toml", "/", "jetson-nano.TOML"])
def test_target_by_odd_name(name):
    expect_clean("target", lambda: _check_target(load_target(name)))


@pytest.mark.parametrize("name", ["", "..", "a\x00b", "x" * 300, "nope.toml", "default.json"])
def test_recipe_by_odd_name(name):
    expect_clean("recipe", lambda: _check_recipe(load_recipe(name)))


def test_a_directory_and_a_missing_file(tmp_path):
    (tmp_path / "d.toml").mkdir()
    for name in ("target", "recipe", "suite", "toml"):
        assert expect_clean(name, LOADERS[name], tmp_path / "d.toml") is None
        assert expect_clean(name, LOADERS[name], tmp_path / "missing.toml") is None


# ---------------------------------------------------------------- unknown keys are refused, the key named

def _typo_cases():
    cases = []
    for path in REAL_FILES:
        doc = tomllib.loads(path.read_text())
        for table, body in doc.items():
            if isinstance(body, dict) and body and table != "build":  # [build] is checked by the backend
                key = min(body)
                cases.append((path, table, key))
    return cases


@pytest.mark.parametrize("path, table, key", _typo_cases(), ids=lambda v: v.name if isinstance(v, Path) else v)
def test_misspelt_key_is_refused_by_name(tmp_path, path, table, key):
    doc = tomllib.loads(path.read_text())
    doc[table][key + "x"] = doc[table][key]
    (tmp_path / path.name).write_text(dump_toml(doc))
    loader = "suite" if path == SUITE_FILE else "recipe" if path in RECIPE_FILES else "target"
    with pytest.raises(EdgeCSPError, match=f"{key}x"):
        LOADERS[loader](tmp_path / path.name)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_misspelt_table_is_refused_by_name(tmp_path, path):
    (tmp_path / path.name).write_text(path.read_text() + "\n[benchmarks]\nduration_s = 5\n")
    loader = "suite" if path == SUITE_FILE else "recipe" if path in RECIPE_FILES else "target"
    with pytest.raises(EdgeCSPError, match="benchmarks"):
        LOADERS[loader](tmp_path / path.name)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_real_files_load(path):
    loader = "suite" if path == SUITE_FILE else "recipe" if path in RECIPE_FILES else "target"
    assert expect_clean(loader, LOADERS[loader], path) is not None


# ---------------------------------------------------------------- regression corpus


def _corpus() -> list[Path]:
    return sorted(p for loader in ("target", "recipe", "suite", "toml") for p in (CORPUS / loader).glob("*.toml"))


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_config_corpus(path):
    """Inputs that found bugs: corpus/<loader>/ok_* load, every other file is refused with one line."""
    loader = path.parent.name
    refused = REJECTED[loader]
    expect_clean(loader, LOADERS[loader], path)
    assert (REJECTED[loader] == refused) == path.name.startswith("ok_"), path.name


def test_alias_loop_is_refused(tmp_path):
    """Two profiles naming each other once recursed until RecursionError."""
    (tmp_path / "a.toml").write_text(f'[alias]\ndefault = "{tmp_path / "b.toml"}"\n')
    (tmp_path / "b.toml").write_text(f'[alias]\ndefault = "{tmp_path / "a.toml"}"\n')
    assert expect_clean("target", load_target, tmp_path / "a.toml") is None
