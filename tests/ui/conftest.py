"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the running service.

Chromium is found at LORAQ_TEST_CHROMIUM (default /usr/bin/chromium). Without it, or without the `playwright`
package, these tests are skipped locally and fail in CI (LORAQ_TEST_REQUIRE_SERVERS=1), like the other servers.
Screenshots of each page go to LORAQ_TEST_SCREENSHOTS if set, else to `screenshots/` in pytest's base temp folder.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployments import API_KEY
from tests.servers import missing

CHROMIUM = Path(os.environ.get("LORAQ_TEST_CHROMIUM", "/usr/bin/chromium"))
# The dashboard is static files calling /v1: the same in both deployments, so it is tested once, on the embedded
# one (`loraq up`, which prints its address), to keep the suite fast.
DEPLOYMENT = "sqlite+embedded-redis"
TIMEOUT_MS = 60_000


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Python Playwright (pip install playwright, in the test extra)")
    if not CHROMIUM.exists():
        missing(f"Chromium at {CHROMIUM} (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    configured = os.environ.get("LORAQ_TEST_SCREENSHOTS")
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Dashboard:
    """One browser tab on the dashboard, with the errors its scripts raised."""

    def __init__(self, page, base_url: str, screenshots: Path, test_name: str):
        self.page, self.base_url, self.folder, self.test_name = page, base_url, screenshots, test_name
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))

    def open(self, path: str = "/ui/") -> None:
        self.page.goto(self.base_url + path)

    def sign_in(self, key: str = API_KEY, path: str = "/ui/") -> None:
        self.open(path)
        self.page.fill("#api-key", key)
        self.page.click("form.signin-card button[type=submit]")
        self.page.wait_for_selector("body.signed-in")

    def shoot(self, name: str) -> Path:
        path = self.folder / f"{self.test_name}--{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def wait_until(self, predicate, what: str, timeout: float = TIMEOUT_MS / 1000, every: float = 0.25):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            # Not time.sleep: Playwright's sync API delivers page events (requests, console) only while it runs.
            self.page.wait_for_timeout(every * 1000)
        self.shoot("timeout")
        raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture
def dashboard(request, browser, service, screenshots) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    view = Dashboard(page, service.base_url, screenshots, request.node.name.replace("[", "-").rstrip("]"))
    yield view
    context.close()
    # An API answer of 4xx (a wrong key, a bad upload, no such job) is logged by the browser as a failed resource
    # and shown by the page; anything else, an uncaught exception above all, is a bug in the page.
    errors = [e for e in view.errors if not re.search(r"Failed to load resource: .* status of 4\d\d", e)]
    assert not errors, errors
