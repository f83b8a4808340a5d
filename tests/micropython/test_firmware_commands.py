"""The firmware against a real Mosquitto, with the test playing the shadow service.

These pin the device's half of docs/protocol.md: outcome and desired=null in
one update, never twice, never expired, history kept to 16, state reported.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from iotbridge_contract import topics
from iotbridge_contract.commands import COMMANDS_SHADOW, HISTORY
from iotbridge_pi.handlers import default_registry
from tests.micropython.conftest import StartFirmware
from tests.micropython.harness import ShadowPeer, command

pytestmark = pytest.mark.micropython

# One protocol, two platforms: the firmware must advertise exactly what the Pi agent does.
ADVERTISED = default_registry().advertisement()


def outcome_of(update: dict[str, Any], cid: str) -> dict[str, Any]:
    """The outcome in an update, checking the protocol's shape: one update, desired cleared."""
    state = update["state"]
    assert state["desired"] == {cid: None}, "outcome and desired=null must travel in the same update"
    assert update["clientToken"] == cid
    return state["reported"][cid]


def test_connect_reports_state_and_advertised_actions(start_firmware: StartFirmware, device_config, peer) -> None:
    # GIVEN a firmware process
    # WHEN it connects
    start_firmware(device_config)
    # THEN its classic shadow gets its state and the actions of docs/protocol.md
    reported = peer.next_reported("actions")
    assert reported["actions"] == ADVERTISED
    assert reported["led"] == "off"
    assert reported["relay"] is False
    assert reported["agent"]["kind"] == "esp32"


def test_command_runs_and_reports_outcome_with_desired_cleared(start_firmware, device_config, peer) -> None:
    # GIVEN a connected device
    start_firmware(device_config)
    # WHEN the shadow service announces a pending led command
    peer.send_commands({"cmd-1": command("led", {"state": "on"})})
    # THEN one update carries its outcome and clears its desired entry
    out = outcome_of(peer.outcome_update("cmd-1"), "cmd-1")
    assert out["state"] == "SUCCEEDED"
    assert out["action"] == "led"
    assert out["result"] == {"led": "on"}
    assert isinstance(out["doneAt"], int)
    # AND the new led state is reported in the classic shadow
    assert peer.next_reported("led")["led"] in ("off", "on")
    assert peer.next_reported("led")["led"] == "on"


def test_stale_delta_listing_a_done_command_does_not_run_it_again(start_firmware, device_config, peer) -> None:
    # GIVEN a device that ran a toggle (led off -> on)
    start_firmware(device_config)
    toggle = command("led", {"state": "toggle"})
    peer.send_commands({"t-1": toggle})
    assert outcome_of(peer.outcome_update("t-1"), "t-1")["result"] == {"led": "on"}
    # WHEN a delta published before its outcome landed lists it again (or QoS 1 redelivers it)
    peer.send_commands({"t-1": toggle})
    # THEN it does not run again: the next toggle turns the led off, and is the next update
    peer.send_commands({"t-2": command("led", {"state": "toggle"})})
    assert outcome_of(peer.outcome_update("t-2"), "t-2")["result"] == {"led": "off"}


def test_after_reconnect_a_still_listed_command_gets_its_logged_outcome_again(
    start_firmware, device_config, broker, peer
) -> None:
    # GIVEN a device that ran a toggle and then lost its connection
    fw = start_firmware(device_config)
    toggle = command("led", {"state": "toggle"})
    peer.send_commands({"t-1": toggle})
    first = outcome_of(peer.outcome_update("t-1"), "t-1")
    broker.stop()
    fw.wait_for("disconnected")
    broker.start()
    fw.wait_for("ready", timeout=30)
    # WHEN the shadow still lists the command (its outcome update was lost)
    peer.client.loop_stop()  # the first peer's client would reconnect under the same client id
    peer2 = ShadowPeer(broker.service_endpoint(), "esp32-test")
    try:
        peer2.send_commands({"t-1": toggle})
        # THEN the logged outcome is reported again, unchanged, without running it
        assert outcome_of(peer2.outcome_update("t-1"), "t-1") == first
        fw.wait_for("duplicate t-1")
        peer2.send_commands({"t-2": command("led", {"state": "toggle"})})
        assert outcome_of(peer2.outcome_update("t-2"), "t-2")["result"] == {"led": "off"}
    finally:
        peer2.close()


