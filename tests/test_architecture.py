"""The dependency rule of STYLE.md §6, checked on the source: layers import only downwards."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "labmw"

# What each package (and each top-level module) may import from outside the standard library:
# labmw modules and third-party distributions. Every package under labmw/ must have an entry, so a
# new package states its place in the graph (STYLE.md §6) when it is added.
_BASE = ("labmw.errors", "labmw.model")
ALLOWED: dict[str, tuple[str, ...]] = {
    "errors": (),
    "model": (),
    "log": ("structlog",),
    "wire": ("labmw.errors", "labmw.wire", "hl7"),  # hl7 only for hl7_codec (segment parsing, no I/O)
    "rules": (*_BASE, "labmw.rules"),
    "mapping": (*_BASE, "labmw.wire", "labmw.mapping"),
    "store": (*_BASE, "labmw.store", "psycopg", "psycopg_pool"),  # psycopg: PostgreSQL
    # config reads [qc] through labmw.qc.settings, which itself needs only errors and rules.
    "config": (*_BASE, "labmw.config", "labmw.config_schema", "labmw.rules", "labmw.qc"),
    # Quality control (issue 12): its settings sit below config; recognition, the run judgement on the
    # store thread and the status beside the daemon; the Levey-Jennings chart draws with matplotlib.
    "qc": (*_BASE, "labmw.config", "labmw.rules", "labmw.store", "labmw.qc", "matplotlib"),
    "config_edit": (*_BASE, "labmw.config", "labmw.store", "tomlkit"),
    "config_schema": (*_BASE,),
    # Transports move bytes: they know the wire engines and the settings, never the daemon, the
    # store, the rules or the mapping (the intake hands them an Outcome from the model).
    "transports": (*_BASE, "labmw.config", "labmw.wire", "labmw.transports", "structlog", "serial"),
    "daemon": (*_BASE, "labmw", "labmw.config", "labmw.config_edit", "labmw.log", "labmw.wire", "labmw.mapping",
               "labmw.rules", "labmw.store", "labmw.transports", "labmw.daemon", "structlog", "hl7", "tomlkit",
               "prometheus_client", "labmw.qc"),  # the metrics endpoint (daemon/metrics.py)
    "cli": (*_BASE, "labmw", "labmw.cli", "labmw.config", "labmw.config_edit", "labmw.log", "labmw.wire",
            "labmw.mapping", "labmw.rules", "labmw.store", "labmw.transports", "labmw.daemon", "structlog",
            "typer", "tomlkit", "serial", "hl7", "labmw.web", "labmw.qc"),
    # The review workstation sits beside the CLI at the top: only the CLI imports it.
    "web": (*_BASE, "labmw.config", "labmw.store", "labmw.daemon", "labmw.web", "structlog", "starlette",
            "uvicorn", "jinja2", "argon2", "labmw.qc", "labmw.wire.visible"),
    "__main__": ("labmw.cli",),
    "__init__": (),
}
# No module outside these may use them.
FORBIDDEN_IN_WIRE_AND_RULES = ("asyncio", "socket", "sqlite3", "logging", "structlog", "serial", "time", "threading")


def _units() -> dict[str, list[Path]]:
    """Every package (its files) and every top-level module under labmw/."""
    units: dict[str, list[Path]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        units.setdefault(parts[0] if len(parts) > 1 else path.stem, []).append(path)
    return units


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


def test_every_package_has_a_place_in_the_graph() -> None:
    """A package without an entry in ALLOWED would go unchecked."""
    assert sorted(set(_units()) - set(ALLOWED)) == []


@pytest.mark.parametrize("layer", sorted(_units()))
def test_layer_imports_only_what_it_may(layer: str) -> None:
    """Each package imports only the stdlib and what its entry in ALLOWED names."""
    for path in _units()[layer]:
        for name in _imports(path):
            if layer in ("wire", "rules") and name.split(".")[0] in FORBIDDEN_IN_WIRE_AND_RULES:
                pytest.fail(f"{path.relative_to(PACKAGE)} imports {name}: {layer} must stay free of I/O and clocks")
            if _is_stdlib(name):
                continue
            assert any(name == a or name.startswith(a + ".") for a in ALLOWED.get(layer, ())), (
                f"{path.relative_to(PACKAGE)} imports {name}")


def test_transports_never_import_the_daemon() -> None:
    """The daemon drives the transports, not the other way round (issue #10 item 1)."""
    for path in _units()["transports"]:
        assert not any(n.startswith("labmw.daemon") for n in _imports(path)), path


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
