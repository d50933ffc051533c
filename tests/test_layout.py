"""The tests mirror the package (tests/README.md): every test file is named after a module of the
folder it mirrors, or is one of the concern-wide suites listed in the README."""

from __future__ import annotations

import re

from testpaths import REPO

TESTS = REPO / "tests"
PACKAGE = REPO / "edgecsp"


def concern_suites() -> set[str]:
    table = (TESTS / "README.md").read_text(encoding="utf-8").split("Concern-wide suites", 1)[1]
    return set(re.findall(r"^\| `([\w./]+?)/?`", table, flags=re.M))


def module_names(folder) -> set[str]:
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    return names | ({"main"} if "__main__" in names else set())


def test_every_test_file_is_named_after_a_module_of_the_folder_it_mirrors():
    concerns = concern_suites()
    wrong = []
    for path in sorted(TESTS.rglob("test_*.py")):
        rel = path.relative_to(TESTS)
        if rel.parts[0] in concerns or rel.name in concerns:
            continue
        mirrored = PACKAGE.joinpath(*rel.parts[:-1])
        stem = rel.stem[len("test_"):]
        own = {mirrored.name} if rel.parts[:-1] else set()
        if not mirrored.is_dir() or not any(stem == n or stem.startswith(n + "_")
                                            for n in module_names(mirrored) | own):
            wrong.append(str(rel))
    assert not wrong, f"test files named after no module of the folder they mirror (tests/README.md): {wrong}"


def test_the_concern_wide_suites_listed_exist():
    missing = [name for name in concern_suites() if not (TESTS / name).exists()]
    assert concern_suites() and not missing, missing
