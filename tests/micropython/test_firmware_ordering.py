"""The firmware when messages come in another order than they were sent, or writes fail.

AWS IoT orders nothing across topics: a get's answer can come after a newer delta, or
after a command ran. These pin what docs/protocol.md promises anyway: a command is
not undone by an older desired value, not dropped by an older document, and a
device that cannot record or keeps losing its connection neither runs a command
twice nor hammers the broker.
"""

from __future__ import annotations

import json
import time
from typing import Any

import paho.mqtt.client as paho
import pytest

from iotbridge_contract import topics
from iotbridge_contract.commands import COMMANDS_SHADOW
from iotbridge_local.broker import Broker
from tests.micropython.conftest import StartFirmware
from tests.micropython.harness import ShadowPeer, command
from tests.micropython.test_firmware_commands import outcome_of

pytestmark = pytest.mark.micropython


def _classic_updates(peer: ShadowPeer, settle_s: float = 1.0) -> list[dict[str, Any]]:
    time.sleep(settle_s)
    out = []
    while not peer.classic.empty():
        out.append(peer.classic.get()["state"])
    return out


def _take_over_session(broker: Broker, thing: str) -> None:
    """Connect as the device for a moment (its session kept): the broker drops the device, which reconnects."""
    ep = broker.device_endpoint(thing)
    k = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=thing, clean_session=False)
    k.username_pw_set(ep.username, ep.password)
    k.connect(ep.host, ep.port)
    k.loop_start()
    time.sleep(0.2)
    k.disconnect()
    k.loop_stop()


def test_a_command_waits_for_the_classic_get_so_an_older_desired_value_cannot_undo_it(
    start_firmware: StartFirmware, device_config, peer: ShadowPeer
) -> None:
    # GIVEN an older desired value (led off), a later command (led on), and a shadow service
    # that answers the classic get half a second after the commands get
    peer.desired = {"led": "off"}
    peer.pending["c1"] = command("led", {"state": "on"})
    peer.classic_get_delay = 0.5
    # WHEN the device boots
    start_firmware(device_config)
    # THEN the command runs after the desired value was applied, so the LED ends on
    assert outcome_of(peer.outcome_update("c1"), "c1")["result"] == {"led": "on"}
    leds = [u["reported"]["led"] for u in _classic_updates(peer) if "led" in u.get("reported", {})]
    assert leds[-1] == "on"
    # AND the older desired value is gone from the shadow, so nothing brings it back
    assert "led" not in peer.desired


def test_a_get_answer_older_than_a_delta_does_not_drop_the_deltas_command(
    start_firmware: StartFirmware, device_config, broker: Broker, peer: ShadowPeer
) -> None:
    # GIVEN a running device whose connection drops, and a classic get that is answered late (so the
    # commands document waits: see the test above)
    start_firmware(device_config)
    time.sleep(0.5)
    peer.classic_get_delay = 0.5
    # WHEN, as it reconnects, a command is queued and its delta is delivered before the answer to
    # the device's get, which was taken before the command (an older version, without it)
    original = peer._on_message

    def reorder(client: Any, userdata: Any, msg: Any) -> None:
        if msg.topic != peer.commands_get:
            return original(client, userdata, msg)
        stale = {"state": {}, "metadata": {}, "version": peer.version, "timestamp": peer.now_s()}
        peer.client.on_message = original
        peer.pending["x1"] = command("ping")
        peer.version += 1
        delta = {"state": dict(peer.pending), "metadata": {}, "version": peer.version, "timestamp": peer.now_s()}
        client.publish(topics.shadow_topic("esp32-test", "update", "delta", shadow=COMMANDS_SHADOW), json.dumps(delta), qos=1)
        client.publish(peer.gets[msg.topic], json.dumps(stale), qos=1)

    peer.client.on_message = reorder
    _take_over_session(broker, "esp32-test")
    # THEN the command still runs (the older document is not taken as the pending set)
    assert outcome_of(peer.outcome_update("x1", timeout=15), "x1")["result"] == {"pong": True}


