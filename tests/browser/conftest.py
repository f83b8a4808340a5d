"""Browser fixtures: the whole local stack and Debian's Chromium driven by Playwright.

Chromium comes from the Debian package (never `playwright install`); the stack is
shared by the tests of one module, a fresh browser context per test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def chromium_path() -> str:
    for candidate in ("/usr/lib/chromium/chromium", "/usr/bin/chromium"):
        if os.path.exists(candidate):
            return candidate
    pytest.skip("Debian's chromium package is not installed")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.free(Path(tmp_path_factory.mktemp("stack")), devices=2)
    with LocalStack(config) as running:
        running.wait_devices_ready(timeout=30)
        yield running


@dataclass
class Dashboard:
    """A page on the dashboard plus what it did that a user would notice."""

    page: Page
    stack: LocalStack
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    api_requests: list[str] = field(default_factory=list)

    def open(self, path: str = "/") -> Page:
        self.page.goto(self.stack.config.dashboard_url + path)
        return self.page

    def open_device(self, thing: str) -> Page:
        return self.open(f"/#/devices/{thing}")


@pytest.fixture
def dashboard(browser: Browser, stack: LocalStack) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    seen = Dashboard(page=page, stack=stack)

    def on_dialog(dialog: Any) -> None:
        seen.dialogs.append(dialog.message)
        dialog.dismiss()

    def on_request(request: Any) -> None:
        if request.url.startswith(stack.config.api_url) and request.method != "OPTIONS":
            seen.api_requests.append(f"{request.method} {request.url}")

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: seen.errors.append(str(exc)))
    page.on("request", on_request)
    yield seen
    context.close()
    assert seen.errors == [], f"uncaught errors in the page: {seen.errors}"


def read_shadow(stack: LocalStack, thing: str) -> dict[str, Any]:
    payload = stack.boto3_client("iot-data").get_thing_shadow(thingName=thing)["payload"].read()
    return json.loads(payload)


def report(stack: LocalStack, thing: str, reported: dict[str, Any]) -> None:
    """Write the classic shadow's reported section, as the device itself would."""
    body = json.dumps({"state": {"reported": reported}})
    stack.boto3_client("iot-data").update_thing_shadow(thingName=thing, payload=body)
