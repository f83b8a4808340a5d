"""The dashboard against a stubbed API (Playwright routes on the page's own origin, no CORS), no local stack:
answers the real API gives rarely (a lost answer, a second page of devices, an odd action spec) on demand."""

from __future__ import annotations

import http.client
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml
from playwright.sync_api import Browser, Page, Route, expect

from iotbridge_local.config import free_port
from iotbridge_local.dashboard_server import DashboardServer

pytestmark = pytest.mark.browser

LED = {"led": {"state": "enum:on|off|toggle"}, "ping": {}}


def device(thing: str, actions: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"thing": thing, "connected": True, "lastSeen": int(time.time() * 1000), "reported": {"led": "off"},
            "actions": actions if actions is not None else LED}


class Stub:
    def __init__(self) -> None:
        self.devices = [device("sim-1")]
        self.page_size = 50
        self.posts: list[dict[str, Any]] = []
        self.abort_posts = 0
        self.errors: list[str] = []
        self.jobs: list[dict[str, Any]] = []  # bulk POSTs; a job's devices: done, but those in `full` not sent
        self.full: set[str] = set()
        self.incomplete_gets = 0  # job GETs answered `complete: false` first (a page Lambda will retry)
        self.job_gets = 0
        self.commands: dict[str, str] = {}  # id -> state, for GET /devices/{thing}/commands/{id}
        self.history: list[dict[str, Any]] = []  # GET /devices/{thing}/commands
        self.down = False  # every API request fails (the API unreachable)
        self.hold_posts = False  # command POSTs wait (unanswered) until release()
        self.held: list[Route] = []

    def handle(self, route: Route) -> None:
        req = route.request
        if self.down:
            return route.abort("connectionrefused")
        url = urlsplit(req.url)
        path = url.path[len("/api"):]
        query = parse_qs(url.query)
        if path == "/devices":
            start = int(query.get("nextToken", ["0"])[0])
            page = self.devices[start:start + self.page_size]
            token = str(start + self.page_size) if start + self.page_size < len(self.devices) else None
            return self.json(route, 200, {"devices": page, "nextToken": token})
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[0] == "devices" and len(parts) >= 2 and not re.fullmatch(r"[a-zA-Z0-9:_-]{1,128}", parts[1]):
            return self.json(route, 400, {"code": "INVALID_THING_NAME", "message": f"invalid thing name {parts[1]!r}"})
        if parts[0] == "devices" and len(parts) == 2:
            d = next((d for d in self.devices if d["thing"] == parts[1]), None)
            if d is None:
                return self.json(route, 404, {"code": "DEVICE_NOT_FOUND", "message": "no"})
            shadow = {"version": 3, "state": {"reported": {**d["reported"], "actions": d["actions"]}}}
            return self.json(route, 200, {**d, "shadow": shadow})
        if parts[0] == "devices" and parts[2:3] == ["commands"] and len(parts) == 4:
            known = self.commands.get(parts[3])
            if known is None:
                return self.json(route, 404, {"code": "COMMAND_NOT_FOUND", "message": f"no command {parts[3]}"})
            return self.json(route, 200, {"id": parts[3], "thing": parts[1], "action": "led", "state": known})
        if parts[0] == "devices" and parts[2:] == ["commands"] and req.method == "GET":
            return self.json(route, 200, {"thing": parts[1], "commands": self.history})
        if parts[0] == "devices" and parts[2:] == ["commands"] and req.method == "POST":
            self.posts.append(json.loads(req.post_data or "{}"))
            if self.abort_posts:
                self.abort_posts -= 1
                return route.abort("connectionreset")  # request reached the API, the answer got lost
            if self.hold_posts:
                self.held.append(route)
                return None
            return self.json(route, 200, {"id": "c1", "thing": parts[1], "action": "led", "state": "SUCCEEDED"})
        if path == "/commands" and req.method == "POST":
            body = json.loads(req.post_data or "{}")
            self.jobs.append(body)
            refused = [{"thing": t, "code": "TOO_MANY_PENDING"} for t in body["things"] if t in self.full]
            started = {"jobId": f"job-{len(self.jobs)}", "action": body["action"], "params": body.get("params", {}),
                       "targets": len(body["things"]), "queued": 0, "notQueued": refused}  # fmt: skip
            return self.json(route, 202, started)
        if parts[:2] == ["commands", "jobs"]:
            body = self.jobs[int(parts[2].split("-")[1]) - 1]
            devices = [{"thing": t, "state": "NOT_SENT", "error": "TOO_MANY_PENDING"} if t in self.full
                       else {"thing": t, "state": "SUCCEEDED", "id": parts[2]} for t in body["things"]]  # fmt: skip
            self.job_gets += 1
            complete = self.incomplete_gets <= 0
            self.incomplete_gets -= 1
            return self.json(route, 200, {"jobId": parts[2], "devices": devices, "complete": complete})
        return self.json(route, 404, {"code": "NOT_FOUND", "message": path})

    def release(self) -> None:
        held, self.held = self.held, []
        for route in held:
            self.json(route, 200, {"id": "c1", "thing": "sim-1", "action": "ping", "state": "SUCCEEDED"})

    @staticmethod
    def json(route: Route, status: int, body: Any) -> None:
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))


