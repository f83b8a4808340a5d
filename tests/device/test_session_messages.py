"""The agent's session against shadow messages in orders a broker may deliver them, without a broker.

publish/subscribe are captured; messages are put in the session's inbox as paho's
callbacks would, and the session steps as the pump would step it. Each scenario is
one AWS IoT allows: answers queued in a persistent session from an earlier
connection, no order across topics, a connection lost with updates unsent.
"""

from __future__ import annotations

import datetime
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

from iotbridge_contract import topics
from iotbridge_contract.commands import COMMANDS_SHADOW, MAX_STATE_LEVELS, QUEUE_OPENED, key_levels, pending_entry
from iotbridge_contract.mqtt import Endpoint
from iotbridge_pi.executed_log import ExecutedLog
from iotbridge_pi.handlers import Action, Registry, default_registry
from iotbridge_pi.hardware import Sensors, simulated_hardware
from iotbridge_pi.model import DeviceModel
from iotbridge_pi.protocol import CommandCore, ServiceClock
from iotbridge_pi.runner import start_inline, threaded_starter
from iotbridge_pi.session import CLASSIC_FIRST_S, DeviceSession, SessionOptions, Starter

THING = "lamp-s1"
NOW_S = int(time.time())
NOW_MS = NOW_S * 1000


class Wire:
    """A session whose MQTT client publishes into a list; `answer` replies as the shadow service would."""

    def __init__(self, state_dir: Path, registry: Registry | None = None, start_job: Starter = start_inline,
                 options: SessionOptions | None = None) -> None:  # fmt: skip
        self.device = DeviceModel(simulated_hardware(sensors=Sensors(thermal_zone=None, rng=random.Random(1))),
                                  interval_s=60)  # fmt: skip
        self.session = DeviceSession(
            THING, Endpoint(host="127.0.0.1", port=1), state_dir_log=lambda: ExecutedLog(state_dir),
            device=self.device, registry=registry or default_registry(), start_job=start_job, options=options,
        )  # fmt: skip
        self.sent: list[tuple[str, Any]] = []
        self.now = time.monotonic()
        client: Any = self.session.client
        client.publish = lambda topic, payload=None, qos=0, retain=False: self.sent.append((topic, json.loads(payload or "null")))
        client.subscribe = lambda subscriptions: (0, 1)

    def step(self, after_s: float = 0.0) -> None:
        self.now += after_s
        self.session.step(self.now)

    def connect(self) -> None:
        self.session.inbox.extend([("connack", True), ("suback", 1)])
        self.step()

    def drop(self) -> None:
        self.session.inbox.append(("disconnected", "lost"))
        self.step()

    def message(self, shadow: str | None, operation: str, reply: str, doc: dict[str, Any]) -> None:
        topic = topics.shadow_topic(THING, operation, reply, shadow=shadow)
        self.session.inbox.append(("message", (topic, json.dumps({"timestamp": NOW_S, "version": 1, **doc}).encode())))
        self.step()

    def last_get_token(self, shadow: str | None) -> str:
        topic = topics.shadow_topic(THING, "get", shadow=shadow)
        return next(doc["clientToken"] for t, doc in reversed(self.sent) if t == topic)

    def commands_gets(self) -> list[str]:
        """The gets of the commands shadow the agent has sent."""
        topic = topics.shadow_topic(THING, "get", shadow=COMMANDS_SHADOW)
        return [t for t, _ in self.sent if t == topic]

    def answer_get(self, shadow: str | None, state: dict[str, Any], **extra: Any) -> None:
        self.message(shadow, "get", "accepted", {"state": state, "clientToken": self.last_get_token(shadow), **extra})

    def accept_last_state(self) -> None:
        """The classic shadow accepts the device's last state update (an outcome waits for that)."""
        update = self.updates(None)[-1]
        self.message(None, "update", "accepted", {"state": update["state"], "clientToken": update["clientToken"]})

    def updates(self, shadow: str | None) -> list[dict[str, Any]]:
        topic = topics.shadow_topic(THING, "update", shadow=shadow)
        return [doc for t, doc in self.sent if t == topic]

    def outcomes(self) -> dict[str, Any]:
        return {k: v for u in self.updates(COMMANDS_SHADOW) for k, v in u["state"].get("reported", {}).items() if v}


