"""Lifecycle events from the real broker, through the local rule, into the presence shadow.

The rules process (`python -m iotbridge_local.rules`) runs as it does in the
stack; moto's server stands in for the IoT data plane, so the presence
function is the one AWS would run, against an independent implementation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iotbridge_contract.topics import PRESENCE_PREFIX
from iotbridge_local.broker import Broker, wait_for_port
from iotbridge_local.config import StackConfig
from tests.presence.processes import RulesProcess, aws, next_event
from tests.security.clients import TestClient

moto_server = pytest.importorskip("moto.server")

THING = "lamp-1"


@pytest.fixture
def iot_endpoint(stack_config: StackConfig) -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=stack_config.iot_http_port, verbose=False)
    server.start()
    try:
        wait_for_port(stack_config.iot_http_port)
        aws("iot", stack_config.iot_endpoint).create_thing(thingName=THING)
        yield stack_config.iot_endpoint
    finally:
        server.stop()


@pytest.fixture
def observer(broker: Broker) -> Iterator[TestClient]:
    """A service client that sees every lifecycle event; its session survives a broker restart."""
    client = TestClient("iotbridge.observer", broker.service_endpoint(), clean_session=False).connect()
    client.subscribe(f"{PRESENCE_PREFIX}+/+")
    yield client
    client.disconnect()


@pytest.fixture
def rules(broker: Broker, observer: TestClient, iot_endpoint: str) -> Iterator[RulesProcess]:
    process = RulesProcess(broker, iot_endpoint)
    try:
        process.start(observer)
        yield process
    finally:
        process.stop()


def wait_for_autosave(broker: Broker, after: float, timeout: float = 15) -> None:
    """Until Mosquitto has written its persistence file once more (autosave_interval 1)."""
    db = broker.dir / "mosquitto.db"
    deadline = time.monotonic() + timeout
    while not (db.exists() and db.stat().st_mtime > after):
        assert time.monotonic() < deadline, "the broker did not autosave"
        time.sleep(0.05)


def presence_shadow(iot_endpoint: str, *, until_connected: bool, timeout: float = 10) -> dict[str, Any]:
    """The thing's presence, once it says `until_connected` (fails after `timeout`)."""
    data = aws("iot-data", iot_endpoint)
    deadline = time.monotonic() + timeout
    reported: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            doc = json.loads(data.get_thing_shadow(thingName=THING, shadowName="presence")["payload"].read())
            reported = doc["state"]["reported"]
            if reported.get("connected") is until_connected:
                return reported
        except data.exceptions.ResourceNotFoundException:
            pass
        time.sleep(0.05)
    raise AssertionError(f"presence of {THING} never became connected={until_connected}; last: {reported}")


def test_device_connect_publishes_aws_shaped_connected_event(broker: Broker, observer: TestClient, rules: RulesProcess) -> None:
    # GIVEN the rules process following the broker
    before = int(time.time() * 1000)
    # WHEN a device connects with its certificate
    with TestClient(THING, broker.device_endpoint(THING)):
        event = next_event(observer, "connected", THING)
    # THEN the event carries AWS's fields, with the certificate's CN as principal
    assert event["clientId"] == THING
    assert event["eventType"] == "connected"
    assert event["principalIdentifier"] == THING
    assert event["ipAddress"] == "127.0.0.1"
    assert isinstance(event["sessionIdentifier"], str) and event["sessionIdentifier"]
    assert isinstance(event["versionNumber"], int)
    # Generous bounds: milliseconds since the epoch, not seconds, and not from another day.
    assert before - 2_000 <= event["timestamp"] <= int(time.time() * 1000) + 2_000


def test_clean_disconnect_is_client_initiated(broker: Broker, observer: TestClient, rules: RulesProcess) -> None:
    # GIVEN a connected device
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    connected = next_event(observer, "connected", THING)
    # WHEN it disconnects cleanly
    device.disconnect()
    # THEN a disconnected event of the same session says so
    event = next_event(observer, "disconnected", THING)
    assert event["disconnectReason"] == "CLIENT_INITIATED_DISCONNECT"
    assert event["clientInitiatedDisconnect"] is True
    assert event["sessionIdentifier"] == connected["sessionIdentifier"]
    assert event["versionNumber"] == connected["versionNumber"]
    assert event["timestamp"] >= connected["timestamp"]