def test_expired_command_is_not_run(start_firmware, device_config, peer) -> None:
    # GIVEN a device, and a command whose expiresAt is before the service's timestamp
    start_firmware(device_config)
    now_s = int(time.time())
    stale = {"action": "led", "params": {"state": "on"}, "issuedAt": 1, "expiresAt": now_s * 1000 - 1}
    # WHEN the service delivers it
    peer.send_commands({"old-1": stale}, timestamp=now_s)
    # THEN it is reported EXPIRED without a result
    out = outcome_of(peer.outcome_update("old-1"), "old-1")
    assert out["state"] == "EXPIRED"
    assert "result" not in out
    # AND the led never turned on: a toggle now turns it on
    peer.send_commands({"t-1": command("led", {"state": "toggle"})})
    assert outcome_of(peer.outcome_update("t-1"), "t-1")["result"] == {"led": "on"}


def test_expiry_uses_the_service_clock_not_the_device_clock(start_firmware, device_config, broker) -> None:
    # GIVEN a shadow service whose clock says 1970 (the device has no clock of its own to trust)
    peer = ShadowPeer(broker.service_endpoint(), "esp32-test", clock_s=1_000)
    try:
        start_firmware(device_config)
        # WHEN a command valid by the service's time, though long past by wall time, is delivered
        old = {"action": "ping", "params": {}, "issuedAt": 1_000_000, "expiresAt": 1_060_000}
        peer.send_commands({"p-1": old})
        # THEN the device runs it
        assert outcome_of(peer.outcome_update("p-1"), "p-1")["state"] == "SUCCEEDED"
    finally:
        peer.close()


def test_a_delta_that_waited_in_the_broker_does_not_set_the_clock_back(
    start_firmware, device_config, broker, peer
) -> None:
    # GIVEN a device that has read its shadow (the service's clock is now)
    start_firmware(device_config)
    # WHEN a delta stamped an hour ago (held in its persistent session) lists a command that expired since
    now_s = int(time.time())
    stale = {"action": "led", "params": {"state": "on"}, "issuedAt": 1, "expiresAt": (now_s - 3000) * 1000}
    peer.send_commands({"late-1": stale}, timestamp=now_s - 3600)
    # THEN it is EXPIRED: the old timestamp did not turn the device's clock back
    assert outcome_of(peer.outcome_update("late-1"), "late-1")["state"] == "EXPIRED"


def test_an_answer_to_a_get_from_before_a_power_cut_does_not_run_an_expired_command(
    start_firmware, device_config, peer
) -> None:
    # GIVEN a device that was connected, and lost power
    fw = start_firmware(device_config)
    fw.stop(kill=True)
    # AND while it was off, an answer to a get of its last boot was left for it in the broker,
    # stamped an hour ago, listing a one-minute command that has long expired since
    hour_ago = int(time.time()) - 3600
    entry = {"action": "led", "params": {"state": "on"}, "issuedAt": hour_ago * 1000, "expiresAt": (hour_ago + 60) * 1000}
    peer.pending["stale-1"] = entry
    stale = {"state": {"desired": peer.pending, "delta": peer.pending}, "version": 1, "timestamp": hour_ago}
    topic = topics.shadow_topic(peer.thing, "get", "accepted", shadow=COMMANDS_SHADOW)
    peer.client.publish(topic, json.dumps(stale), qos=1).wait_for_publish(5)
    # WHEN it boots again
    start_firmware(device_config, name="esp32")
    # THEN the command is judged by the service's clock of now: EXPIRED, and the led stays off
    assert outcome_of(peer.outcome_update("stale-1"), "stale-1")["state"] == "EXPIRED"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"action": "fly", "params": {}}, "unknown action"),
        ({"action": "led", "params": {"state": "blue"}}, "state"),
        ({"action": "relay", "params": {}}, "on: required"),
        ({"action": "set_interval", "params": {"seconds": 0}}, "seconds"),
        ({"action": "ping", "params": {"x": 1}}, "unknown parameter"),
    ],
)
def test_bad_commands_are_rejected_and_nothing_runs(start_firmware, device_config, peer, entry, reason) -> None:
    # GIVEN a device
    start_firmware(device_config)
    # WHEN a command names an unknown action or has bad params
    peer.send_commands({"bad-1": {**entry, "issuedAt": 1, "expiresAt": int(time.time() * 1000) + 60_000}})
    # THEN it is REJECTED with the reason
    out = outcome_of(peer.outcome_update("bad-1"), "bad-1")
    assert out["state"] == "REJECTED"
    assert reason in out["error"]