def command(action: str, params: dict[str, Any], *, issued_ms: int = NOW_MS, ttl_ms: int = 60_000) -> dict[str, Any]:
    return pending_entry(action, params, issued_at=issued_ms, expires_at=issued_ms + ttl_ms)


def test_an_answer_to_an_earlier_connections_get_runs_nothing(tmp_path: Path) -> None:
    # GIVEN an agent that has just started and connected (no service clock yet)
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {})
    # WHEN the broker first delivers an answer queued in the persistent session an hour ago, to a
    # get of the previous connection, listing a one-minute command that expired long since
    hour_ago = NOW_S - 3600
    stale = {"c1": command("relay", {"on": True}, issued_ms=hour_ago * 1000)}
    wire.message(COMMANDS_SHADOW, "get", "accepted", {"state": {"desired": stale}, "timestamp": hour_ago,
                                                      "clientToken": "get.0ld0ld00.1"})  # fmt: skip
    # THEN the command does not run on that answer's clock (nor on one whose token is no string)
    wire.message(COMMANDS_SHADOW, "get", "accepted", {"state": {"desired": stale}, "clientToken": ["get"]})
    assert (wire.device.relay, wire.session.commands_run) == (False, 0)
    # AND the answer to this connection's own get decides: EXPIRED, by the service's clock of now
    wire.answer_get(COMMANDS_SHADOW, {"desired": stale}, timestamp=NOW_S)
    wire.step(1.0)
    assert wire.device.relay is False and wire.outcomes()["c1"]["state"] == "EXPIRED"


def test_a_connected_agent_reads_its_commands_shadow_every_six_hours_to_keep_the_service_clock(tmp_path: Path) -> None:
    # GIVEN an agent connected and synced, with nothing to do
    from iotbridge_pi.session import CLOCK_CHECK_S

    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {})
    wire.answer_get(COMMANDS_SHADOW, {})
    assert len(wire.commands_gets()) == 1
    # WHEN six hours pass
    wire.step(CLOCK_CHECK_S - 1)
    assert len(wire.commands_gets()) == 1
    wire.step(2)
    # THEN it asks for the commands shadow again: the answer, matched by its clientToken, is current,
    # and may hold back a monotonic clock that runs fast (ServiceClock.observe)
    assert CLOCK_CHECK_S == 6 * 3600 and len(wire.commands_gets()) >= 2  # (its retry timer runs on the real clock)


def test_the_classic_desired_is_applied_before_a_command_whatever_order_the_answers_come_in(tmp_path: Path) -> None:
    # GIVEN a device reconnecting after `led: on` was set as desired, and then `led off` queued
    wire = Wire(tmp_path)
    wire.connect()
    # WHEN the commands shadow's answer arrives before the classic one (AWS orders nothing across topics)
    wire.answer_get(COMMANDS_SHADOW, {"desired": {"l1": command("led", {"state": "off"})}})
    assert wire.session.commands_run == 0  # it waits for the classic shadow
    wire.answer_get(None, {"desired": {"led": "on"}, "reported": {"led": "off"}})
    wire.step(1.0)
    wire.accept_last_state()
    wire.step(1.0)
    # THEN the command, which came later, wins: the LED is off, and desired.led is cleared
    assert (wire.device.led, wire.outcomes()["l1"]["state"]) == ("off", "SUCCEEDED")
    assert any((u["state"].get("desired") or {}).get("led", "absent") is None for u in wire.updates(None))


def test_commands_run_even_if_the_classic_shadow_never_answers(tmp_path: Path) -> None:
    # GIVEN a connected device whose classic get is never answered
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(COMMANDS_SHADOW, {"desired": {"p1": command("ping", {})}})
    # WHEN the wait for it runs out THEN the commands run anyway
    wire.step(CLASSIC_FIRST_S + 0.1)
    wire.step(1.0)
    assert wire.outcomes()["p1"]["state"] == "SUCCEEDED"


