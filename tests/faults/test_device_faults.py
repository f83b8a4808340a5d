"""The device goes away: its process is killed and restarted (flapping), it reboots while
commands are in flight, or the power goes while a command is running."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from iotbridge_local.stack import LocalStack
from iotbridge_pi.executed_log import ExecutedLog
from iotbridge_pi.protocol import INTERRUPTED
from tests.faults.conftest import COMMANDS, FAULT_EVERY
from tests.faults.harness import (
    Books,
    CommandStream,
    Reply,
    executed_log_path,
    http,
    run_streams_with_faults,
    wait_terminal,
    wait_until,
)
from tests.faults.invariants import all_promises, terminal_states

pytestmark = pytest.mark.stack


def _present(stack: LocalStack, thing: str, connected: bool) -> bool:
    reply = http(stack.config.api_url, "GET", f"/devices/{thing}", key=stack.config.api_key)
    return reply.status == 200 and reply.body["connected"] is connected


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_flapping_device_runs_every_command_once(stack: LocalStack, sig: int) -> None:
    # GIVEN a stream of commands to each of two devices
    things = stack.things
    flapping = things[0]
    kills = 0

    def flap() -> None:
        nonlocal kills
        stack.kill(f"device-{flapping}", sig)
        kills += 1
        time.sleep(0.3)
        stack.restart(f"device-{flapping}")

    # WHEN the first device's process is killed with `sig` and restarted every few commands
    per_device = COMMANDS // len(things)
    books, injected = run_streams_with_faults(stack, things, per_device, flap, every=FAULT_EVERY)

    # THEN every command is terminal and visible through the API, none ran twice (its executed
    #   log survived the restarts), and the device that never went down toggled in strict alternation
    assert injected >= 2
    problems = all_promises(stack, books, things, steady=things[1:])
    assert not problems, "\n".join(problems)
    # AND a command is only ever FAILED because the kill interrupted it (it is then not run again)
    for sent in books.sent:
        assert sent.first is not None
        if sent.first["state"] != "SUCCEEDED":
            assert sig == signal.SIGKILL and sent.first["state"] == "FAILED", sent.first
            assert sent.first["error"] == INTERRUPTED, sent.first


def test_reboots_in_the_middle_of_a_stream_run_nothing_twice(stack: LocalStack) -> None:
    # GIVEN a stream of commands to each of two devices
    things = stack.things
    rebooting = things[0]
    books = Books()
    rebooter = CommandStream(stack, rebooting, books)

    def reboot() -> None:
        # A second caller asks the device to reboot now, while the stream's commands are in flight.
        sent = rebooter.send("reboot", {"delayMs": 0})
        assert sent.first is not None and sent.first["state"] == "SUCCEEDED", sent

    # WHEN the first device is told to reboot every few commands
    per_device = COMMANDS // len(things)
    books, injected = run_streams_with_faults(stack, things, per_device, reboot, every=FAULT_EVERY, books=books)

    # THEN every command (the reboots too) is terminal, visible, and ran once; the LED state, which
    #   a reboot keeps, toggled in strict alternation on both devices
    problems = all_promises(stack, books, things, steady=things)
    assert not problems, "\n".join(problems)
    # AND the device rebooted exactly once per reboot command, by its own log (a reboot run again
    #   after reconnecting would reboot it forever)
    wait_until(lambda: _present(stack, rebooting, True), timeout=30, what=f"{rebooting} back online")
    time.sleep(1.5)  # longer than a simulated reboot's downtime: a repeated reboot would show up
    reboots = (stack.logs / f"device-{rebooting}.log").read_text().count("simulated reboot")
    assert injected >= 1 and reboots == injected, (reboots, injected)
    assert set(terminal_states(books)) == {"SUCCEEDED"}


def test_power_cut_while_a_command_runs_is_answered_and_never_rerun(stack: LocalStack) -> None:
    # GIVEN a device whose power is cut (SIGKILL) while it runs an LED toggle: the command is
    #   pending in its shadow, and its executed log says "started", with no outcome
    thing = stack.things[0]
    api, key = stack.config.api_url, stack.config.api_key
    stack.kill(f"device-{thing}", signal.SIGKILL)
    wait_until(lambda: _present(stack, thing, False), timeout=30, what=f"{thing} seen offline")
    queued = http(api, "POST", f"/devices/{thing}/commands", key=key,
                  body={"action": "led", "params": {"state": "toggle"}, "id": "cut-mid-toggle", "timeoutMs": 0})  # fmt: skip
    assert queued.status == 202 and queued.body["state"] == "QUEUED", queued
    ExecutedLog(executed_log_path(stack, thing).parent).started("cut-mid-toggle", "led")

    # WHEN the device boots again (its LED starts off) and reads its pending commands
    stack.restart(f"device-{thing}")

    # THEN the command ends FAILED with the reason, and the toggle did not run a second time
    final = wait_terminal(stack, thing, "cut-mid-toggle")
    assert final["state"] == "FAILED" and final["error"] == INTERRUPTED, final
    wait_until(lambda: _present(stack, thing, True), timeout=30, what=f"{thing} back online")
    device = http(api, "GET", f"/devices/{thing}", key=key).body
    assert device["reported"]["led"] == "off", device
    # AND the device's own log keeps that one outcome
    entry = ExecutedLog(executed_log_path(stack, thing).parent).get("cut-mid-toggle")
    assert entry is not None and entry.outcome is not None and entry.outcome["error"] == INTERRUPTED


def test_a_queued_command_waits_for_a_device_that_comes_back(stack: LocalStack) -> None:
    # GIVEN a device that is offline
    thing = stack.things[1]
    api, key = stack.config.api_url, stack.config.api_key
    stack.kill(f"device-{thing}", signal.SIGKILL)
    wait_until(lambda: _present(stack, thing, False), timeout=30, what=f"{thing} seen offline")
    # WHEN a caller who chose to fail fast sends a command, and another one who chose to queue
    fast = http(api, "POST", f"/devices/{thing}/commands", key=key, body={"action": "ping", "ifOffline": "fail"})
    slow: list[Reply] = []
    body = {"action": "ping", "id": "waits-for-device", "timeoutMs": 20_000}
    waiter = threading.Thread(target=lambda: slow.append(http(api, "POST", f"/devices/{thing}/commands", key=key, body=body)))
    waiter.start()
    time.sleep(0.5)
    stack.restart(f"device-{thing}")
    waiter.join(timeout=40)
    # THEN the first gets 409 DEVICE_OFFLINE naming the device, and nothing was queued for it
    assert fast.status == 409 and fast.code == "DEVICE_OFFLINE" and fast.body["details"]["thing"] == thing, fast
    listing = http(api, "GET", f"/devices/{thing}/commands", key=key).body["commands"]
    assert {c["id"] for c in listing} <= {"waits-for-device"}, listing
    # AND the second gets the device's answer once it is back (or a 202 it can follow to the answer)
    assert slow and slow[0].status in (200, 202), slow
    final = wait_terminal(stack, thing, "waits-for-device")
    assert final["state"] == "SUCCEEDED" and final["result"] == {"pong": True}, final