def test_pending_commands_run_one_at_a_time_in_issue_order(start_firmware, device_config, peer) -> None:
    # GIVEN a device
    start_firmware(device_config)
    # WHEN one delta carries three pending commands, listed out of order
    now = int(time.time() * 1000)
    peer.send_commands({
        "c": {"action": "led", "params": {"state": "toggle"}, "issuedAt": now + 2, "expiresAt": now + 60_000},
        "a": {"action": "led", "params": {"state": "on"}, "issuedAt": now, "expiresAt": now + 60_000},
        "b": {"action": "relay", "params": {"on": True}, "issuedAt": now + 1, "expiresAt": now + 60_000},
    })
    # THEN each gets its own update, in issuedAt order
    first: dict[str, dict[str, Any]] = {}  # first update per id (a logged outcome may be re-reported)
    while len(first) < 3:
        update = peer.next_outcome()
        first.setdefault(update["clientToken"], update)
    assert list(first) == ["a", "b", "c"]
    assert outcome_of(first["c"], "c")["result"] == {"led": "off"}


def test_history_is_kept_to_sixteen_outcomes(start_firmware, device_config, peer) -> None:
    # GIVEN a device that has reported HISTORY outcomes
    start_firmware(device_config)
    for i in range(HISTORY):
        peer.send_commands({f"h-{i}": command("ping")})
        assert peer.outcome_update(f"h-{i}")["state"]["reported"].keys() == {f"h-{i}"}
    # WHEN two more commands complete
    peer.send_commands({"h-16": command("ping")})
    seventeenth = peer.outcome_update("h-16")
    peer.send_commands({"h-17": command("ping")})
    eighteenth = peer.outcome_update("h-17")
    # THEN each update nulls the oldest outcome in the same update
    assert seventeenth["state"]["reported"]["h-0"] is None
    assert eighteenth["state"]["reported"]["h-1"] is None
    assert eighteenth["state"]["reported"]["h-17"]["state"] == "SUCCEEDED"


def test_restart_keeps_the_executed_log(start_firmware, device_config, peer: ShadowPeer) -> None:
    # GIVEN a device that ran a toggle, then lost power
    fw = start_firmware(device_config)
    toggle = command("led", {"state": "toggle"})
    peer.send_commands({"t-1": toggle})
    first = outcome_of(peer.outcome_update("t-1"), "t-1")
    fw.stop(kill=True)
    # WHEN it boots again (its led off again) and the command is delivered again
    fw2 = start_firmware(device_config, name="esp32")  # same directory: same flash
    peer.send_commands({"t-1": toggle})
    # THEN it reports the logged outcome and does not run it
    assert outcome_of(peer.outcome_update("t-1"), "t-1") == first
    fw2.wait_for("duplicate t-1")
    peer.send_commands({"t-2": command("led", {"state": "toggle"})})
    assert outcome_of(peer.outcome_update("t-2"), "t-2")["result"] == {"led": "on"}


def test_desired_state_is_applied_and_reported(start_firmware, device_config, peer) -> None:
    # GIVEN a device with its led and relay off
    start_firmware(device_config)
    # WHEN the classic shadow's desired state changes
    peer.send_desired({"led": "on", "relay": True, "interval": 5})
    # THEN the device applies it and reports the new state
    reported = peer.next_reported("relay")
    while reported.get("relay") is not True:
        reported = peer.next_reported("relay")
    assert reported == {"led": "on", "relay": True, "interval": 5}