def test_a_command_that_overrode_desired_is_not_undone_by_a_reconnect(tmp_path: Path) -> None:
    # GIVEN a device that applied desired led "on", and then ran "led off", whose state update
    # (with desired.led = null) had not gone out when the connection was lost
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {"desired": {"led": "on"}})
    wire.answer_get(COMMANDS_SHADOW, {})
    assert wire.device.led == "on"
    wire.session._flush_tokens = 0.0  # the update budget is spent: the next state update waits
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": {"l1": command("led", {"state": "off"})}})
    assert wire.device.led == "off"
    wire.drop()
    # WHEN it reconnects and the classic shadow still says desired led "on"
    wire.connect()
    wire.answer_get(None, {"desired": {"led": "on"}})
    wire.step(1.0)
    # THEN the LED stays off, and the stale desired value is cleared
    assert wire.device.led == "off"
    assert (wire.updates(None)[-1]["state"].get("desired") or {}).get("led", "absent") is None


def _probe_device(tmp_path: Path, result: Any) -> Wire:
    registry = default_registry()
    registry.add(Action("probe", {}, lambda device, params: result, deadline_s=1.0))
    wire = Wire(tmp_path, registry)
    wire.connect()
    wire.answer_get(None, {})
    wire.answer_get(COMMANDS_SHADOW, {"desired": {"p1": command("probe", {})}})
    wire.step(1.0)
    return wire


def test_a_handler_result_that_is_no_json_is_answered_failed(tmp_path: Path) -> None:
    # GIVEN a custom action that returns a datetime WHEN it runs THEN the command gets an outcome that says why
    outcome = _probe_device(tmp_path, {"at": datetime.datetime.now()}).outcomes()["p1"]
    assert outcome["state"] == "FAILED" and "not JSON" in outcome["error"]


def test_a_result_nested_too_deep_for_aws_is_truncated_not_rejected(tmp_path: Path) -> None:
    # GIVEN a custom action whose result nests 5 levels WHEN it runs
    wire = _probe_device(tmp_path, {"sensors": {"bme280": {"temp": {"v": {"raw": 1}}}}})
    # THEN the outcome update stays within AWS's depth limit (a 400 would lose every outcome in it)
    update = wire.updates(COMMANDS_SHADOW)[-1]
    assert key_levels(update["state"]["reported"]) <= MAX_STATE_LEVELS
    assert wire.outcomes()["p1"] == {**wire.outcomes()["p1"], "state": "SUCCEEDED", "result": {"truncated": True}}


def test_a_log_that_cannot_be_written_strands_no_command_of_a_get(tmp_path: Path) -> None:
    # GIVEN a device whose SD card went read-only
    clock = ServiceClock()
    core = CommandCore(ExecutedLog(tmp_path), default_registry().advertisement(), service_clock=clock)

    def read_only(*args: Any, **kwargs: Any) -> None:
        raise OSError(30, "Read-only file system")

    core.log._append = read_only  # type: ignore[method-assign]
    # WHEN a get lists a valid command and one to reject
    pending = {"good": command("ping", {}), "bad": command("no_such_action", {}, issued_ms=NOW_MS + 1)}
    plan = core.on_get_accepted({"state": {"desired": pending}, "timestamp": NOW_S})
    # THEN the bad one is answered REJECTED and the good one goes on to run (where its start, unloggable, is answered)
    assert plan.report["bad"]["state"] == "REJECTED"
    assert [c.id for c in plan.run] == ["good"]


def test_a_handler_past_its_deadline_is_waited_for_and_what_it_did_late_is_reported(tmp_path: Path) -> None:
    # GIVEN a custom action that turns the LED on 0.3 s into a 0.1 s deadline, and a relay command behind it
    overlapped: list[bool] = []

    def slow_led(device: DeviceModel, params: dict[str, Any]) -> None:
        time.sleep(0.3)
        device.apply({"led": "on"})

    def relay(device: DeviceModel, params: dict[str, Any]) -> None:
        overlapped.append(device.led != "on")  # the slow handler has not finished its work
        device.apply({"relay": True})

    registry = default_registry()
    registry.add(Action("slow_led", {}, slow_led, deadline_s=0.1))
    registry.add(Action("switch", {}, relay, deadline_s=1.0))
    wire = Wire(tmp_path, registry, threaded_starter(lambda: None))
    wire.connect()
    wire.answer_get(None, {})
    pending = {"s1": command("slow_led", {}), "r1": command("switch", {}, issued_ms=NOW_MS + 1)}
    # WHEN both run
    wire.answer_get(COMMANDS_SHADOW, {"desired": pending})
    deadline = time.monotonic() + 5
    while "r1" not in wire.outcomes() and time.monotonic() < deadline:
        time.sleep(0.02)
        wire.step(0.02)
        if wire.updates(None) and wire.updates(None)[-1].get("clientToken"):
            wire.accept_last_state()
    # THEN the first is TIMED_OUT, the second started only once the first had returned,
    # and the LED it turned on late is reported, not left for the next full report
    assert wire.outcomes()["s1"]["state"] == "TIMED_OUT"
    assert wire.outcomes()["r1"]["state"] == "SUCCEEDED" and overlapped == [False]
    assert any(u["state"]["reported"].get("led") == "on" for u in wire.updates(None))


