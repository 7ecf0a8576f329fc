"""What the browser tests share: Debian's chromium, the labmw CLI in this process, and the steps every
page test takes (log in, screenshot and check the page rendered, read the audit trail).

The ``browser`` and ``page`` fixtures are in this folder's conftest.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from peers import cli_command

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    if not CHROMIUM.exists():  # pragma: no cover - .ci/run installs it; say so loudly rather than skip quietly
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does this as root)", pytrace=False)


def cli(config: Path, *args: str, input: str | None = None) -> str:
    """One labmw command in this process; what it printed. The daemon itself is a real process."""
    result = CliRunner().invoke(cli_command(), ["--config", str(config), *args], input=input, prog_name="labmw")
    assert result.exit_code == 0, f"labmw {' '.join(args)}: {result.output}"
    return result.output


def login(page: object, url: str, name: str, password: str) -> None:
    page.goto(f"{url}/login")  # type: ignore[attr-defined]
    page.fill("input[name=name]", name)  # type: ignore[attr-defined]
    page.fill("input[name=password]", password)  # type: ignore[attr-defined]
    page.click("#login")  # type: ignore[attr-defined]


def shot(page: object, shots: Path, name: str) -> Path:
    """Screenshot the page and check it rendered: a real image, our layout, no error page."""
    path = shots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, f"{name}: screenshot looks empty"
    assert page.locator(".error-page").count() == 0, f"{name}: an error page: {page.inner_text('main')}"  # type: ignore[attr-defined]
    assert page.locator("header .brand").count() == 1  # type: ignore[attr-defined]
    return path


def audit(config: Path, *args: str) -> list[dict[str, object]]:
    """`labmw audit list ARGS --json`."""
    return json.loads(cli(config, "audit", "list", *args, "--json"))  # type: ignore[no-any-return]
