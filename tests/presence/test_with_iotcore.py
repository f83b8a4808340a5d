"""Presence through the whole local path: Mosquitto -> rules -> presence function -> our IoT core's shadow.

This is what the API reads to answer "is the device online?".
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from iotbridge_contract.topics import PRESENCE_PREFIX
from iotbridge_local.broker import Broker, wait_for_port
from iotbridge_local.config import StackConfig
from tests.presence.processes import RulesProcess, aws
from tests.security.clients import TestClient

THING = "pump-3"


@pytest.fixture
def iotcore(broker: Broker, stack_config: StackConfig) -> Iterator[str]:
    ep = broker.service_endpoint()
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotbridge_local.iotcore", "--data-dir", str(stack_config.data_dir / "iotcore"),
         "--mqtt-port", str(ep.port), "--http-port", str(stack_config.iot_http_port),
         "--mqtt-username", str(ep.username), "--log-level", "WARNING"],
        env=dict(os.environ, IOTBRIDGE_MQTT_PASSWORD=str(ep.password)),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(stack_config.iot_http_port, timeout=20)
        yield stack_config.iot_endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def rules(broker: Broker, iotcore: str) -> Iterator[RulesProcess]:
    with TestClient("iotbridge.test-observer", broker.service_endpoint()) as observer:
        observer.subscribe(f"{PRESENCE_PREFIX}+/+")
        process = RulesProcess(broker, iotcore)
        try:
            process.start(observer)
            yield process
        finally:
            process.stop()


def presence(iot_endpoint: str, thing: str = THING) -> dict[str, Any] | None:
    data = aws("iot-data", iot_endpoint)
    try:
        doc = json.loads(data.get_thing_shadow(thingName=thing, shadowName="presence")["payload"].read())
    except data.exceptions.ResourceNotFoundException:
        return None
    reported: dict[str, Any] = doc["state"]["reported"]
    return reported


def wait_presence(iot_endpoint: str, connected: bool, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = presence(iot_endpoint)
        if last is not None and last.get("connected") is connected:
            return last
        time.sleep(0.05)
    raise AssertionError(f"presence never became connected={connected}; last: {last}")


def test_device_presence_is_in_its_shadow_on_the_local_iot_core(broker: Broker, iotcore: str, rules: RulesProcess) -> None:
    # GIVEN the local IoT core and the rules process
    # WHEN a device connects over mutual TLS
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    # THEN its presence shadow (read the way the API reads it) says connected
    online = wait_presence(iotcore, connected=True)
    assert online["clientId"] == THING
    # WHEN its connection drops
    device.close()
    offline = wait_presence(iotcore, connected=False)
    # THEN the shadow says disconnected, later than the connect, with a reason
    assert offline["at"] >= online["at"]
    assert offline["reason"] == "CONNECTION_LOST"


def test_broker_restart_marks_a_connected_device_offline(broker: Broker, iotcore: str, rules: RulesProcess) -> None:
    # GIVEN a connected device, seen online
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    wait_presence(iotcore, connected=True)
    device.close()  # it will not come back by itself
    wait_presence(iotcore, connected=False)
    device = TestClient(THING, broker.device_endpoint(THING)).connect()
    wait_presence(iotcore, connected=True)
    device.mqtt.loop_stop()  # hold the socket without reconnecting
    # WHEN the broker is killed (no log line for the device) and started again
    broker.kill()
    broker.start()
    try:
        # THEN the device is offline, by a server error
        assert wait_presence(iotcore, connected=False, timeout=20)["reason"] == "SERVER_ERROR"
    finally:
        device.close()


@pytest.fixture
def handler(iotcore: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("AWS_ENDPOINT_URL_IOT_DATA_PLANE", iotcore)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    import iotbridge_presence.handler as module

    return importlib.reload(module)  # its client picks up the endpoint at import, as in Lambda


def test_out_of_order_events_against_the_local_iot_core(handler: ModuleType, iotcore: str) -> None:
    # GIVEN a device that reconnected: session 2 connected at t=3000
    event = {"clientId": THING, "eventType": "connected", "timestamp": 3_000, "versionNumber": 2}
    assert handler.lambda_handler(event, None)["written"] is True
    # WHEN session 1's disconnect (t=2000) arrives late, and a duplicate of the connect
    late = {"clientId": THING, "eventType": "disconnected", "timestamp": 2_000, "versionNumber": 1,
            "disconnectReason": "CONNECTION_LOST"}
    assert handler.lambda_handler(late, None)["written"] is False
    assert handler.lambda_handler(event, None)["written"] is False
    # THEN the shadow still says connected, from the newer event
    p = presence(iotcore)
    assert p is not None and p["connected"] is True and p["at"] == 3_000