@pytest.fixture
def site(browser: Browser) -> Iterator[tuple[Page, Stub]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = DashboardServer(port=port, site_config={"apiUrl": f"{base}/api", "apiKey": "k"})
    server.start()
    stub = Stub()
    context = browser.new_context()
    page = context.new_page()
    page.on("pageerror", lambda exc: stub.errors.append(str(exc)))
    page.route(f"{base}/api/**", stub.handle)
    page.base = base  # type: ignore[attr-defined]
    try:
        yield page, stub
    finally:
        context.close()
        server.stop()


def test_every_page_of_devices_is_listed(site: tuple[Page, Stub]) -> None:
    # GIVEN a fleet of 60 devices, listed 50 per page
    page, stub = site
    stub.devices = [device(f"sim-{i:02d}") for i in range(60)]
    # WHEN the dashboard opens THEN it shows all 60
    page.goto(page.base + "/")  # type: ignore[attr-defined]
    page.wait_for_function("() => document.querySelectorAll('.device-card').length >= 60", timeout=10_000)


def test_a_script_that_got_into_the_page_does_not_run(site: tuple[Page, Stub]) -> None:
    # GIVEN the dashboard, working
    page, stub = site
    page.goto(page.base + "/")  # type: ignore[attr-defined]
    page.wait_for_selector(".device-card")
    # WHEN markup with an inline script and an event handler lands in it (what an XSS would need)
    page.evaluate("""() => {
        const s = document.createElement('script'); s.textContent = 'window.ran = 1'; document.body.append(s);
        const d = document.createElement('div'); d.innerHTML = '<img src=x onerror="window.ran = 2">'; document.body.append(d);
    }""")
    page.wait_for_timeout(300)
    # THEN neither runs, and the dashboard's own code still does
    assert page.evaluate("window.ran") is None
    assert page.locator(".device-card").count() == 1 and not stub.errors


def _toggle_sim1_led(page: Page) -> None:
    """Open sim-1's view and press its LED's Toggle once."""
    page.goto(page.base + "/#/devices/sim-1")  # type: ignore[attr-defined]
    toggle = page.locator("button[data-action=led][data-choice=toggle]")
    toggle.wait_for()
    toggle.click()


def test_a_command_whose_answer_was_lost_is_asked_again_with_its_id(site: tuple[Page, Stub]) -> None:
    # GIVEN an API whose answer to the first POST is lost on the way (the request itself arrived)
    page, stub = site
    stub.abort_posts = 1
    # WHEN the user toggles the LED once
    _toggle_sim1_led(page)
    # THEN the dashboard asks again by itself, with the same command id: the API answers for the
    # same command, and the device toggles once, not twice
    page.wait_for_selector(".outcome[data-state=SUCCEEDED]", timeout=10_000)
    ids = [p.get("id") for p in stub.posts]
    assert len(ids) == 2 and ids[0] and ids[0] == ids[1], stub.posts


@pytest.mark.parametrize("found", [None, "SUCCEEDED", "UNKNOWN"])
def test_a_command_whose_every_answer_was_lost_is_looked_up_by_its_id(site: tuple[Page, Stub], found: str | None) -> None:
    # GIVEN an API whose every answer to the POST is lost (three tries)
    page, stub = site
    stub.abort_posts = 3
    # WHEN the user toggles the LED, and the page says it may have been queued
    _toggle_sim1_led(page)
    card = page.locator(".outcome").first
    expect(card).to_contain_text("may have been queued", timeout=15_000)
    cid = stub.posts[0]["id"]
    assert [p["id"] for p in stub.posts] == [cid] * 3
    if found:
        # one of the three did reach the API: the device ran it, or (UNKNOWN) the API stopped
        # waiting for a device that took it and never answered
        stub.commands[cid] = found
    # THEN, the API answering again, the card says what became of that id
    if found:
        expect(card).to_have_attribute("data-state", found, timeout=15_000)
    if found == "UNKNOWN":
        expect(card).to_contain_text("sim-1 may have run led, but never reported how it went")
    if found is None:
        expect(card).to_have_attribute("data-state", "NOT_SENT", timeout=15_000)
        expect(card).to_contain_text("was not sent to sim-1")
    assert len(stub.posts) == 3  # looked up, never sent again


@pytest.mark.parametrize(("thing", "says"), [("nosuch", "nosuch is not known to the API"),
                                             ("%3Cimg%3E", "is not a device name")])
def test_a_link_to_no_device_says_so_and_offers_nothing_to_send(site: tuple[Page, Stub], thing: str, says: str) -> None:
    # GIVEN a link to a device the API does not know, or to a name no device can have
    page, stub = site
    # WHEN it is opened
    page.goto(page.base + f"/#/devices/{thing}")  # type: ignore[attr-defined]
    # THEN the view says so, shows no LED, actions or state to act on, and the API is not reported in trouble
    expect(page.locator("#detail .notice")).to_contain_text(says, timeout=10_000)
    expect(page.locator("#detail .hero")).to_be_hidden()
    expect(page.locator("#detail [data-action=ping]")).to_be_hidden()
    page.wait_for_timeout(3000)
    expect(page.locator("#banner")).to_be_hidden()
    expect(page.locator("#api-status")).to_have_attribute("data-status", "live")
    assert stub.errors == []


def test_a_whole_fleet_is_selected_at_once_and_the_bulk_panel_is_in_view(site: tuple[Page, Stub]) -> None:
    # GIVEN a fleet of 120 devices
    page, stub = site
    stub.devices = [device(f"sim-{i:03d}") for i in range(120)]
    page.goto(page.base + "/")  # type: ignore[attr-defined]
    page.wait_for_function("() => document.querySelectorAll('.device-card').length >= 120", timeout=10_000)
    # WHEN the user selects them all
    page.get_by_role("button", name="Select all for a bulk command").click()
    # THEN the bulk panel is in view, names a few of them and counts the rest, and sends to all 120
    bulk = page.locator("#bulk")
    expect(bulk).to_be_in_viewport()
    named = ", ".join(f"sim-{i:03d}" for i in range(5))
    expect(bulk.locator(".bulk-count")).to_have_text(f"120 devices selected: {named} and 115 more")
    bulk.get_by_label("Action").select_option("ping")
    bulk.get_by_role("button", name="Send to 120 devices").click()
    expect(bulk.get_by_role("status")).to_contain_text("120 of 120 succeeded", timeout=10_000)
    assert len(stub.jobs[0]["things"]) == 120


def test_the_times_in_recent_commands_move_on_with_the_clock(site: tuple[Page, Stub]) -> None:
    # GIVEN a device whose last command finished just now
    page, stub = site
    page.clock.install()
    now_ms = int(time.time() * 1000)
    stub.history = [{"id": "c1", "thing": "sim-1", "action": "ping", "state": "SUCCEEDED", "doneAt": now_ms}]
    page.goto(page.base + "/#/devices/sim-1")  # type: ignore[attr-defined]
    row = page.locator("tr[data-id=c1] time")
    expect(row).to_have_text("just now", timeout=10_000)
    # WHEN three minutes pass with the view open
    page.clock.run_for("03:00")
    # THEN the row says so
    expect(row).to_have_text("3 min ago", timeout=10_000)


def test_the_retry_countdown_counts_down(site: tuple[Page, Stub]) -> None:
    # GIVEN the dashboard open, and then the API unreachable
    page, stub = site
    page.clock.install()
    page.goto(page.base + "/")  # type: ignore[attr-defined]
    expect(page.locator(".device-card")).to_have_count(1, timeout=10_000)
    stub.down = True
    page.clock.run_for("00:10")
    retry = page.locator(".banner-retry")
    expect(retry).to_contain_text("Retrying in", timeout=10_000)
    # WHEN a few seconds pass THEN the countdown moves
    first = retry.inner_text()
    page.clock.run_for("00:02")
    expect(retry).not_to_have_text(first, timeout=5_000)
    assert int(retry.inner_text().split()[2]) < int(first.split()[2])


def test_devices_a_bulk_command_did_not_reach_can_be_sent_it_again(site: tuple[Page, Stub]) -> None:
    # GIVEN three devices, one of them with a full command queue
    page, stub = site
    stub.devices = [device(t) for t in ("sim-1", "sim-2", "sim-3")]
    stub.full = {"sim-2"}
    stub.incomplete_gets = 1  # the first progress read: the job not complete yet, its page to be retried
    page.goto(page.base + "/")  # type: ignore[attr-defined]
    for thing in ("sim-1", "sim-2", "sim-3"):
        page.get_by_label(f"Select {thing} for a bulk command").check()
    bulk = page.locator("#bulk")
    bulk.get_by_label("Action").select_option("led")
    bulk.get_by_label("state").select_option("on")
    bulk.get_by_label("Devices offline get it if back within").select_option(label="1 hour")
    # WHEN a bulk command goes to all three, offline devices given an hour
    bulk.get_by_role("button", name="Send to 3 devices").click()
    # THEN once the job is complete (not before: a retry may still reach it), the one not reached
    #      is shown with why, and the dashboard offers to send it again
    expect(bulk.get_by_role("status")).to_contain_text("2 of 3 succeeded. 1 not sent.", timeout=10_000)
    assert stub.job_gets == 2
    expect(bulk.locator(".bulk-progress li[data-thing='sim-2']")).to_contain_text("TOO_MANY_PENDING")
    again = bulk.get_by_role("button", name="Send led again to 1 device not sent")
    # WHEN its queue has room again and the user accepts
    stub.full = set()
    again.click()
    # THEN a new job goes to that device alone, with the same action and params, and it succeeds
    expect(bulk.get_by_role("status")).to_contain_text("1 of 1 succeeded.", timeout=10_000)
    assert [(j["things"], j["action"], j["params"]) for j in stub.jobs] == [
        (["sim-1", "sim-2", "sim-3"], "led", {"state": "on"}), (["sim-2"], "led", {"state": "on"})]
    assert stub.jobs[0]["id"] != stub.jobs[1]["id"]
    assert [j["ttlMs"] for j in stub.jobs] == [3_600_000, 3_600_000]
    expect(again).to_be_hidden()


def test_an_empty_choice_in_a_devices_led_spec_does_not_break_its_view(site: tuple[Page, Stub]) -> None:
    # GIVEN a device advertising `led: {state: "enum:on|off|"}` (an empty choice)
    page, stub = site
    stub.devices = [device("sim-1", {"led": {"state": "enum:on|off|"}, "ping": {}})]
    # WHEN its view opens THEN its actions are shown and no error is raised
    page.goto(page.base + "/#/devices/sim-1")  # type: ignore[attr-defined]
    page.wait_for_selector("[data-action=ping]", timeout=10_000)
    assert stub.errors == []


def test_one_open_dashboard_stays_well_within_the_api_keys_daily_quota(site: tuple[Page, Stub]) -> None:
    # GIVEN the usage plan's default quota, which the CLI and scripts share with the dashboard
    template = yaml.load((Path(__file__).parents[2] / "template.yaml").read_text(), Loader=_CfnLoader)
    quota_per_day = int(template["Parameters"]["QuotaLimit"]["Default"])
    page, _ = site
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/api/" in r.url else None)
    # WHEN a device's view is left open for 10 s
    page.goto(page.base + "/#/devices/sim-1")  # type: ignore[attr-defined]
    page.wait_for_selector("[data-action=led]")
    page.wait_for_timeout(1000)
    seen.clear()
    page.wait_for_timeout(10_000)
    # THEN at that pace a day of it uses at most half the quota
    per_day = len(seen) / 10 * 86_400
    assert per_day <= quota_per_day / 2, f"{len(seen)} requests in 10 s = {per_day:.0f} a day"


def test_the_device_list_of_a_large_fleet_stays_well_within_the_api_keys_daily_quota(site: tuple[Page, Stub]) -> None:
    # GIVEN the usage plan's default quota, and a fleet of 210 devices (5 pages of 50)
    template = yaml.load((Path(__file__).parents[2] / "template.yaml").read_text(), Loader=_CfnLoader)
    quota_per_day = int(template["Parameters"]["QuotaLimit"]["Default"])
    page, stub = site
    stub.devices = [device(f"sim-{i:03d}") for i in range(210)]
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/api/" in r.url else None)
    # WHEN the device list is left open for 10 s
    page.goto(page.base + "/")  # type: ignore[attr-defined]
    page.wait_for_function("() => document.querySelectorAll('.device-card').length >= 210", timeout=10_000)
    seen.clear()
    page.wait_for_timeout(10_000)
    # THEN at that pace a day of it uses at most half the quota, however many pages the fleet fills
    per_day = len(seen) / 10 * 86_400
    assert per_day <= quota_per_day / 2, f"{len(seen)} requests in 10 s = {per_day:.0f} a day"
    # AND the list still follows the fleet: a device that went offline on the last page is shown so
    stub.devices[-1] = {**stub.devices[-1], "connected": False}
    expect(page.locator("#devices-summary")).to_contain_text("209 online · 1 offline", timeout=20_000)


def test_a_command_still_being_sent_is_not_sent_again_from_the_devices_view_opened_anew(site: tuple[Page, Stub]) -> None:
    # GIVEN two devices, and an API slow to answer a command
    page, stub = site
    stub.devices = [device("sim-1"), device("sim-2")]
    stub.hold_posts = True
    base = page.base  # type: ignore[attr-defined]
    page.goto(base + "/#/devices/sim-1")
    page.locator("button[data-action=ping]").click()
    page.wait_for_function("() => document.querySelector('button[data-action=ping]').getAttribute('aria-busy') === 'true'")
    # WHEN the user opens the other device and comes back while the command is being sent, and clicks again
    page.goto(base + "/#/devices/sim-2")
    page.wait_for_selector("#detail h2:has-text('sim-2')")
    page.goto(base + "/#/devices/sim-1")
    ping = page.locator("button[data-action=ping]")
    ping.wait_for()
    ping.click(force=True)  # a user can click it; aria-disabled only says it will do nothing
    page.wait_for_timeout(500)
    # THEN the button shows the send in progress, and nothing more was sent
    expect(ping).to_have_attribute("aria-busy", "true")
    assert len(stub.posts) == 1, stub.posts
    # AND once the API answers, the button is free again, with one outcome
    stub.release()
    expect(ping).not_to_have_attribute("aria-busy", "true", timeout=10_000)
    assert len(stub.posts) == 1


class _CfnLoader(yaml.SafeLoader):
    """template.yaml's intrinsic functions (!Ref, !Sub …) read as plain values."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def test_the_dashboard_opened_as_localhost_moves_to_the_origin_the_api_allows() -> None:
    # GIVEN the local dashboard server (the API allows http://127.0.0.1:<port> only, by CORS)
    port = free_port()
    server = DashboardServer(port=port, site_config={})
    server.start()
    try:
        # WHEN it is opened as localhost
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/index.html?x=1", headers={"Host": f"localhost:{port}"})
        answer = conn.getresponse()
        # THEN the browser is sent to the same page on 127.0.0.1, where the API's answers are readable
        assert (answer.status, answer.getheader("Location")) == (308, f"http://127.0.0.1:{port}/index.html?x=1")
    finally:
        server.stop()