def _settle(wire: Wire, until: Any, timeout: float = 5.0) -> None:
    """Step (as the pump would) until until() holds; threaded handlers finish on their own."""
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        time.sleep(0.02)
        wire.step(0.02)


def _running_slow(tmp_path: Path, desired: dict[str, Any], behind: dict[str, Any]) -> tuple[Wire, threading.Event]:
    """A connected device (classic desired applied) running `slow` (it returns once the event is
    set), with the commands `behind` queued after it."""
    release = threading.Event()
    registry = default_registry()
    registry.add(Action("slow", {}, lambda device, params: release.wait(5), deadline_s=5.0))
    wire = Wire(tmp_path, registry, threaded_starter(lambda: None))
    wire.connect()
    wire.answer_get(None, {"desired": desired} if desired else {})
    wire.answer_get(COMMANDS_SHADOW, {"desired": {"s1": command("slow", {}), **behind}})
    wire.step(0.01)
    return wire, release


def test_commands_waiting_when_the_connection_drops_wait_for_the_next_classic_get(tmp_path: Path) -> None:
    # GIVEN a device that applied desired led "on", and is running a slow command with `led off` queued behind it
    pending = {"l1": command("led", {"state": "off"}, issued_ms=NOW_MS + 1)}
    wire, release = _running_slow(tmp_path, {"led": "on"}, pending)
    assert wire.device.led == "on"
    # WHEN the connection drops while the slow one runs, which finishes as the device reconnects
    wire.drop()
    release.set()
    time.sleep(0.1)
    wire.connect()
    _settle(wire, lambda: "s1" in wire.outcomes())
    # AND the classic get (asked at that connect) answers with the desired value from before `led off`
    wire.answer_get(None, {"desired": {"led": "on"}})
    wire.answer_get(COMMANDS_SHADOW, {"desired": {"l1": pending["l1"]}})
    _settle(wire, lambda: "l1" in wire.outcomes())
    for _ in range(3):
        if wire.updates(None)[-1].get("clientToken"):
            wire.accept_last_state()
        wire.step(1.0)
    # THEN `led off` ran after that get was applied: it succeeded, the LED is off, and desired.led is cleared
    assert wire.outcomes()["l1"]["state"] == "SUCCEEDED"
    assert wire.device.led == "off"
    assert any((u["state"].get("desired") or {}).get("led", "absent") is None for u in wire.updates(None))


def test_a_stopping_agent_finishes_the_running_command_and_starts_no_other(tmp_path: Path) -> None:
    # GIVEN a device running a slow command with a ping queued behind it
    wire, release = _running_slow(tmp_path, {}, {"p1": command("ping", {}, issued_ms=NOW_MS + 1)})
    # WHEN the agent is told to stop (systemctl stop: the pump drains), and the slow one then finishes
    wire.session.drain()
    release.set()
    _settle(wire, lambda: "s1" in wire.outcomes())
    wire.step(0.5)
    # THEN the slow one is reported, and the ping was not started only to be cut off: the next
    # start's get lists it, and it runs then
    assert wire.outcomes()["s1"]["state"] == "SUCCEEDED"
    assert "p1" not in wire.outcomes() and wire.session.commands_run == 1
    assert not wire.session.busy()


def _clears_led(update: dict[str, Any]) -> bool:
    return "led" in (update["state"].get("desired") or {}) and update["state"]["desired"]["led"] is None


