"""DESIGN.md's package boundaries, checked on the source: recsys depends on none of the other
packages, offline never talks to Kafka, and production code (streaming, serving) never imports
the simulators; only the demo may, to drive synthetic traffic."""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("recsys", "streaming", "offline", "simulators")


def is_serving_code(path: PurePosixPath) -> bool:
    """Serving code wherever it lands: a ``serving`` package or a ``serving.py`` module."""
    return "serving" in path.parts[:-1] or path.stem == "serving"


@dataclass(frozen=True)
class Rule:
    """Files in ``scope`` (a repo-relative folder or file, or a path predicate) must not import
    ``forbidden`` top-level packages, except the packages ``allowed`` names per file."""

    name: str
    scope: str | None
    forbidden: frozenset[str]
    allowed: dict[str, frozenset[str]] = field(default_factory=dict)
    matches: Callable[[PurePosixPath], bool] | None = None  # a scope defined by path shape

    def applies_to(self, path: PurePosixPath) -> bool:
        if self.matches is not None:
            return self.matches(path)
        scope = PurePosixPath(str(self.scope))
        return path == scope or scope in path.parents


RULES = (
    Rule("recsys is the base", "recsys", frozenset({"streaming", "offline", "simulators"})),
    Rule("offline reads the lake", "offline", frozenset({"streaming", "kafka", "simulators"})),
    Rule(
        "streaming is production code",
        "streaming",
        frozenset({"offline", "simulators"}),
        allowed={"streaming/demo.py": frozenset({"simulators"})},  # synthetic traffic
    ),
    Rule(
        "serving is production code",
        None,
        frozenset({"simulators"}),
        matches=is_serving_code,
    ),
)


def imported_packages(source: str, filename: str = "<source>") -> set[str]:
    """Top-level packages a module imports anywhere (also inside functions), including
    ``importlib.import_module("...")`` with a literal name."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id)
            in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value.split(".")[0])
    return names


def source_files(root: Path) -> Iterable[PurePosixPath]:
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            yield PurePosixPath(path.relative_to(root).as_posix())


def violations(root: Path, rules: Iterable[Rule] = RULES) -> list[str]:
    """Every forbidden import under ``root``, as 'path imports package (rule)'."""
    rules = list(rules)
    found = []
    for path in source_files(root):
        imported = imported_packages((root / path).read_text(), str(path))
        for rule in rules:
            if not rule.applies_to(path):
                continue
            allowed = rule.allowed.get(str(path), frozenset())
            for name in sorted(imported & (rule.forbidden - allowed)):
                found.append(f"{path} imports {name} ({rule.name})")
    return found


@pytest.mark.parametrize("rule", RULES, ids=[rule.name for rule in RULES])
def test_the_code_respects_the_design(rule: Rule) -> None:
    broken = violations(ROOT, [rule])
    assert not broken, "package boundary broken:\n" + "\n".join(broken)


def test_every_folder_rule_covers_files() -> None:
    """A rule whose folder was renamed would check nothing and pass; this catches it."""
    files = list(source_files(ROOT))
    for rule in RULES:
        if rule.scope is not None:
            assert any(rule.applies_to(path) for path in files), rule.name


def write(root: Path, relative: str, source: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))


def test_the_checker_finds_violations_in_a_synthetic_tree(tmp_path: Path) -> None:
    write(tmp_path, "streaming/worker.py", "import simulators.synthetic_traffic\n")
    write(
        tmp_path,
        "streaming/demo.py",
        """
        def run():
            from simulators.synthetic_traffic import generate_traffic  # allowed here
            from offline import pipeline  # not allowed, even in the demo
        """,
    )
    write(tmp_path, "streaming/lake.py", "import importlib\nimportlib.import_module('offline.x')\n")
    write(
        tmp_path,
        "recsys/serving/app.py",
        "from recsys.events import Impression\nfrom simulators.env import Env\n",
    )
    write(tmp_path, "recsys/serving/__init__.py", "from . import app\n")
    write(tmp_path, "simulators/env.py", "import streaming\nimport recsys\n")
    write(tmp_path, "recsys/bandits.py", "import simulators_extra  # not the simulators package\n")
    write(tmp_path, "offline/reader.py", "from kafka import KafkaConsumer\n")

    assert sorted(violations(tmp_path)) == sorted(
        [
            "streaming/worker.py imports simulators (streaming is production code)",
            "streaming/demo.py imports offline (streaming is production code)",
            "streaming/lake.py imports offline (streaming is production code)",
            "recsys/serving/app.py imports simulators (recsys is the base)",
            "recsys/serving/app.py imports simulators (serving is production code)",
            "offline/reader.py imports kafka (offline reads the lake)",
        ]
    )


def test_serving_code_is_recognised_by_its_path() -> None:
    assert is_serving_code(PurePosixPath("recsys/serving/app.py"))
    assert is_serving_code(PurePosixPath("streaming/serving/deploy.py"))
    assert is_serving_code(PurePosixPath("streaming/serving.py"))
    assert not is_serving_code(PurePosixPath("recsys/bandits/observing.py"))
