"""Which package may import which: read from the source with ``ast``, so a broken rule fails here.

- ``rag/`` and ``routing/`` are libraries: neither imports ``assistant/``, a front end (``app``, ``ui``,
  Chainlit) or the tests;
- ``rag/`` does not import ``routing/`` (retrieval knows nothing of models);
- ``benchmarks/`` and ``assistant/`` never import ``tests/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "rag": {"assistant", "app", "ui", "chainlit", "tests", "benchmarks", "routing"},
    "routing": {"assistant", "app", "ui", "chainlit", "tests", "benchmarks"},
    "benchmarks": {"tests"},
    "assistant": {"tests", "app", "ui"},
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (top level, inside functions, relative ones resolved), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(ROOT).parent.parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def violations(package: str) -> list[str]:
    broken = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, module in imported_modules(path):
            top = module.split(".")[0]
            if top in FORBIDDEN[package]:
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return broken


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_follow_the_dependency_direction(package):
    assert violations(package) == []


def test_the_check_sees_every_kind_of_import():
    # The rule is only as good as the parser: each form of import is seen, relative ones resolved.
    module = ROOT / "routing" / "_dependency_probe.py"
    module.write_text(
        "import assistant.settings\n"
        "def f():\n    from assistant import pipeline\n"
        "from ..assistant import events\n"
        "from . import client\n"
    )
    try:
        found = [name for _, name in imported_modules(module)]
        assert sorted(found) == ["assistant", "assistant", "assistant.settings", "routing"]
        assert len([v for v in violations("routing") if "_dependency_probe" in v]) == 3
    finally:
        module.unlink()