def test_a_late_classic_get_or_delta_does_not_undo_a_command_that_ran_after_its_value(tmp_path: Path) -> None:
    # GIVEN a connected device whose classic get is slow, so commands run without it after the wait
    wire = Wire(tmp_path)
    wire.connect()
    token = wire.last_get_token(None)
    wire.answer_get(COMMANDS_SHADOW, {"desired": {"l1": command("led", {"state": "off"})}})
    wire.step(CLASSIC_FIRST_S + 0.1)
    wire.accept_last_state()  # its state update (clearing desired.led); the outcome follows it
    wire.step(1.0)
    assert (wire.outcomes()["l1"]["state"], wire.device.led) == ("SUCCEEDED", "off")
    # WHEN that get's answer then arrives, with desired led "on" stamped a minute before the command,
    # and a delta published before the command's clear arrives late too
    stamp = {"led": {"timestamp": NOW_S - 60}}
    wire.message(None, "get", "accepted", {"state": {"desired": {"led": "on"}}, "metadata": {"desired": stamp},
                                           "clientToken": token})  # fmt: skip
    wire.message(None, "update", "delta", {"state": {"led": "on"}, "metadata": stamp})
    wire.step(1.0)
    # THEN the LED stays off, as the command left it, and the stale value is cleared from desired
    assert wire.device.led == "off"
    assert _clears_led(wire.updates(None)[-1])


def test_a_value_the_user_set_while_the_device_was_away_is_applied_on_reconnect(tmp_path: Path) -> None:
    # GIVEN a device that ran `led on` (its state update, clearing desired.led, unanswered) and lost its connection
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {})
    wire.answer_get(COMMANDS_SHADOW, {})
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": {"l1": command("led", {"state": "on"})}})
    assert wire.device.led == "on"
    wire.drop()
    sent_before = len(wire.updates(None))
    # WHEN, while it was away, the user set led "off" (stamped after the command), and it reconnects
    wire.connect()
    wire.answer_get(None, {"desired": {"led": "off"}}, metadata={"desired": {"led": {"timestamp": NOW_S + 30}}})
    wire.step(1.0)
    # THEN the user's newer value is applied, and not cleared
    assert wire.device.led == "off"
    assert not any(_clears_led(u) for u in wire.updates(None)[sent_before:])


def test_a_command_whose_clear_a_crash_prevented_is_not_undone_after_the_restart(tmp_path: Path) -> None:
    # GIVEN a device that applied desired led "on" (set a minute ago), then ran "led off", and was
    # killed before its state update (clearing desired.led) went out
    wire = Wire(tmp_path)
    wire.connect()
    stamp = {"desired": {"led": {"timestamp": NOW_S - 60}}}
    wire.answer_get(None, {"desired": {"led": "on"}}, metadata=stamp)
    wire.answer_get(COMMANDS_SHADOW, {})
    wire.session._flush_tokens = 0.0  # the update budget is spent: the next state update waits
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": {"l1": command("led", {"state": "off"})}})
    assert wire.device.led == "off"
    # WHEN the agent starts again (a new process, the same executed log) and the classic shadow still says "on"
    again = Wire(tmp_path)
    again.connect()
    again.answer_get(None, {"desired": {"led": "on"}}, metadata=stamp)
    again.step(1.0)
    # THEN the older value is cleared, not applied: the command's "off" stands
    assert again.device.led == "off"
    assert _clears_led(again.updates(None)[-1])


def test_a_system_reboot_the_system_refuses_leaves_the_agent_running_commands(tmp_path: Path) -> None:
    # GIVEN an agent set up for real reboots, on a system that refuses them (no polkit rule)
    asked: list[bool] = []
    wire = Wire(tmp_path, options=SessionOptions(reboot=lambda: asked.append(True) or False))
    wire.connect()
    wire.answer_get(None, {})
    wire.answer_get(COMMANDS_SHADOW, {})
    # WHEN a reboot command runs (answered first) and the reboot is refused, and a ping follows
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": {"rb": command("reboot", {"delayMs": 0})}})
    wire.step(0.1)
    assert asked == [True] and wire.outcomes()["rb"]["state"] == "SUCCEEDED"
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": {"p1": command("ping", {}, issued_ms=NOW_MS + 1)}})
    wire.step(0.1)
    # THEN the agent goes on: the ping runs
    assert wire.outcomes()["p1"]["state"] == "SUCCEEDED"


