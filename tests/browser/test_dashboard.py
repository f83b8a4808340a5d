"""The dashboard in Debian's Chromium against the whole local stack.

Each test is what a person would do and see: press the LED button and watch the
device change, meet an offline device, wait out a command, read hostile text,
and use a wrong key.
"""

from __future__ import annotations

import re
import shutil
import time

import pytest
from playwright.sync_api import Locator, expect

from iotbridge_local.config import free_port
from iotbridge_local.stack import LocalStack
from tests.browser.conftest import ARTIFACTS, Dashboard, read_shadow, report

pytestmark = [pytest.mark.browser, pytest.mark.stack]

XSS = "<img src=x onerror=alert(1)>"
DEVICE_TIMEOUT_MS = 20_000  # presence and reconnects go through the broker and the presence rule


def outcome_card(dashboard: Dashboard, action: str) -> Locator:
    return dashboard.page.locator(f"#detail .outcome[data-action='{action}']").first


def take_offline(stack: LocalStack, thing: str) -> None:
    stack.stop_device(thing)


def bring_back(stack: LocalStack, thing: str) -> None:
    if not stack.child_alive(f"device-{thing}"):
        stack.start_device(thing)
    stack.wait_devices_ready(timeout=30)


def test_led_button_switches_the_device_and_the_page_shows_it(dashboard: Dashboard) -> None:
    # GIVEN sim-1 online with its LED in some state, open in the dashboard
    stack = dashboard.stack
    before = read_shadow(stack, "sim-1")["state"]["reported"]["led"]
    target = "off" if before == "on" else "on"
    page = dashboard.open_device("sim-1")
    expect(page.locator("#detail .badge")).to_have_text("Online")

    # WHEN the user presses the LED button for the other state
    page.get_by_role("button", name=f"LED {target}").click()

    # THEN the outcome and its round trip appear, the device reports the new state,
    # and the page shows it in the hero and in the device list
    card = outcome_card(dashboard, "led")
    expect(card).to_have_attribute("data-state", "SUCCEEDED", timeout=15_000)
    expect(card).to_contain_text(re.compile(r"Round trip \d"))
    assert read_shadow(stack, "sim-1")["state"]["reported"]["led"] == target
    expect(page.get_by_test_id("led-state")).to_have_text(target.capitalize())
    expect(page.locator(".device-card[data-thing='sim-1'] .kv")).to_contain_text(f"led{target}")
    # and the outcome is announced to screen readers
    expect(page.locator("#detail .outcomes")).to_have_attribute("aria-live", "polite")


def test_offline_device_is_shown_offline_and_a_command_says_so(dashboard: Dashboard) -> None:
    # GIVEN sim-2 taken offline while the dashboard shows it
    stack = dashboard.stack
    page = dashboard.open_device("sim-2")
    expect(page.locator("#detail .badge")).to_have_text("Online")
    take_offline(stack, "sim-2")
    try:
        # THEN the list and the detail mark it offline, without a reload
        expect(page.locator(".device-card[data-thing='sim-2'] .badge")).to_have_text("Offline", timeout=DEVICE_TIMEOUT_MS)
        expect(page.locator("#detail .badge")).to_have_text("Offline", timeout=DEVICE_TIMEOUT_MS)

        # WHEN the user presses the LED button ("fail right away" is the default)
        page.get_by_role("button", name="LED on").click()

        # THEN a clear message names the device as offline and offers to queue
        card = outcome_card(dashboard, "led")
        expect(card).to_have_attribute("data-code", "DEVICE_OFFLINE")
        expect(card).to_contain_text("sim-2 is offline")
        expect(card.get_by_role("button", name="Queue it for up to 1 hour")).to_be_visible()
    finally:
        bring_back(stack, "sim-2")


def test_a_command_whose_wait_ran_out_shows_its_outcome_when_it_arrives(dashboard: Dashboard) -> None:
    # GIVEN sim-2 offline, and the user chose to queue and to wait only 1 s
    stack = dashboard.stack
    page = dashboard.open_device("sim-2")
    take_offline(stack, "sim-2")
    try:
        expect(page.locator("#detail .badge")).to_have_text("Offline", timeout=DEVICE_TIMEOUT_MS)
        page.get_by_label("Wait for an answer up to (s)").fill("1")
        page.get_by_label("If the device is offline").select_option(label="queue it for up to 10 minutes")
        posts: list[dict[str, object]] = []
        page.on("request", lambda r: posts.append(r.post_data_json) if r.method == "POST" else None)

        # WHEN the user pings it
        page.locator("#detail button[data-action='ping']").click()

        # THEN the API's 202 shows as queued, not as an error, for the time the user chose
        card = outcome_card(dashboard, "ping")
        expect(card).to_have_attribute("data-state", "QUEUED", timeout=15_000)
        expect(card).to_contain_text("queued")
        assert [(p["ifOffline"], p["ttlMs"]) for p in posts] == [("queue", 600_000)]  # type: ignore[index]

        # WHEN the device comes back
        bring_back(stack, "sim-2")

        # THEN the same card turns into the device's answer, without a reload
        expect(card).to_have_attribute("data-state", "SUCCEEDED", timeout=DEVICE_TIMEOUT_MS)
        expect(card).to_contain_text("sim-2 ran ping")
        expect(card).to_contain_text("pong")
        expect(page.locator("#detail .badge")).to_have_text("Online", timeout=DEVICE_TIMEOUT_MS)
    finally:
        bring_back(stack, "sim-2")