def test_dropped_connection_is_connection_lost(broker: Broker, observer: TestClient, rules: RulesProcess) -> None:
    # GIVEN a connected device
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    next_event(observer, "connected", THING)
    # WHEN its socket closes without an MQTT DISCONNECT (a crash, a pulled cable noticed by TCP)
    device.close()
    # THEN it is reported disconnected, not by its own choice
    event = next_event(observer, "disconnected", THING)
    assert event["disconnectReason"] == "CONNECTION_LOST"
    assert event["clientInitiatedDisconnect"] is False


def test_silent_device_times_out(broker: Broker, observer: TestClient, rules: RulesProcess) -> None:
    # GIVEN a device with a 1 s keepalive
    device = TestClient(THING, broker.device_endpoint(THING), keepalive=1).connect()
    next_event(observer, "connected", THING)
    # WHEN it goes silent with its socket still open (hung firmware)
    device.mqtt.loop_stop()
    try:
        # THEN the broker gives up after 1.5 keepalives and the event says why
        event = next_event(observer, "disconnected", THING)
        assert event["disconnectReason"] == "MQTT_KEEP_ALIVE_TIMEOUT"
    finally:
        device.close()


def test_broker_kill_and_restart_disconnects_everyone(broker: Broker, observer: TestClient, rules: RulesProcess) -> None:
    # GIVEN a connected device that reconnects by itself (paho's loop)
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    first = next_event(observer, "connected", THING)
    wait_for_autosave(broker, after=time.time())  # the observer's session must survive the kill
    # WHEN the broker is killed (it logs nothing) and started again
    broker.kill()
    broker.start()
    try:
        # THEN the device's old session is reported disconnected by a server failure
        gone = next_event(observer, "disconnected", THING)
        assert gone["disconnectReason"] == "SERVER_ERROR"
        assert gone["sessionIdentifier"] == first["sessionIdentifier"]
        # AND its reconnection is a new, higher-numbered session
        back = next_event(observer, "connected", THING)
        assert back["versionNumber"] > first["versionNumber"]
        assert back["sessionIdentifier"] != first["sessionIdentifier"]
    finally:
        device.disconnect()


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_rules_process_that_was_down_misses_no_event(
    broker: Broker, observer: TestClient, rules: RulesProcess, how: str
) -> None:
    # GIVEN a connected device whose connect was reported
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    next_event(observer, "connected", THING)
    # WHEN the rules process is stopped (or killed outright) while the device disconnects, and then comes back
    if how == "stop":
        rules.stop()
    else:
        rules.kill()
    device.disconnect()
    seen = rules.start(observer)  # after a kill, a replay may reach the old process's own connect first: read on
    disconnected = f"{PRESENCE_PREFIX}disconnected/{THING}"
    while disconnected not in seen:
        seen.append(observer.next_message(timeout=10)[0])
    # THEN the missed disconnect is reported
    device_events = [t for t in seen if t.endswith(f"/{THING}")]
    assert device_events[-1] == disconnected
    # AND after a clean stop nothing is repeated; after a kill at most the connect (at-least-once, as on AWS)
    allowed = [[]] if how == "stop" else [[], [f"{PRESENCE_PREFIX}connected/{THING}"]]
    assert device_events[:-1] in allowed


def test_presence_shadow_follows_the_device(broker: Broker, observer: TestClient, rules: RulesProcess, iot_endpoint: str) -> None:
    # GIVEN a registered thing
    # WHEN the device connects
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    # THEN its presence shadow says connected, as which client
    online = presence_shadow(iot_endpoint, until_connected=True)
    assert online["clientId"] == THING
    # WHEN it drops off
    device.close()
    # THEN the shadow says disconnected, with the reason, later than the connect
    offline = presence_shadow(iot_endpoint, until_connected=False)
    assert offline["reason"] == "CONNECTION_LOST"
    assert offline["at"] >= online["at"]
