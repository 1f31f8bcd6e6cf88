"""Code metrics the architecture issue reports: function lengths and the package import graph.

    python tools/code_metrics.py lengths worker     median, p90 and max lines per function
    python tools/code_metrics.py graph .            which top-level package imports which

Reads the source with `ast`; imports nothing of the project.
"""

from __future__ import annotations

import ast
import statistics
import sys
from pathlib import Path

OUTSIDE = {"tests", "bench", "demo", "tools"}


def lengths(folder: Path) -> str:
    """Lines of every function and method under `folder`, def to last line: count, median, p90, max."""
    found = sorted(
        (node.end_lineno - node.lineno + 1, f"{path}:{node.name}")
        for path in sorted(folder.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None
    )
    values = [length for length, _ in found]
    p90 = values[int(0.9 * (len(values) - 1))]
    return (
        f"{folder}: {len(values)} functions, median {statistics.median(values):g}, p90 {p90}, "
        f"max {values[-1]} ({found[-1][1]})"
    )


def graph(root: Path) -> str:
    """Each package's imports of the other top-level packages, and the pairs that import each other."""
    packages = sorted({p.parent.name for p in root.glob("*/__init__.py")} - OUTSIDE)
    edges: dict[str, set[str]] = {p: set() for p in packages}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                edges[package] |= {n.split(".")[0] for n in names} & set(packages) - {package}
    lines = [f"{p:12} -> {', '.join(sorted(edges[p])) or '-'}" for p in packages]
    mutual = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if a in edges[b]})
    lines.append(f"packages that import each other: {mutual or 'none'}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("lengths", "graph"):
        print(__doc__, file=sys.stderr)
        return 2
    print(lengths(Path(argv[1])) if argv[0] == "lengths" else graph(Path(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
