"""The shape of the code, in numbers a reviewer can compare before and after a change.

    python benchmarks/code_shape.py [--root DIR] [--top 15] [--json]

Prints the longest functions of the package (lines from ``def`` to the last line of the body)
and how many functions are over 50 lines. The import layers are checked by tests/test_layers.py.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def function_lengths(package: Path) -> list[tuple[int, str]]:
    rows = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                rows.append((length, f"{path.relative_to(package.parent)}:{node.lineno} {node.name}"))
    return sorted(rows, key=lambda row: (-row[0], row[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    rows = function_lengths(args.root / "edgecsp")
    over_50 = sum(1 for length, _ in rows if length > 50)
    if args.json:
        print(json.dumps({"longest": [{"lines": n, "function": f} for n, f in rows[:args.top]],
                          "functions": len(rows), "over_50_lines": over_50}, indent=2))
        return 0
    print("| lines | function |\n|---:|---|")
    for length, where in rows[:args.top]:
        print(f"| {length} | `{where}` |")
    print(f"\n{len(rows)} functions, {over_50} over 50 lines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
