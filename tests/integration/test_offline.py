"""Offline devices: fail fast when asked, otherwise queue with a TTL; queued commands run once on return,
expired ones never."""

from __future__ import annotations

import time

import pytest

from iotbridge_local.stack import LocalStack
from tests.integration.http import call

pytestmark = pytest.mark.stack


def _wait_presence(stack: LocalStack, thing: str, connected: bool, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, device = call(stack.config.api_url, "GET", f"/devices/{thing}", key=stack.config.api_key)
        if device.get("connected") is connected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{thing} never became connected={connected}")


def _wait_state(stack: LocalStack, thing: str, cid: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, _, body = call(stack.config.api_url, "GET", f"/devices/{thing}/commands/{cid}", key=stack.config.api_key)
        if body.get("state") not in ("QUEUED", "SENT"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{cid} on {thing} never reached a terminal state")


def test_offline_device_fail_fast_queue_and_delivery_on_return(stack: LocalStack) -> None:
    api, key = stack.config.api_url, stack.config.api_key
    # GIVEN sim-2 goes offline
    stack.stop_device("sim-2")
    _wait_presence(stack, "sim-2", False)
    # WHEN a caller asks to fail fast
    status, _, body = call(api, "POST", "/devices/sim-2/commands", key=key, body={"action": "ping", "ifOffline": "fail"})
    # THEN it is told the device is offline, by name
    assert status == 409 and body["code"] == "DEVICE_OFFLINE" and "sim-2" in body["message"]
    # WHEN callers queue one command with a long TTL and one that expires while the device is away
    keep = {"action": "led", "params": {"state": "on"}, "timeoutMs": 200, "ttlMs": 60_000}
    status, headers, kept = call(api, "POST", "/devices/sim-2/commands", key=key, body=keep)
    assert status == 202 and kept["state"] == "QUEUED" and headers["Location"].endswith(kept["id"])
    status, _, stale = call(api, "POST", "/devices/sim-2/commands", key=key,
                            body={"action": "led", "params": {"state": "off"}, "timeoutMs": 0, "ttlMs": 1_000})  # fmt: skip
    assert status == 202
    time.sleep(1.5)  # the short TTL passes while the device is still away
    # AND the device comes back
    stack.start_device("sim-2")
    _wait_presence(stack, "sim-2", True)
    # THEN the kept command ran, the expired one did not, and the LED shows only the kept one
    assert _wait_state(stack, "sim-2", kept["id"])["state"] == "SUCCEEDED"
    assert _wait_state(stack, "sim-2", stale["id"])["state"] == "EXPIRED"
    _, _, device = call(api, "GET", "/devices/sim-2", key=key)
    assert device["reported"]["led"] == "on"


def test_desired_state_set_while_offline_is_applied_on_return(stack: LocalStack) -> None:
    api, key = stack.config.api_url, stack.config.api_key
    stack.stop_device("sim-1")
    _wait_presence(stack, "sim-1", False)
    # WHEN desired state changes while the device is away
    status, _, body = call(api, "PATCH", "/devices/sim-1/desired", key=key, body={"state": {"relay": True}})
    assert status == 200 and body["delta"].get("relay") is True
    # THEN the device applies it when it returns, and the delta clears
    stack.start_device("sim-1")
    status, _, body = call(api, "PATCH", "/devices/sim-1/desired", key=key, body={"state": {"relay": True}, "waitMs": 20_000})
    assert status == 200 and body["converged"] is True, body
    assert body["reported"]["relay"] is True and "relay" not in body["delta"]