def test_a_new_devices_first_command_runs_though_the_404_of_its_get_carried_no_clock(tmp_path: Path) -> None:
    # GIVEN a new device: its commands get is refused 404 without a timestamp (AWS's error
    # documents need not carry one), so it has no service clock yet
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {})

    def refuse_last_get() -> None:
        refusal = {"code": 404, "message": "No shadow exists", "clientToken": wire.last_get_token(COMMANDS_SHADOW)}
        rejected = topics.shadow_topic(THING, "get", "rejected", shadow=COMMANDS_SHADOW)
        wire.session.inbox.append(("message", (rejected, json.dumps(refusal).encode())))
        wire.step()

    refuse_last_get()
    # THEN it opens its command queue (creates the commands shadow, so the API queues commands at
    # once) and reads it again
    assert wire.updates(COMMANDS_SHADOW) == [QUEUE_OPENED] and len(wire.commands_gets()) == 2
    # WHEN that get is refused 404 as well (AWS orders nothing: it was served before the update)
    refuse_last_get()
    assert wire.updates(COMMANDS_SHADOW) == [QUEUE_OPENED] and len(wire.commands_gets()) == 2  # opened once
    # AND its first command arrives, as a delta (which cannot set the clock: it may have waited in the broker)
    pending = {"c1": command("relay", {"on": True})}
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": pending})
    # THEN it reads its commands shadow again, which exists now, and that answer's clock runs the command
    assert len(wire.commands_gets()) == 3
    wire.answer_get(COMMANDS_SHADOW, {"desired": pending})
    wire.step(1.0)
    wire.accept_last_state()  # the relay's new state first, then the outcome
    wire.step(1.0)
    assert wire.device.relay is True and wire.outcomes()["c1"]["state"] == "SUCCEEDED"


def test_a_delta_that_overtakes_the_first_gets_answer_is_run_once_the_clock_is_known(tmp_path: Path) -> None:
    # GIVEN an agent that has just started: its commands get is answered (nothing pending, version 4),
    # then a command is queued (version 5), and that delta reaches it first (AWS orders nothing across topics)
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {})
    token = wire.last_get_token(COMMANDS_SHADOW)
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": {"x1": command("ping", {})}, "version": 5})
    # WHEN the get's answer arrives, without the command
    wire.message(COMMANDS_SHADOW, "get", "accepted", {"state": {}, "clientToken": token, "version": 4})
    wire.step(1.0)
    # THEN the command runs, judged by the answer's clock
    assert wire.session.commands_run == 1 and wire.outcomes()["x1"]["state"] == "SUCCEEDED"


def test_a_delta_older_than_the_first_gets_answer_runs_nothing_the_answer_left_out(tmp_path: Path) -> None:
    # GIVEN an agent that has just started, and a delta from the broker's queue listing a command (version 3)
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {})
    wire.message(COMMANDS_SHADOW, "update", "delta", {"state": {"old": command("ping", {})}, "version": 3})
    # WHEN its get's answer (version 4) no longer lists it (done or withdrawn since)
    wire.answer_get(COMMANDS_SHADOW, {}, version=4)
    wire.step(1.0)
    # THEN it is not run
    assert wire.session.commands_run == 0 and "old" not in wire.outcomes()


def _finished_while_offline(tmp_path: Path, registry: Registry, desired: dict[str, Any], release: threading.Event) -> Wire:
    """An agent given `desired` on its first connection, which drops while the handler waits for
    `release`; then the handler is released and has returned, the agent still offline."""
    wire = Wire(tmp_path, registry, threaded_starter(lambda: None))
    wire.connect()
    wire.answer_get(None, {})
    wire.answer_get(COMMANDS_SHADOW, {"desired": desired})
    wire.step(0.01)
    wire.drop()
    release.set()
    for _ in range(20):
        if not wire.session.busy():
            break
        time.sleep(0.05)
        wire.step(0.05)
    return wire


