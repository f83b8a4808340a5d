"""The same command delivered more than once: MQTT QoS 1 redelivery (the same delta again, also
after the device restarted), and a caller retrying the POST with the same id, concurrently."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import pytest

from iotbridge_contract import commands as contract
from iotbridge_contract import topics
from iotbridge_contract.commands import COMMANDS_SHADOW
from iotbridge_local.stack import LocalStack
from tests.faults.harness import Reply, http, read_executed_log, view_key, wait_terminal, wait_until

pytestmark = pytest.mark.stack


def _led(stack: LocalStack, thing: str) -> str:
    reply = http(stack.config.api_url, "GET", f"/devices/{thing}", key=stack.config.api_key)
    assert reply.status == 200, reply
    return str(reply.body["reported"]["led"])


def _commands_version(stack: LocalStack, thing: str) -> int:
    doc = stack.boto3_client("iot-data").get_thing_shadow(thingName=thing, shadowName=COMMANDS_SHADOW)
    return int(json.loads(doc["payload"].read())["version"])


def _replay_delta(stack: LocalStack, thing: str, cid: str, entry: dict[str, Any], times: int) -> None:
    """Publish the delta that announced `cid` again, as a QoS 1 redelivery would."""
    data = stack.boto3_client("iot-data")
    delta = {"state": {cid: entry}, "timestamp": int(time.time()), "version": 1}
    topic = topics.shadow_topic(thing, "update", "delta", shadow=COMMANDS_SHADOW)
    for _ in range(times):
        data.publish(topic=topic, qos=1, payload=json.dumps(delta).encode())


def _replay_until_answered(stack: LocalStack, thing: str, cid: str, entry: dict[str, Any], times: int) -> None:
    """Redeliver the delta `times` times, each until the device answered it. A device answers a delta
    for a command it already ran by reporting the logged outcome again (one shadow version); a delta
    that arrives before it has re-read its shadow after a (re)connect is set aside, so send again."""
    for _ in range(times):
        before = _commands_version(stack, thing)
        deadline = time.monotonic() + 30
        while _commands_version(stack, thing) == before:
            assert time.monotonic() < deadline, f"{thing} never answered a replayed delta"
            _replay_delta(stack, thing, cid, entry, times=1)
            answered_by = time.monotonic() + 2
            while _commands_version(stack, thing) == before and time.monotonic() < answered_by:
                time.sleep(0.05)


def test_the_same_delta_delivered_again_never_runs_a_command_twice(stack: LocalStack) -> None:
    # GIVEN a device with its LED in a known state
    thing = stack.things[0]
    data = stack.boto3_client("iot-data")
    start = _led(stack, thing)
    # WHEN an LED toggle is queued in its commands shadow, exactly as the API does (one delta) ...
    cid = "dup-delta-toggle"
    now = int(time.time() * 1000)
    entry = contract.pending_entry("led", {"state": "toggle"}, issued_at=now, expires_at=now + 60_000)
    data.update_thing_shadow(thingName=thing, shadowName=COMMANDS_SHADOW,
                             payload=json.dumps({"state": {"desired": {cid: entry}}, "clientToken": cid}).encode())  # fmt: skip
    # ... and the same delta arrives three more times right behind it
    _replay_delta(stack, thing, cid, entry, times=3)
    first = wait_terminal(stack, thing, cid)

    # THEN the toggle ran once: SUCCEEDED, and the LED flipped exactly once
    assert first["state"] == "SUCCEEDED", first
    flipped = "off" if start == "on" else "on"
    assert first["result"] == {"led": flipped}
    wait_until(lambda: _led(stack, thing) == flipped, timeout=10, what="LED reported")

    # WHEN the delta is delivered again after the outcome was reported
    _replay_until_answered(stack, thing, cid, entry, times=2)
    # THEN nothing ran: the LED and the outcome are unchanged
    assert _led(stack, thing) == flipped
    assert view_key(wait_terminal(stack, thing, cid)) == view_key(first)

    # WHEN the device crashes and boots again (its simulated LED starts off) and the delta arrives once more
    stack.kill(f"device-{thing}", signal.SIGKILL)
    stack.restart(f"device-{thing}")
    wait_until(lambda: _led(stack, thing) == "off" and http(stack.config.api_url, "GET", f"/devices/{thing}",
               key=stack.config.api_key).body["connected"], timeout=30, what="device back")  # fmt: skip
    _replay_until_answered(stack, thing, cid, entry, times=2)
    # THEN its executed log, which survived the crash, still stops it: the LED stays off
    assert _led(stack, thing) == "off"
    assert view_key(wait_terminal(stack, thing, cid)) == view_key(first)
    logged = read_executed_log(stack, thing)[cid]
    assert logged is not None and view_key(logged) == view_key(first)


def test_concurrent_retries_of_one_post_run_it_once_and_all_get_its_outcome(stack: LocalStack) -> None:
    # GIVEN a device with its LED in a known state
    thing = stack.things[1]
    api, key = stack.config.api_url, stack.config.api_key
    start = _led(stack, thing)
    body = {"action": "led", "params": {"state": "toggle"}, "id": "retried-8-times"}
    replies: list[Reply] = []
    go = threading.Barrier(8)

    def post() -> None:
        go.wait()
        replies.append(http(api, "POST", f"/devices/{thing}/commands", key=key, body=body))

    # WHEN eight copies of the same POST (same id) arrive at once, as an impatient client's retries would
    workers = [threading.Thread(target=post) for _ in range(8)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)

    # THEN every copy is answered 200 or 202 for that id, and all terminal answers are the same outcome
    assert len(replies) == 8 and all(r.status in (200, 202) for r in replies), [(r.status, r.body) for r in replies]
    assert {r.body["id"] for r in replies} == {"retried-8-times"}
    final = wait_terminal(stack, thing, "retried-8-times")
    assert {view_key(r.body) for r in replies if r.status == 200} <= {view_key(final)}
    # AND the LED flipped exactly once
    flipped = "off" if start == "on" else "on"
    assert final["state"] == "SUCCEEDED" and final["result"] == {"led": flipped}, final
    wait_until(lambda: _led(stack, thing) == flipped, timeout=10, what="LED reported")


def test_the_same_id_with_other_params_after_it_finished_is_a_conflict(stack: LocalStack) -> None:
    # GIVEN a finished LED toggle with a caller-chosen id
    thing = stack.things[1]
    api, key = stack.config.api_url, stack.config.api_key
    body = {"action": "led", "params": {"state": "toggle"}, "id": "finished-toggle"}
    done = http(api, "POST", f"/devices/{thing}/commands", key=key, body=body)
    assert done.status == 200 and done.body["state"] == "SUCCEEDED", done
    # WHEN the same id is posted again with other params
    other = http(api, "POST", f"/devices/{thing}/commands", key=key, body={**body, "params": {"state": "on"}})
    # THEN it is refused as a conflict instead of being answered with the toggle's outcome
    assert other.status == 409 and other.code == "ID_CONFLICT", other


def test_the_same_id_with_other_params_while_pending_is_a_conflict(stack: LocalStack) -> None:
    # GIVEN a command queued for an offline device
    thing = stack.things[1]
    api, key = stack.config.api_url, stack.config.api_key
    stack.kill(f"device-{thing}", signal.SIGKILL)
    body = {"action": "led", "params": {"state": "toggle"}, "id": "pending-toggle", "timeoutMs": 0}
    queued = http(api, "POST", f"/devices/{thing}/commands", key=key, body=body)
    assert queued.status == 202, queued
    # WHEN the same id is posted again with other params
    other = http(api, "POST", f"/devices/{thing}/commands", key=key, body={**body, "params": {"state": "on"}})
    # THEN it is refused as a conflict, and the queued command is the original one
    assert other.status == 409 and other.code == "ID_CONFLICT", other
    view = http(api, "GET", f"/devices/{thing}/commands/pending-toggle", key=key).body
    assert view["params"] == {"state": "toggle"}, view
