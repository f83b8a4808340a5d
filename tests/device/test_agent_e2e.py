"""The Pi agent against real Mosquitto (mutual TLS) and the real shadow service process.

Commands go in the way the API puts them there: boto3 iot-data updates of the
`commands` shadow's desired state. Outcomes are read back from the shadow.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from iotbridge_contract.commands import COMMANDS_SHADOW
from iotbridge_local.broker import Broker
from iotbridge_pi.handlers import Action, default_registry
from iotbridge_pi.model import DeviceModel

from .conftest import RunningAgent, Shadows, wait_for


def test_a_new_device_advertises_its_actions_and_state(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a device with no shadow yet
    # WHEN its agent connects
    start_agent("pi-1")

    # THEN the classic shadow reports its state, its actions and what it is
    reported = wait_for(lambda: shadows.reported("pi-1").get("actions") and shadows.reported("pi-1"), "actions")
    assert reported["actions"]["led"] == {"state": "enum:on|off|toggle"}
    assert set(reported["actions"]) == {"led", "relay", "ping", "read_sensors", "reboot", "set_interval"}
    assert reported["led"] == "off" and reported["relay"] is False
    assert reported["agent"]["kind"] == "pi-agent" and reported["agent"]["hardware"] == "simulated"
    assert "cpuTempC" in reported["telemetry"]


def test_a_command_runs_and_its_outcome_replaces_it_in_the_shadow(
    start_agent: Callable[..., RunningAgent], shadows: Shadows
) -> None:
    # GIVEN a connected device
    handle = start_agent("pi-1")

    # WHEN the API queues "led on" in the commands shadow
    shadows.add_command("pi-1", "cmd-led-1", "led", {"state": "on"})

    # THEN the outcome appears in reported, the command left desired, and the LED is on
    outcome = shadows.outcome("pi-1", "cmd-led-1")
    assert outcome["state"] == "SUCCEEDED" and outcome["result"] == {"led": "on"}
    assert "cmd-led-1" not in shadows.commands("pi-1").get("desired", {})
    assert handle.agent.device.led == "on"
    # AND by the time the outcome is visible, the classic shadow already reports the new state
    assert shadows.reported("pi-1")["led"] == "on"


def test_several_commands_each_get_their_own_outcome(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a connected device
    start_agent("pi-1")

    # WHEN three different commands are queued at once
    shadows.add_command("pi-1", "a-ping", "ping")
    shadows.add_command("pi-1", "a-relay", "relay", {"on": True})
    shadows.add_command("pi-1", "a-sensors", "read_sensors")

    # THEN each id carries the answer of its own command
    assert shadows.outcome("pi-1", "a-ping")["result"] == {"pong": True}
    assert shadows.outcome("pi-1", "a-relay")["result"] == {"relay": True}
    sensors = shadows.outcome("pi-1", "a-sensors")["result"]
    assert {"cpuTempC", "uptimeS", "load1"} <= set(sensors)


def test_bad_params_and_unknown_actions_are_rejected_by_the_device(
    start_agent: Callable[..., RunningAgent], shadows: Shadows
) -> None:
    # GIVEN a connected device
    handle = start_agent("pi-1")

    # WHEN commands the device cannot accept reach it (the API normally stops these first)
    shadows.add_command("pi-1", "bad-params", "led", {"state": "blue"})
    shadows.add_command("pi-1", "bad-action", "launch")

    # THEN both are REJECTED with the reason, and nothing ran
    bad_params = shadows.outcome("pi-1", "bad-params")
    bad_action = shadows.outcome("pi-1", "bad-action")
    assert bad_params["state"] == "REJECTED" and "must be one of on, off, toggle" in bad_params["error"]
    assert bad_action["state"] == "REJECTED" and "launch" in bad_action["error"]
    assert handle.agent.session.commands_run == 0


def test_commands_queued_while_offline_run_on_connect_and_expired_ones_do_not(
    start_agent: Callable[..., RunningAgent], shadows: Shadows
) -> None:
    # GIVEN a device that is off, with one live command and one whose time-to-live runs out
    shadows.add_command("pi-1", "live", "led", {"state": "on"}, ttl_ms=120_000)
    shadows.add_command("pi-1", "stale", "relay", {"on": True}, ttl_ms=1)
    time.sleep(1.1)  # the service clock has second resolution: let it move past expiresAt

    # WHEN the device connects
    handle = start_agent("pi-1")

    # THEN the live one runs and the expired one is answered EXPIRED without touching the relay
    assert shadows.outcome("pi-1", "live")["state"] == "SUCCEEDED"
    assert shadows.outcome("pi-1", "stale")["state"] == "EXPIRED"
    assert handle.agent.device.relay is False


def test_desired_state_is_applied_when_the_device_comes_back(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a device that is off while someone sets desired relay on
    shadows.update("pi-1", {"state": {"desired": {"relay": True, "interval": 30}}})

    # WHEN it connects
    handle = start_agent("pi-1")

    # THEN it applies the desired state and reports it, which clears the delta
    wait_for(lambda: shadows.reported("pi-1").get("relay") is True, "relay reported on")
    assert handle.agent.device.relay is True and handle.agent.device.interval_s == 30
    wait_for(lambda: "delta" not in shadows.get("pi-1").get("state", {}), "delta cleared")

    # AND WHEN desired changes while it is connected, it follows
    shadows.update("pi-1", {"state": {"desired": {"led": "on"}}})
    wait_for(lambda: shadows.reported("pi-1").get("led") == "on", "led reported on")


def test_a_desired_value_the_device_refuses_does_not_start_an_update_storm(
    start_agent: Callable[..., RunningAgent], shadows: Shadows
) -> None:
    # GIVEN a connected device
    handle = start_agent("pi-1")
    wait_for(lambda: shadows.reported("pi-1").get("actions"), "first report")

    # WHEN desired gets a value it cannot apply and a key it does not have, next to a good one
    shadows.update("pi-1", {"state": {"desired": {"led": "purple", "colour": "red", "relay": True}}})

    # THEN it applies the good one, and the refused ones stay visible in the delta
    wait_for(lambda: shadows.reported("pi-1").get("relay") is True, "relay reported on")
    assert handle.agent.device.led == "off"
    # AND it does not answer every delta with a report: AWS publishes a delta after every
    # update that leaves one, reported-only updates included, so each report would bring
    # the refused keys back and the device would update its shadow 8 times a second for good
    time.sleep(0.5)
    settled = shadows.get("pi-1")
    assert settled["state"]["delta"] == {"led": "purple", "colour": "red"}
    time.sleep(1.0)
    assert shadows.get("pi-1")["version"] == settled["version"]


def test_a_desired_telemetry_interval_applies_at_once(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a connected device reporting telemetry every 60 s
    start_agent("pi-1")
    first = wait_for(lambda: shadows.reported("pi-1").get("telemetry"), "first telemetry")

    # WHEN desired sets the interval to 1 s
    shadows.update("pi-1", {"state": {"desired": {"interval": 1}}})

    # THEN telemetry follows within seconds, not after the 60 s already scheduled
    wait_for(lambda: shadows.reported("pi-1").get("interval") == 1, "interval reported")
    samples: set[int] = set()

    def two_new_samples() -> bool:
        samples.add(shadows.reported("pi-1")["telemetry"]["at"])
        return len(samples - {first["at"]}) >= 2

    wait_for(two_new_samples, "two new telemetry samples", timeout=5)


def test_a_command_does_not_run_twice_across_an_agent_restart(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a device that toggled its LED for command t1, then stopped
    first = start_agent("pi-1")
    shadows.add_command("pi-1", "t1", "led", {"state": "toggle"})
    outcome = shadows.outcome("pi-1", "t1")
    first.stop()

    # WHEN t1 shows up pending again (a retried write) and a new agent process starts
    shadows.add_command("pi-1", "t1", "led", {"state": "toggle"})
    second = start_agent("pi-1")

    # THEN the new agent answers t1 from its executed log: same outcome, nothing toggled
    wait_for(lambda: "t1" not in shadows.commands("pi-1").get("desired", {}), "t1 cleared from desired")
    assert shadows.commands("pi-1")["reported"]["t1"] == outcome
    assert second.agent.session.commands_run == 0


def test_reboot_answers_first_then_reconnects_with_its_log(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a connected device
    handle = start_agent("pi-1")

    # WHEN it is told to reboot
    shadows.add_command("pi-1", "boot-1", "reboot", {"delayMs": 0})

    # THEN it reports SUCCEEDED, drops off, comes back, and still knows boot-1 was done
    assert shadows.outcome("pi-1", "boot-1")["result"] == {"rebooting": True, "delayMs": 0}
    session = handle.agent.session
    wait_for(lambda: session.connections >= 2 and session.connected, "reconnect after reboot")
    assert "boot-1" in session.core.log
    shadows.add_command("pi-1", "after-boot", "ping")
    assert shadows.outcome("pi-1", "after-boot")["state"] == "SUCCEEDED"
    assert session.commands_run == 2


def test_slow_and_failing_handlers_are_timed_out_and_failed(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a device with a handler that hangs past its deadline and one that raises
    release = threading.Event()

    def hang(device: DeviceModel, params: dict[str, Any]) -> Any:
        release.wait(10)
        return {"late": True}

    def broken(device: DeviceModel, params: dict[str, Any]) -> Any:
        raise OSError("sensor bus not responding")

    registry = default_registry()
    registry.add(Action("calibrate", {}, hang, deadline_s=0.3))
    registry.add(Action("selftest", {}, broken))
    start_agent("pi-1", registry=registry)

    # WHEN both are commanded, then a ping
    shadows.add_command("pi-1", "slow", "calibrate")
    shadows.add_command("pi-1", "boom", "selftest")
    shadows.add_command("pi-1", "after", "ping")

    # THEN the slow one is TIMED_OUT, the raising one FAILED with its error, and the device goes on
    slow = shadows.outcome("pi-1", "slow")
    release.set()
    assert slow["state"] == "TIMED_OUT" and "deadline" in slow["error"]
    boom = shadows.outcome("pi-1", "boom")
    assert boom["state"] == "FAILED" and "sensor bus not responding" in boom["error"]
    assert shadows.outcome("pi-1", "after")["state"] == "SUCCEEDED"


def test_outcome_history_stays_bounded(start_agent: Callable[..., RunningAgent], shadows: Shadows) -> None:
    # GIVEN a connected device
    start_agent("pi-1")

    # WHEN it has answered more commands than the shadow keeps
    for i in range(20):
        shadows.add_command("pi-1", f"p{i:02d}", "ping")
    shadows.outcome("pi-1", "p19")
    wait_for(lambda: not shadows.commands("pi-1").get("desired"), "all commands answered")

    # THEN only the newest 16 outcomes remain in the commands shadow (next to the key that opened it)
    reported = {k: v for k, v in shadows.commands("pi-1")["reported"].items() if isinstance(v, dict)}
    assert len(reported) == 16
    assert "p19" in reported and "p00" not in reported
    assert shadows.get("pi-1", COMMANDS_SHADOW)["state"].get("desired") in (None, {})


def test_a_device_that_started_before_the_shadow_service_still_gets_its_commands(
    start_agent: Callable[..., RunningAgent], request: pytest.FixtureRequest
) -> None:
    # GIVEN a device whose first shadow reads went unanswered (the shadow service was not up yet)
    handle = start_agent("pi-1")
    session = handle.agent.session
    wait_for(lambda: session._get_retry, "the device to have asked for its shadows")

    # WHEN the shadow service comes up and a command is queued
    shadows: Shadows = request.getfixturevalue("shadows")
    shadows.add_command("pi-1", "late-1", "ping")

    # THEN the device asks again, syncs, and answers the command
    assert shadows.outcome("pi-1", "late-1")["state"] == "SUCCEEDED"
    wait_for(lambda: shadows.reported("pi-1").get("actions"), "actions advertised")


def test_the_agent_reconnects_after_the_broker_restarts(
    start_agent: Callable[..., RunningAgent], shadows: Shadows, broker: Broker
) -> None:
    # GIVEN a connected device
    handle = start_agent("pi-1")
    session = handle.agent.session
    wait_for(lambda: shadows.reported("pi-1").get("actions"), "first sync")

    # WHEN the broker goes away and comes back on the same port
    broker.stop()
    wait_for(lambda: not session.connected, "the device to notice")
    broker.start()

    # THEN the device reconnects by itself (with backoff) and takes commands again
    wait_for(lambda: session.connected and session.connections >= 2, "reconnect", timeout=60)
    shadows.add_command("pi-1", "after-restart", "ping")
    assert shadows.outcome("pi-1", "after-restart", timeout=60)["result"] == {"pong": True}


def test_a_desired_value_set_right_after_a_command_on_the_same_key_is_applied(
    start_agent: Callable[..., RunningAgent], shadows: Shadows
) -> None:
    # GIVEN a connected device that has just run "led on"
    handle = start_agent("pi-1")
    shadows.add_command("pi-1", "cmd-on", "led", {"state": "on"})
    assert shadows.outcome("pi-1", "cmd-on")["state"] == "SUCCEEDED"
    # WHEN someone sets desired led "off" at once (within the command's second, as the shadow stamps it)
    shadows.update("pi-1", {"state": {"desired": {"led": "off"}}})
    # THEN the device follows the newer desired value: it is not taken for one older than the command
    wait_for(lambda: shadows.reported("pi-1").get("led") == "off", "led reported off")
    assert handle.agent.device.led == "off"
