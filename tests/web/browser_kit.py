"""What the browser tests share: Debian's chromium, the labmw CLI in this process, the lab they run
against (:func:`workstation`), and the steps every page test takes (log in, screenshot and check the
page rendered, read the audit trail).

The ``browser`` and ``page`` fixtures are in this folder's conftest.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from peers import MllpLis, configure, daemon, free_port, labmw, listening, wait_until

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    if not CHROMIUM.exists():  # pragma: no cover - .ci/run installs it; say so loudly rather than skip quietly
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install chromium` (.ci/run does this as root)", pytrace=False)


def cli(config: Path, *args: str, input: str | None = None) -> str:
    """One labmw command in this process (peers.labmw); what it printed. The daemon itself is a real process."""
    return labmw(config, *args, input=input).stdout


@dataclass
class Station:
    """A running lab with the workstation: where to send results and where to browse."""

    config: Path
    url: str
    lis: MllpLis
    analyzer_port: int
    shots: Path  # screenshots go here


@contextmanager
def workstation(tmp: Path, users: Mapping[str, tuple[str, str]], *, setup: Callable[[Path], object] | None = None,
                web: str = "") -> Iterator[Station]:
    """The README's lab with ``[web]`` (and the ``web`` lines), ``users`` (name -> role, password), a
    real MLLP LIS and the daemon serving. ``setup(config)`` runs before the daemon starts."""
    lis_port, analyzer_port, web_port = free_port(), free_port(), free_port()
    config = configure(tmp, lis_port, analyzer_port)
    if setup is not None:
        setup(config)
    with config.open("a") as fh:
        fh.write(f'\n[web]\nlisten = "127.0.0.1:{web_port}"\n{web}')
    for name, (role, password) in users.items():
        cli(config, "user", "add", name, "--role", role, "--password-stdin", input=password + "\n")
    shots = tmp / "screenshots"
    shots.mkdir()
    lis = MllpLis(lis_port).start()
    try:
        with daemon(config, wait_port=analyzer_port, log=tmp / "daemon.log"):
            wait_until(lambda: listening(web_port), what="the daemon's web listener")
            yield Station(config=config, url=f"http://127.0.0.1:{web_port}", lis=lis, analyzer_port=analyzer_port,
                          shots=shots)
    finally:
        lis.stop()


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