def test_a_throttled_report_does_not_null_a_desired_value_set_after_the_command(
    start_firmware: StartFirmware, device_config, peer: ShadowPeer
) -> None:
    # GIVEN a device that ran `led on`, and then got `desired.led = off` from a user (applied)
    start_firmware(device_config)
    peer.send_commands({"on": command("led", {"state": "on"})})
    assert outcome_of(peer.outcome_update("on"), "on")["state"] == "SUCCEEDED"
    _classic_updates(peer, 0.5)
    peer.send_desired({"led": "off"})
    applied = peer.next_reported("led")
    assert applied["led"] == "off"
    # WHEN the report of that applied value is throttled (429)
    peer.reject_state(429, {"state": {"reported": applied}})
    # THEN the state is reported again, without nulling the user's desired led
    again = [u for u in _classic_updates(peer, 2.0) if "actions" in u.get("reported", {})]
    assert again, "the state was not reported again"
    assert "led" not in (again[-1].get("desired") or {})


def test_a_device_that_cannot_record_commands_answers_failed_without_running_them(
    start_firmware: StartFirmware, device_config, peer: ShadowPeer
) -> None:
    # GIVEN a device whose command log cannot be written (its directory does not exist)
    fw = start_firmware({**device_config, "state": "missing-dir/executed.log"})
    # WHEN a command arrives
    peer.send_commands({"r1": command("relay", {"on": True})})
    # THEN it is answered FAILED, not run (a restart could not know it ran), and the device stays connected
    out = outcome_of(peer.outcome_update("r1"), "r1")
    assert out["state"] == "FAILED" and "cannot record" in out["error"]
    assert not any("disconnected" in line for line in fw.lines)
    assert all(u.get("reported", {}).get("relay") is not True for u in _classic_updates(peer, 0.5))


def test_two_boards_with_one_thing_name_back_off_instead_of_reconnecting_twice_a_second(
    start_firmware: StartFirmware, device_config
) -> None:
    # GIVEN two boards flashed with the same thing name (each connect takes the other's over)
    first = start_firmware(device_config, name="a")
    second = start_firmware(device_config, name="b")
    # WHEN they have fought for 8 seconds
    time.sleep(8)
    # THEN each has backed off (0.5, 1, 2, 4 s ...), not reconnected every quarter second
    for fw in (first, second):
        connects = sum("ready" in line for line in fw.lines)
        assert connects <= 7, f"{fw.workdir.name} connected {connects} times in 8 s"


def test_a_pending_entry_that_is_no_command_is_answered_rejected(
    start_firmware: StartFirmware, device_config, peer: ShadowPeer
) -> None:
    # GIVEN a running device / WHEN its commands shadow lists an entry that is no command object
    start_firmware(device_config)
    peer.send_commands({"junk": "not-an-object"})  # type: ignore[dict-item]
    # THEN it is answered REJECTED (and cleared from desired), not left pending without an answer
    out = outcome_of(peer.outcome_update("junk"), "junk")
    assert out["state"] == "REJECTED"


def test_a_get_without_outcomes_does_not_make_the_next_delta_look_already_answered(
    start_firmware: StartFirmware, device_config, peer: ShadowPeer
) -> None:
    # GIVEN a device that ran a command on this connection
    start_firmware(device_config)
    peer.send_commands({"c1": command("ping")})
    outcome_of(peer.outcome_update("c1"), "c1")
    # WHEN its outcome update is throttled, so it reads its commands shadow again, and that get lists
    # no outcomes (reported empty: a new shadow, or the outcomes pruned by someone else)
    peer.reject_outcome(429, {})
    time.sleep(2.0)
    # THEN a command queued afterwards runs (it is not mistaken for one reported on this connection)
    peer.send_commands({"c2": command("ping")})
    assert outcome_of(peer.outcome_update("c2"), "c2")["result"] == {"pong": True}


def test_a_desired_value_set_while_the_device_was_away_is_applied_after_a_command_long_before(
    start_firmware: StartFirmware, device_config, broker: Broker, peer: ShadowPeer
) -> None:
    # GIVEN a device that ran `led on` a while ago (its clear of desired.led landed: no rejection came)
    start_firmware(device_config)
    peer.send_commands({"on": command("led", {"state": "on"})})
    assert outcome_of(peer.outcome_update("on"), "on")["state"] == "SUCCEEDED"
    time.sleep(11)
    # WHEN it is away and a user sets desired.led = off (no delta reaches it: as after a session expired)
    _classic_updates(peer, 0)
    peer.desired["led"] = "off"
    _take_over_session(broker, "esp32-test")
    # THEN on reconnect it applies the user's value, rather than nulling it as a stale one
    leds = [u["reported"]["led"] for u in _classic_updates(peer, 3.0) if "led" in u.get("reported", {})]
    assert leds and leds[-1] == "off"
    assert peer.desired.get("led") == "off"