def test_reboot_command_reports_first_then_restarts(start_firmware, device_config, peer) -> None:
    # GIVEN a device with its led on
    fw = start_firmware(device_config)
    peer.send_commands({"on": command("led", {"state": "on"})})
    assert outcome_of(peer.outcome_update("on"), "on")["state"] == "SUCCEEDED"
    # WHEN it is told to reboot
    peer.send_commands({"rb": command("reboot", {"delayMs": 0})})
    # THEN the outcome is reported before it goes down, and it comes back with fresh state
    assert outcome_of(peer.outcome_update("rb"), "rb")["result"] == {"rebooting": True, "delayMs": 0}
    fw.wait_for("rebooting")
    fw.wait_for("ready")
    peer.send_commands({"t": command("led", {"state": "toggle"})})
    assert outcome_of(peer.outcome_update("t"), "t")["result"] == {"led": "on"}


def test_running_out_of_memory_restarts_the_firmware_instead_of_leaving_it_dead(
    start_firmware, device_config, peer
) -> None:
    # GIVEN the firmware in a 64 KB heap
    fw = start_firmware(device_config)
    fw.fatal_expected = True
    # WHEN a commands document arrives that cannot fit in it: 10 commands with ~1.4 KB of params
    # each (the API allows 512 bytes; only a broken or hostile writer sends this)
    peer.send_commands({f"big-{i}": command("led", {"state": "x" * 1400}) for i in range(10)})
    # THEN it logs the error and restarts, where a board would otherwise stop in its REPL
    fw.wait_for("iotbridge: fatal: MemoryError")
    peer.pending.clear()  # the document is deleted before the restart's get
    fw.wait_for("reboot (simulated)")
    fw.wait_for("ready")
    assert fw.alive()
    # AND after the restart it runs commands again
    peer.send_commands({"after": command("led", {"state": "on"})})
    assert outcome_of(peer.outcome_update("after"), "after")["state"] == "SUCCEEDED"


def test_a_get_answer_larger_than_16_kb_is_read_and_its_commands_answered(start_firmware, device_config, peer) -> None:
    # GIVEN 10 commands with ~1 KB of params each, queued while the device is offline: its get
    # answer lists them twice (desired and delta), ~21 KB, past the client's 16 KB for a whole read
    big = {f"big-{i}": command("led", {"state": "x" * 1000}) for i in range(10)}
    peer.pending.update(big)
    # WHEN it connects (a heap that holds the kept half, the delta: this is about size on the wire)
    start_firmware(device_config, heap="256k")
    # THEN it reads them and answers every one (REJECTED: no such led state), none left hanging
    answered: dict[str, Any] = {}
    while len(answered) < len(big):
        update = peer.next_outcome()
        answered[update["clientToken"]] = outcome_of(update, update["clientToken"])
    assert answered.keys() == big.keys()
    assert all(o["state"] == "REJECTED" and "state" in o["error"] for o in answered.values())


def test_device_reconnects_after_broker_restart_and_gets_queued_commands(
    start_firmware, device_config, broker, peer
) -> None:
    # GIVEN a connected device
    fw = start_firmware(device_config)
    # WHEN the broker restarts
    broker.stop()
    fw.wait_for("disconnected")
    broker.start()
    # THEN the device reconnects on its own (backoff) and keeps working
    fw.wait_for("ready", timeout=30)
    peer.client.loop_stop()  # the first peer's client would reconnect under the same client id
    peer2 = ShadowPeer(broker.service_endpoint(), "esp32-test")
    try:
        peer2.send_commands({"after": command("ping")})
        assert outcome_of(peer2.outcome_update("after"), "after")["result"] == {"pong": True}
    finally:
        peer2.close()


def test_a_throttled_state_update_is_reported_again_with_the_desired_value_cleared(start_firmware, device_config, peer) -> None:
    # GIVEN a connected device whose classic shadow wants the relay off
    peer.desired["relay"] = False
    start_firmware(device_config)
    peer.next_reported("actions")
    # WHEN a command turns the relay on, and the shadow service throttles that state update (429)
    peer.send_commands({"relay-1": command("relay", {"on": True})})
    assert outcome_of(peer.outcome_update("relay-1"), "relay-1")["state"] == "SUCCEEDED"
    lost = _next_classic_with(peer, "relay", timeout=5.0)
    while lost["state"]["reported"]["relay"] is not True:  # the get's desired, applied at connect
        lost = _next_classic_with(peer, "relay", timeout=5.0)
    assert lost["state"]["desired"] == {"relay": None}
    peer.reject_state(429, lost)
    # THEN about a second later the whole state goes again, relay on, with desired relay nulled
    again = _next_classic_with(peer, "relay", timeout=5.0)
    assert again["state"]["reported"]["relay"] is True
    assert again["state"]["desired"] == {"relay": None}
    assert again["state"]["reported"]["actions"] == ADVERTISED


