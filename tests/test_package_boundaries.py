"""DESIGN.md's package boundaries, checked on the source: recsys depends on none of the other
packages, offline never talks to Kafka, and production packages never import the simulators."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "recsys": {"streaming", "offline", "simulators"},
    "offline": {"streaming", "kafka", "simulators"},
    "streaming": {"offline"},
}
# The demo and benchmarks may drive synthetic traffic; serving and learning code may not.
ALLOWED = {("streaming", "demo.py", "simulators")}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_design(package: str) -> None:
    violations = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in imported_packages(path) & FORBIDDEN[package]:
            if (package, path.name, name) not in ALLOWED:
                violations.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not violations, "package boundary broken:\n" + "\n".join(violations)