def test_device_reported_markup_is_shown_as_text(dashboard: Dashboard) -> None:
    # GIVEN the dashboard open on sim-1
    page = dashboard.open_device("sim-1")
    expect(page.locator("#detail .badge")).to_have_text("Online")

    # WHEN the device reports a string that is HTML
    report(dashboard.stack, "sim-1", {"label": XSS})
    try:
        # THEN the page shows those characters (live, without reload), builds no element
        # from them and no script runs
        row = page.locator("#detail .state-table tr[data-key='label'] td").nth(1)
        expect(row).to_have_text(XSS, timeout=10_000)
        expect(page.locator(".device-card[data-thing='sim-1'] .kv")).to_contain_text(XSS, timeout=10_000)
        assert page.locator("img").count() == 0
        assert dashboard.dialogs == []
    finally:
        report(dashboard.stack, "sim-1", {"label": None})


def test_a_wrong_api_key_gets_a_clear_message_and_settings_fix_it(dashboard: Dashboard) -> None:
    # GIVEN the dashboard working with the deployment's key
    page = dashboard.open()
    expect(page.locator(".device-card")).to_have_count(2)

    # WHEN the user saves a wrong key in Settings
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("API key").fill("not-the-key")
    page.get_by_role("button", name="Save").click()

    # THEN a banner says the key was refused and points to Settings
    banner = page.locator("#banner")
    expect(banner).to_be_visible(timeout=10_000)
    expect(banner).to_contain_text("API key")
    expect(page.locator("#api-status")).to_contain_text("Key refused")
    expect(banner.get_by_role("button", name="Open settings")).to_be_visible()

    # WHEN they go back to the defaults
    banner.get_by_role("button", name="Open settings").click()
    page.get_by_role("button", name="Use defaults").click()

    # THEN the banner goes away and the API is live again
    expect(banner).to_be_hidden(timeout=10_000)
    expect(page.locator("#api-status")).to_contain_text("Live")


def test_an_unreachable_api_gets_a_clear_message(dashboard: Dashboard) -> None:
    # GIVEN the dashboard pointed (through Settings) at a port where nothing listens
    page = dashboard.open()
    expect(page.locator(".device-card")).to_have_count(2)
    page.get_by_role("button", name="Settings").click()
    page.get_by_label("API URL").fill(f"http://127.0.0.1:{free_port()}")
    page.get_by_role("button", name="Save").click()

    # THEN it says the API cannot be reached, and where it looked
    banner = page.locator("#banner")
    expect(banner).to_contain_text("API unreachable", timeout=10_000)
    expect(banner).to_contain_text("Cannot reach the API at http://127.0.0.1:")
    expect(page.locator("#api-status")).to_contain_text("API unreachable")


def test_invalid_params_are_explained(dashboard: Dashboard) -> None:
    # GIVEN sim-1's set_interval form (seconds: int 1..3600)
    page = dashboard.open_device("sim-1")
    form = page.locator("#detail .action-card[data-action='set_interval']")
    form.get_by_label("seconds").fill("0")

    # WHEN the user runs it with a value out of range
    form.get_by_role("button", name="Run set_interval").click()

    # THEN the API's refusal is shown as an invalid command, naming the parameter
    card = outcome_card(dashboard, "set_interval")
    expect(card).to_contain_text("Invalid command")
    expect(card).to_contain_text("seconds")
    assert card.get_attribute("data-code") in {"INVALID_PARAMS", "VALIDATION_ERROR"}