def test_a_state_update_refused_as_wrong_is_not_sent_again(start_firmware, device_config, peer) -> None:
    # GIVEN a connected device that ran a relay command
    start_firmware(device_config)
    peer.next_reported("actions")
    peer.send_commands({"relay-1": command("relay", {"on": True})})
    peer.outcome_update("relay-1")
    update = _next_classic_with(peer, "relay", timeout=5.0)
    # WHEN its state update is refused as invalid (400): the same update would be refused again
    peer.reject_state(400, update)
    # THEN nothing more is reported about the relay (a 429 is answered within about a second)
    with pytest.raises(AssertionError):
        _next_classic_with(peer, "relay", timeout=3.0)


def _next_classic_with(peer: ShadowPeer, key: str, *, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            doc = peer.classic.get(timeout=left)
        except Exception:
            break
        if key in doc.get("state", {}).get("reported", {}):
            return doc
    raise AssertionError(f"no classic update reporting {key!r} within {timeout} s")


def test_frequent_telemetry_does_not_starve_the_keepalive(start_firmware, device_config, peer) -> None:
    # GIVEN a device with a short keepalive (4 s) that sends telemetry (QoS 0, unanswered) every second
    fw = start_firmware({**device_config, "keepalive": 4})
    peer.send_desired({"interval": 1})
    peer.next_reported("interval")
    # WHEN nothing else reaches it for well over 1.5 keepalive periods
    time.sleep(10)
    # THEN it kept its one connection: it pinged, heard the answers, and never took the broker for dead
    assert fw.alive()
    assert not [line for line in fw.lines if "disconnected" in line], fw.lines
    assert sum("ready" in line for line in fw.lines) == 1, fw.lines


def test_a_throttled_outcome_update_is_sent_again_and_the_command_not_rerun(start_firmware, device_config, peer) -> None:
    # GIVEN a connected device that ran a command
    fw = start_firmware(device_config)
    entry = command("led", {"state": "toggle"})
    peer.send_commands({"t-1": entry})
    first = outcome_of(peer.outcome_update("t-1"), "t-1")
    _settle(peer)
    # WHEN the shadow service throttles that outcome update (429): the command stays pending
    peer.reject_outcome(429, {"t-1": entry})
    # THEN about a second later the device reads its shadow again and reports the same outcome
    again = outcome_of(peer.outcome_update("t-1", timeout=5.0), "t-1")
    assert again == first
    # AND it was answered from the ledger, not run again (a second toggle would flip the led back)
    assert any("duplicate t-1" in line for line in fw.lines), fw.lines


def test_an_outcome_update_refused_as_wrong_is_not_sent_again(start_firmware, device_config, peer) -> None:
    # GIVEN a connected device that ran a command
    start_firmware(device_config)
    peer.send_commands({"w-1": command("ping")})
    peer.outcome_update("w-1")
    _settle(peer)
    # WHEN the outcome update is refused as invalid (400): the same update would be refused again
    peer.reject_outcome(400, {})
    # THEN the device does not send it again (a 429 is answered within about a second)
    with pytest.raises(AssertionError):
        peer.outcome_update("w-1", timeout=3.0)


def test_a_throttled_get_after_connect_is_asked_again_and_queued_commands_run(
    start_firmware, device_config, peer
) -> None:
    # GIVEN a command queued while the device was away, and a shadow service that throttles its first get
    peer.pending["q-1"] = command("ping")
    peer.refuse_next_get(429)
    # WHEN the device connects
    start_firmware(device_config)
    # THEN it asks again a second later, and runs the command
    assert outcome_of(peer.outcome_update("q-1", timeout=6.0), "q-1")["result"] == {"pong": True}


def _settle(peer: ShadowPeer) -> None:
    """Let a connect's get and a delta that crossed it play out (the device may answer a command twice), then forget those."""
    time.sleep(0.5)
    while not peer.commands.empty():
        peer.commands.get_nowait()
