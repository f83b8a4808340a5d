"""Through the real parts: HTTP → local API Gateway → function → data plane → shadow service →
Mosquitto → Pi agent → shadow → function → HTTP."""

from __future__ import annotations

import uuid

import pytest

from iotbridge_local.stack import LocalStack
from tests.integration.http import call

pytestmark = pytest.mark.stack


def test_command_returns_the_devices_answer_and_new_state(stack: LocalStack) -> None:
    # GIVEN the stack with a simulated Pi whose LED is in some state
    api, key = stack.config.api_url, stack.config.api_key
    status, _, device = call(api, "GET", "/devices/sim-1", key=key)
    assert status == 200 and device["connected"] is True
    target = "off" if device["reported"]["led"] == "on" else "on"
    # WHEN a client switches the LED through the API
    status, _, body = call(api, "POST", "/devices/sim-1/commands", key=key,
                           body={"action": "led", "params": {"state": target}})  # fmt: skip
    # THEN it gets 200 with the device's answer and its new reported state
    assert status == 200, body
    assert body["state"] == "SUCCEEDED" and body["result"]["led"] == target
    assert body["reported"]["led"] == target
    # AND the device list shows the new state too
    _, _, listing = call(api, "GET", "/devices", key=key)
    assert {d["thing"]: d["reported"]["led"] for d in listing["devices"]}["sim-1"] == target


def test_a_retried_command_id_runs_once(stack: LocalStack) -> None:
    api, key = stack.config.api_url, stack.config.api_key
    cid = uuid.uuid4().hex
    first = call(
        api, "POST", "/devices/sim-2/commands", key=key, body={"action": "led", "params": {"state": "toggle"}, "id": cid}
    )
    second = call(
        api, "POST", "/devices/sim-2/commands", key=key, body={"action": "led", "params": {"state": "toggle"}, "id": cid}
    )
    # a toggle run twice would flip back: the same outcome proves it ran once
    assert first[0] == second[0] == 200
    assert first[2]["result"] == second[2]["result"]
    _, _, device = call(api, "GET", "/devices/sim-2", key=key)
    assert device["reported"]["led"] == first[2]["result"]["led"]


def test_the_api_key_is_enforced_like_api_gateway(stack: LocalStack) -> None:
    for key in (None, "wrong"):
        status, headers, body = call(stack.config.api_url, "GET", "/devices", key=key)
        assert status == 403 and body == {"code": "INVALID_API_KEY", "message": "Forbidden"}
        assert headers.get("x-amzn-ErrorType") == "ForbiddenException"


def test_the_device_list_pages_and_refuses_a_page_token_it_did_not_give_out(stack: LocalStack) -> None:
    api, key = stack.config.api_url, stack.config.api_key
    # WHEN the device list is read one device per page
    status, _, first = call(api, "GET", "/devices?limit=1", key=key)
    status2, _, second = call(api, "GET", f"/devices?limit=1&nextToken={first['nextToken']}", key=key)
    # THEN each page holds another device
    assert (status, status2) == (200, 200) and first["devices"][0]["thing"] != second["devices"][0]["thing"]
    # AND a token the API did not give out is a client error that says so, not a 5xx or an empty list
    status, _, body = call(api, "GET", "/devices?limit=1&nextToken=sim-1", key=key)
    assert (status, body["code"]) == (400, "INVALID_QUERY"), body


def test_hostile_thing_names_are_refused(stack: LocalStack) -> None:
    # GIVEN names with MQTT wildcards, separators, NUL or reserved prefixes, URL-encoded as a browser sends them
    for thing in ("sim-1%2Fshadow", "%2B", "sim-1%23", "%24aws", "sim-1%00", "x" * 129):
        # WHEN a command is posted to them
        status, _, body = call(stack.config.api_url, "POST", f"/devices/{thing}/commands", key=stack.config.api_key,
                               body={"action": "ping"})  # fmt: skip
        # THEN it is refused as a client error: a bad name, or (decoded `/`, `#`, NUL) a path no route matches
        assert (status, body["code"]) in ((400, "INVALID_THING_NAME"), (404, "NOT_FOUND")), (thing, body)


def test_a_desired_state_too_large_for_the_shadow_is_413_not_a_full_command_queue(stack: LocalStack) -> None:
    # GIVEN a device (its shadow, like AWS's, holds at most 8 KB)
    api, key = stack.config.api_url, stack.config.api_key
    # WHEN a desired state would take it past that (the body itself is within the API's 16 KB)
    status, _, body = call(api, "PATCH", "/devices/sim-1/desired", key=key, body={"state": {"label": "x" * 9000}})
    # THEN the caller is told the document is too large, not to wait for pending commands
    assert (status, body["code"]) == (413, "PAYLOAD_TOO_LARGE"), body
    assert "8 KB" in body["message"]
