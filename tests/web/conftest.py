"""The browser (Debian's chromium via Playwright, once per module) and a fresh page per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_kit import CHROMIUM, LAUNCH_ARGS, require_chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright import sync_api as playwright_api

    require_chromium()
    with playwright_api.sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # type: ignore[attr-defined]
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    yield opened
    context.close()
