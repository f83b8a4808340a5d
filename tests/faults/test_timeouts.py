"""Running out of time: the caller's wait, the Lambda's own time limit, and a command's time-to-live."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from iotbridge_api import iot
from iotbridge_contract import commands as contract
from iotbridge_local.stack import LocalStack
from iotbridge_local.testclient import ApiClient
from tests.faults.harness import http, wait_terminal, wait_until

pytestmark = pytest.mark.stack


def _offline(stack: LocalStack, thing: str) -> None:
    stack.kill(f"device-{thing}", signal.SIGKILL)
    wait_until(lambda: http(stack.config.api_url, "GET", f"/devices/{thing}", key=stack.config.api_key)
               .body["connected"] is False, timeout=30, what=f"{thing} seen offline")  # fmt: skip


@pytest.fixture
def in_process(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The API function in this process, pointed at the stack (fresh boto3 clients for its endpoints)."""
    for name, value in stack.config.function_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(iot, "_clients", {})
    yield


def test_a_wait_that_runs_out_answers_202_and_the_outcome_follows(stack: LocalStack) -> None:
    # GIVEN an offline device
    thing = stack.things[0]
    api, key = stack.config.api_url, stack.config.api_key
    _offline(stack, thing)
    # WHEN a caller sends a command and is willing to wait 300 ms
    reply = http(api, "POST", f"/devices/{thing}/commands", key=key,
                 body={"action": "ping", "id": "short-wait", "timeoutMs": 300})  # fmt: skip
    # THEN the answer is 202 (not an error) with the id, QUEUED, and where to look later
    assert reply.status == 202, reply
    assert reply.body["id"] == "short-wait" and reply.body["state"] == "QUEUED", reply.body
    assert reply.headers.get("Location") == f"/devices/{thing}/commands/short-wait"
    # WHEN the device comes back
    stack.restart(f"device-{thing}")
    # THEN the Location shows the device's outcome, and a retry of the POST gets that same outcome
    final = wait_terminal(stack, thing, "short-wait")
    assert final["state"] == "SUCCEEDED" and final["result"] == {"pong": True}, final
    again = http(api, "POST", f"/devices/{thing}/commands", key=key, body={"action": "ping", "id": "short-wait"})
    assert again.status == 200 and again.body["doneAt"] == final["doneAt"], again


def test_a_lambda_about_to_time_out_answers_202_instead_of_dying(stack: LocalStack, in_process: None) -> None:
    # GIVEN the API function with 1.5 s left of its time limit (it keeps a 1 s margin to answer),
    #   and a device that is offline now and will be back in 2.5 s
    thing = stack.things[0]
    _offline(stack, thing)
    client = ApiClient(timeout_s=1.5, api_key=None)
    back = threading.Timer(2.5, stack.restart, args=(f"device-{thing}",))
    back.start()
    try:
        # WHEN a caller asks to wait up to 20 s for the answer
        reply = client.post(f"/devices/{thing}/commands", json={"action": "ping", "id": "lambda-budget", "timeoutMs": 20_000})
    finally:
        back.join()
    # THEN the function answers 202 within its own budget (waiting on would have seen the device's
    #   200 after it came back, or been killed by Lambda with no answer at all)
    assert reply.status == 202, (reply.status, reply.body)
    assert reply.json["state"] == "QUEUED"
    # AND a later GET shows the terminal state
    final = wait_terminal(stack, thing, "lambda-budget")
    assert final["state"] == "SUCCEEDED", final


def test_a_command_whose_time_to_live_ran_out_is_never_run(stack: LocalStack) -> None:
    # GIVEN an offline device (its simulated LED starts off when it boots)
    thing = stack.things[1]
    api, key = stack.config.api_url, stack.config.api_key
    _offline(stack, thing)
    # WHEN an LED toggle is queued with a 1 s time-to-live, and the device returns only after that
    body = {"action": "led", "params": {"state": "toggle"}, "id": "too-late", "ttlMs": 1_000, "timeoutMs": 0}
    reply = http(api, "POST", f"/devices/{thing}/commands", key=key, body=body)
    assert reply.status == 202, reply
    time.sleep(2.2)  # the shadow service's clock has whole seconds: make sure it is past expiresAt
    stack.restart(f"device-{thing}")
    # THEN the device reports it EXPIRED and did not run it: the LED is still off
    final = wait_terminal(stack, thing, "too-late")
    assert final["state"] == "EXPIRED", final
    wait_until(lambda: http(api, "GET", f"/devices/{thing}", key=key).body["connected"], timeout=30, what="back")
    assert http(api, "GET", f"/devices/{thing}", key=key).body["reported"]["led"] == "off"


def test_a_command_abandoned_past_its_expiry_is_closed_by_the_api_and_never_run(
    stack: LocalStack, in_process: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an LED toggle queued with a 1 s time-to-live for a device that stays offline past it,
    #   and an API whose grace period after expiry is 0 (30 s in production: longer than any handler)
    thing = stack.things[1]
    _offline(stack, thing)
    monkeypatch.setattr(contract, "EXPIRY_GRACE_MS", 0)
    client = ApiClient(api_key=None)
    body = {"action": "led", "params": {"state": "toggle"}, "id": "abandoned", "ttlMs": 1_000, "timeoutMs": 0}
    queued = client.post(f"/devices/{thing}/commands", json=body)
    assert queued.status == 202, queued.body
    time.sleep(1.2)
    # WHEN someone looks it up
    looked = client.get(f"/devices/{thing}/commands/abandoned")
    # THEN the API records it EXPIRED (in the shadow, so the device will not take it)
    assert looked.status == 200 and looked.json["state"] == "EXPIRED", looked.body
    # AND when the device returns it does not run it: the outcome stays, the LED stays off
    stack.restart(f"device-{thing}")
    wait_until(lambda: client.get(f"/devices/{thing}").json["connected"], timeout=30, what=f"{thing} back")
    final = wait_terminal(stack, thing, "abandoned")
    assert final["state"] == "EXPIRED" and final["doneAt"] == looked.json["doneAt"], final
    assert client.get(f"/devices/{thing}").json["reported"]["led"] == "off"
