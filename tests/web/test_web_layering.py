"""The web package sits beside the CLI at the top: only labmw.cli imports labmw.web."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "labmw"


def test_only_the_cli_imports_the_web_package() -> None:
    """daemon, store, config and the rest never import labmw.web (the daemon gets it handed in by `run`)."""
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] in ("cli", "web"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "labmw.web" or n.startswith("labmw.web.") for n in names), path


def test_templates_and_stylesheet_ship_in_the_package() -> None:
    """Everything a page needs is package data: no CDN, nothing to build."""
    web = PACKAGE / "web"
    assert (web / "static" / "style.css").is_file()
    for template in web.glob("templates/*.html"):
        text = template.read_text()
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
        assert "<script" not in text, f"{template.name}: pages work without scripts"