def test_the_page_is_gentle_with_the_api(dashboard: Dashboard) -> None:
    # GIVEN a device open and the page at rest
    page = dashboard.open_device("sim-1")
    expect(page.locator("#api-status")).to_contain_text("Live")
    page.wait_for_timeout(1_000)

    # WHEN it sits visible for 6 s
    dashboard.api_requests.clear()
    page.wait_for_timeout(6_000)
    visible = len(dashboard.api_requests)

    # AND then hidden for 6 s
    page.evaluate(
        "Object.defineProperty(document, 'hidden', {value: true, configurable: true});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    page.wait_for_timeout(1_000)
    dashboard.api_requests.clear()
    page.wait_for_timeout(6_000)
    hidden = len(dashboard.api_requests)

    # THEN it kept the view live at about one request a second, and nearly stopped when hidden
    assert 2 <= visible <= 8, dashboard.api_requests
    assert hidden <= 1, dashboard.api_requests


def test_screenshots_and_small_screens(dashboard: Dashboard) -> None:
    # GIVEN a device open after pressing its LED button
    ARTIFACTS.mkdir(exist_ok=True)
    page = dashboard.open_device("sim-1")
    expect(page.locator("#detail .badge")).to_have_text("Online")
    page.get_by_role("button", name="LED on").click()
    expect(outcome_card(dashboard, "led")).to_have_attribute("data-state", "SUCCEEDED", timeout=15_000)
    expect(page.locator("#detail .history-table tbody tr").first).to_be_visible(timeout=10_000)
    expect(page.locator(".device-card")).to_have_count(2)
    # and a bulk ping to both devices, so the picture shows that panel too
    for thing in dashboard.stack.things:
        page.get_by_label(f"Select {thing} for a bulk command").check()
    page.locator("#bulk").get_by_label("Action").select_option("ping")
    page.get_by_role("button", name="Send to 2 devices").click()
    expect(page.locator("#bulk").get_by_role("status")).to_contain_text("2 of 2 succeeded", timeout=20_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-desktop-light.png"), full_page=True)
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(ARTIFACTS / "dashboard-desktop.png"), full_page=True)

    # WHEN the window is a 375 px phone
    page.set_viewport_size({"width": 375, "height": 812})
    time.sleep(0.3)
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone-detail.png"), full_page=True)
    detail_width = page.evaluate("document.documentElement.scrollWidth")
    page.get_by_role("button", name="← All devices").click()
    expect(page.locator(".device-card").first).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "dashboard-phone-list.png"), full_page=True)
    list_width = page.evaluate("document.documentElement.scrollWidth")

    # THEN nothing needs sideways scrolling, and every button has a name
    assert detail_width <= 375
    assert list_width <= 375
    unnamed = page.evaluate(
        "[...document.querySelectorAll('button')].filter(b => !(b.getAttribute('aria-label') || b.textContent.trim()))"
        ".map(b => b.outerHTML)"
    )
    assert unnamed == []
    shutil.copy(ARTIFACTS / "dashboard-desktop.png", ARTIFACTS / "dashboard.png")


def test_keyboard_alone_runs_a_command_and_focus_survives_live_updates(dashboard: Dashboard) -> None:
    # GIVEN sim-1 open, and the keyboard focus on its "LED toggle" button
    page = dashboard.open_device("sim-1")
    expect(page.locator("#detail .badge")).to_have_text("Online")
    toggle = page.get_by_role("button", name="LED toggle")
    toggle.focus()

    # WHEN the user presses Enter, then Space
    page.keyboard.press("Enter")
    expect(outcome_card(dashboard, "led")).to_have_attribute("data-state", "SUCCEEDED", timeout=15_000)
    page.keyboard.press("Space")
    expect(page.locator("#detail .outcome[data-action='led'][data-state='SUCCEEDED']")).to_have_count(2, timeout=15_000)

    # THEN both ran, and after a few live refreshes the focus is still on that button
    page.wait_for_timeout(3_000)
    assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "LED toggle"


def test_desired_state_waits_for_an_offline_device_with_the_delta_highlighted(dashboard: Dashboard) -> None:
    # GIVEN sim-2 offline, open in the dashboard
    stack = dashboard.stack
    page = dashboard.open_device("sim-2")
    take_offline(stack, "sim-2")
    try:
        expect(page.locator("#detail .badge")).to_have_text("Offline", timeout=DEVICE_TIMEOUT_MS)
        current = read_shadow(stack, "sim-2")["state"]["reported"]["interval"]
        wanted = 7 if current != 7 else 8

        # WHEN the user sets a new desired interval
        page.get_by_label("Change desired state").fill(f'{{"interval": {wanted}}}')
        page.get_by_role("button", name="Set desired").click()

        # THEN the row shows desired vs reported, highlighted as pending
        row = page.locator("#detail .state-table tr[data-key='interval']")
        expect(row).to_have_class(re.compile(r"\bis-delta\b"), timeout=10_000)
        expect(row.locator("td").nth(0)).to_contain_text(f"{wanted}pending")
        expect(row.locator("td").nth(1)).to_have_text(str(current))

        # WHEN the device comes back
        bring_back(stack, "sim-2")

        # THEN it applies the change: reported catches up and the highlight goes away
        expect(row.locator("td").nth(1)).to_have_text(str(wanted), timeout=DEVICE_TIMEOUT_MS)
        expect(row).not_to_have_class(re.compile(r"\bis-delta\b"))
    finally:
        bring_back(stack, "sim-2")


def test_a_bulk_command_shows_progress_per_device(dashboard: Dashboard) -> None:
    # GIVEN both devices selected in the list
    page = dashboard.open()
    for thing in dashboard.stack.things:
        page.get_by_label(f"Select {thing} for a bulk command").check()
    bulk = page.locator("#bulk")
    expect(bulk).to_be_visible()

    # WHEN the user sends ping to them
    bulk.get_by_label("Action").select_option("ping")
    bulk.get_by_role("button", name="Send to 2 devices").click()

    # THEN each device gets its own line, and all of them end up succeeded
    for thing in dashboard.stack.things:
        line = bulk.locator(f".bulk-progress li[data-thing='{thing}']")
        expect(line).to_have_attribute("data-state", "SUCCEEDED", timeout=20_000)
    expect(bulk.get_by_role("status")).to_contain_text("ping: 2 of 2 succeeded")