def test_a_handler_that_returns_while_offline_is_logged_at_once_and_reported_after_the_reconnect(tmp_path: Path) -> None:
    from iotbridge_pi import executed_log

    # GIVEN a slow command running when the connection drops
    release = threading.Event()
    registry = default_registry()
    registry.add(Action("slow", {}, lambda d, p: release.wait(5) and {"done": True}, deadline_s=5.0))
    # WHEN its handler returns while the device is offline
    wire = _finished_while_offline(tmp_path, registry, {"s1": command("slow", {})}, release)
    # THEN its outcome is in the executed log at once, and a stop now waits for nothing
    assert executed_log.read(tmp_path).entries["s1"].outcome["state"] == "SUCCEEDED"
    assert not wire.session.busy()
    # AND after a restart, the get that still lists it is answered with that outcome, not "interrupted"
    again = Wire(tmp_path, registry, threaded_starter(lambda: None))
    again.connect()
    again.answer_get(None, {})
    again.answer_get(COMMANDS_SHADOW, {"desired": {"s1": command("slow", {})}})
    again.step(1.0)
    assert again.outcomes()["s1"]["state"] == "SUCCEEDED" and again.session.commands_run == 0


def test_a_handler_that_calls_sys_exit_fails_that_command_and_the_next_one_runs(tmp_path: Path) -> None:
    import sys

    # GIVEN a custom action whose handler calls sys.exit(), queued before a ping
    registry = default_registry()
    registry.add(Action("quits", {}, lambda d, p: sys.exit(3), deadline_s=5.0))
    wire = Wire(tmp_path, registry, threaded_starter(lambda: None))
    wire.connect()
    wire.answer_get(None, {})
    # WHEN both run
    wire.answer_get(COMMANDS_SHADOW, {"desired": {"q1": command("quits", {}), "p1": command("ping", {}, issued_ms=NOW_MS + 1)}})
    for _ in range(40):
        if "p1" in wire.outcomes():
            break
        time.sleep(0.05)
        wire.step(0.05)
    # THEN the first FAILED, naming why, at once (not TIMED_OUT at its deadline), and the ping ran
    assert wire.outcomes()["q1"]["state"] == "FAILED" and "SystemExit" in wire.outcomes()["q1"]["error"]
    assert wire.outcomes()["p1"]["state"] == "SUCCEEDED"


def test_an_outcome_with_a_done_at_that_is_no_number_stops_no_report(tmp_path: Path) -> None:
    # GIVEN a commands shadow that lists an id again whose outcome (written around the agent) has doneAt "soon"
    wire = Wire(tmp_path)
    wire.connect()
    wire.answer_get(None, {})
    state = {"desired": {"odd": command("ping", {}), "c1": command("ping", {}, issued_ms=NOW_MS + 1)},
             "reported": {"odd": {"state": "SUCCEEDED", "action": "ping", "doneAt": "soon"}}}  # fmt: skip
    # WHEN it reads it and runs the other command
    wire.answer_get(COMMANDS_SHADOW, state)
    wire.step(1.0)
    # THEN the other command's outcome is still reported
    assert wire.outcomes()["c1"]["state"] == "SUCCEEDED"


def test_a_reboot_that_finished_while_offline_is_reported_before_the_device_reboots(tmp_path: Path) -> None:
    from iotbridge_pi.model import RebootRequest

    # GIVEN a command that asks for a reboot, running when the connection drops, and finishing offline
    release = threading.Event()

    def slow_reboot(device: DeviceModel, params: dict[str, Any]) -> Any:
        release.wait(5)
        device.reboot = RebootRequest(0)
        return {"rebooting": True}

    registry = default_registry()
    registry.add(Action("slow_reboot", {}, slow_reboot, deadline_s=5.0))
    pending = {"rb": command("slow_reboot", {})}
    wire = _finished_while_offline(tmp_path, registry, pending, release)
    # WHEN it connects again
    wire.connect()
    wire.step(1.0)
    # THEN it does not reboot before it has read its commands shadow (where the outcome must go first)
    assert wire.session.connected and "rb" not in wire.outcomes()
    # WHEN the gets are answered, the commands get still listing the command
    wire.answer_get(None, {})
    wire.answer_get(COMMANDS_SHADOW, {"desired": pending})
    for _ in range(5):
        wire.step(1.0)
    # THEN its outcome was reported, and then the device rebooted
    assert wire.outcomes()["rb"]["state"] == "SUCCEEDED" and not wire.session.connected
