"""The dependency rule of STYLE.md §6, checked on the source: layers import only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labmw"

# What each layer may import from outside the standard library (labmw modules and third-party packages).
ALLOWED: dict[str, tuple[str, ...]] = {
    "wire": ("labmw.errors", "labmw.wire", "hl7"),  # hl7 only for hl7_codec (segment parsing, no I/O)
    "rules": ("labmw.errors", "labmw.model", "labmw.rules"),
    "mapping": ("labmw.errors", "labmw.model", "labmw.wire", "labmw.mapping"),
    "store": ("labmw.errors", "labmw.model", "labmw.store", "psycopg", "psycopg_pool"),  # psycopg: PostgreSQL
}
# No module outside these may use them.
FORBIDDEN_IN_WIRE_AND_RULES = ("asyncio", "socket", "sqlite3", "logging", "structlog", "serial", "time", "threading")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _is_stdlib(name: str) -> bool:
    import sys

    return name.split(".")[0] in sys.stdlib_module_names or name == "__future__"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    """wire, rules, mapping and store import only the stdlib and the layers below them."""
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for name in _imports(path):
            if layer in ("wire", "rules") and name.split(".")[0] in FORBIDDEN_IN_WIRE_AND_RULES:
                pytest.fail(f"{path.relative_to(PACKAGE)} imports {name}: {layer} must stay free of I/O and clocks")
            if _is_stdlib(name):
                continue
            assert any(name == a or name.startswith(a + ".") for a in ALLOWED[layer]), (
                f"{path.relative_to(PACKAGE)} imports {name}")


def test_only_the_store_touches_sqlite() -> None:
    """sqlite3 is imported by labmw.store alone."""
    for path in PACKAGE.rglob("*.py"):
        if "store" in path.relative_to(PACKAGE).parts:
            continue
        assert "sqlite3" not in _imports(path), path


def test_only_the_store_touches_postgresql() -> None:
    """psycopg (and its pool) are imported by labmw.store alone."""
    for path in PACKAGE.rglob("*.py"):
        if "store" in path.relative_to(PACKAGE).parts:
            continue
        assert not {n.split(".")[0] for n in _imports(path)} & {"psycopg", "psycopg_pool"}, path


def test_nothing_imports_the_cli() -> None:
    """The CLI is the top of the graph."""
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        assert not any(n.startswith("labmw.cli") for n in _imports(path)), path


def test_test_modules_have_unique_names() -> None:
    """tests/ has no __init__.py files, so two test modules with one basename would not both be collected."""
    names = [p.name for p in (PACKAGE.parent / "tests").rglob("*.py")]
    assert sorted({n for n in names if names.count(n) > 1 and n != "conftest.py"}) == []
