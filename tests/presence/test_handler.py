"""The presence function against moto's IoT data plane: what the dashboard will read as online/offline."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest

moto = pytest.importorskip("moto")

THING = "sensor-7"


@pytest.fixture
def handler(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.delenv("AWS_ENDPOINT_URL_IOT_DATA_PLANE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with moto.mock_aws():
        boto3.client("iot").create_thing(thingName=THING)  # moto: a shadow needs its thing
        import iotbridge_presence.handler as module

        yield importlib.reload(module)  # its module-level client is created inside the mock


def _event(kind: str, ts: int, version: int, client_id: str = THING, **extra: Any) -> dict[str, Any]:
    event = {"clientId": client_id, "timestamp": ts, "eventType": kind, "sessionIdentifier": f"s{version}",
             "principalIdentifier": client_id, "versionNumber": version}
    if kind == "disconnected":
        event |= {"disconnectReason": extra.get("reason", "CONNECTION_LOST"), "clientInitiatedDisconnect": False}
    else:
        event["ipAddress"] = "127.0.0.1"
    return event


def _presence(thing: str = THING) -> dict[str, Any]:
    doc = json.loads(boto3.client("iot-data").get_thing_shadow(thingName=thing, shadowName="presence")["payload"].read())
    reported: dict[str, Any] = doc["state"]["reported"]
    return reported


def test_connected_event_marks_the_thing_online(handler: ModuleType) -> None:
    # GIVEN a registered thing with no presence yet
    # WHEN its connected event arrives
    result = handler.lambda_handler(_event("connected", 1_000, 1), None)
    # THEN its presence shadow says connected, since when, and as which client
    assert result["written"] is True
    p = _presence()
    assert p["connected"] is True
    assert p["at"] == 1_000
    assert p["clientId"] == THING
    assert "reason" not in p


def test_disconnect_after_connect_marks_it_offline_with_the_reason(handler: ModuleType) -> None:
    # GIVEN a connected thing
    handler.lambda_handler(_event("connected", 1_000, 1), None)
    # WHEN it times out
    handler.lambda_handler(_event("disconnected", 2_000, 1, reason="MQTT_KEEP_ALIVE_TIMEOUT"), None)
    # THEN it is offline and the reason is kept
    p = _presence()
    assert p["connected"] is False
    assert p["reason"] == "MQTT_KEEP_ALIVE_TIMEOUT"
    assert p["at"] == 2_000


def test_late_disconnect_of_an_old_session_does_not_hide_a_new_connect(handler: ModuleType) -> None:
    # GIVEN a thing that reconnected (session 2) after losing session 1
    handler.lambda_handler(_event("connected", 1_000, 1), None)
    handler.lambda_handler(_event("connected", 3_000, 2), None)
    # WHEN session 1's disconnect is delivered late
    result = handler.lambda_handler(_event("disconnected", 2_000, 1), None)
    # THEN it is ignored: the thing stays online
    assert result["written"] is False
    p = _presence()
    assert p["connected"] is True
    assert p["at"] == 3_000


def test_an_old_sessions_disconnect_stamped_after_the_new_connect_does_not_hide_it(handler: ModuleType) -> None:
    # GIVEN a thing whose link died silently and which reconnected as session 2
    handler.lambda_handler(_event("connected", 1_000, 1), None)
    handler.lambda_handler(_event("connected", 50_000, 2), None)
    # WHEN AWS closes session 1 for the duplicate client id, a few ms after session 2 connected
    handler.lambda_handler(_event("disconnected", 50_004, 1, reason="DUPLICATE_CLIENTID"), None)
    # THEN the thing stays online: the version number orders events of nearby times
    p = _presence()
    assert p["connected"] is True and p["versionNumber"] == 2


def test_a_connect_long_after_the_stored_event_wins_even_with_a_smaller_version(handler: ModuleType) -> None:
    # GIVEN a thing that went offline at version 37
    handler.lambda_handler(_event("connected", 1_000, 37), None)
    handler.lambda_handler(_event("disconnected", 2_000, 37), None)
    # WHEN it connects again a day later and the broker's version count for it started over
    handler.lambda_handler(_event("connected", 2_000 + 86_400_000, 1), None)
    # THEN it is online: far apart in time, the timestamp decides
    assert _presence()["connected"] is True


def test_disconnect_in_the_same_millisecond_as_its_connect_wins(handler: ModuleType) -> None:
    # GIVEN a connect and a disconnect of one session stamped in the same millisecond
    handler.lambda_handler(_event("connected", 5_000, 3), None)
    # WHEN the disconnect arrives
    handler.lambda_handler(_event("disconnected", 5_000, 3), None)
    # THEN the thing is offline (within a session, disconnect follows connect)
    assert _presence()["connected"] is False
    # AND a duplicate of the connect changes nothing
    assert handler.lambda_handler(_event("connected", 5_000, 3), None)["written"] is False
    assert _presence()["connected"] is False


def test_events_of_clients_that_are_not_things_are_ignored(handler: ModuleType) -> None:
    # GIVEN a service component's client id (a '.' can never be in a thing name)
    # WHEN its lifecycle event arrives
    result = handler.lambda_handler(_event("connected", 1_000, 1, client_id="iotbridge.service"), None)
    # THEN nothing is written
    assert result["written"] is False


def test_unregistered_thing_is_not_an_error(handler: ModuleType) -> None:
    # GIVEN a client id shaped like a thing name that moto does not know
    # WHEN its event arrives
    result = handler.lambda_handler(_event("connected", 1_000, 1, client_id="ghost"), None)
    # THEN the function answers without raising and writes nothing
    assert result["written"] is False


def test_concurrent_write_is_detected_by_the_shadow_version(handler: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a thing that is online at t=1000
    handler.lambda_handler(_event("connected", 1_000, 1), None)
    # AND another writer that stores a newer connect between our read and our write
    real_read = handler._read
    calls = {"n": 0}

    def read_then_race(thing: str):
        state = real_read(thing)
        calls["n"] += 1
        if calls["n"] == 1:
            newer = {"state": {"reported": {"connected": True, "at": 9_000, "clientId": THING, "versionNumber": 5}}}
            handler.iot_data.update_thing_shadow(thingName=thing, shadowName="presence", payload=json.dumps(newer))
        return state

    monkeypatch.setattr(handler, "_read", read_then_race)
    # WHEN an older disconnect is handled
    result = handler.lambda_handler(_event("disconnected", 4_000, 1), None)
    # THEN the version conflict makes it re-read, and the newer connect survives
    assert result["written"] is False
    assert calls["n"] == 2
    p = _presence()
    assert p["connected"] is True
    assert p["at"] == 9_000


def test_a_first_event_does_not_replace_a_newer_one_stored_meanwhile(
    handler: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a thing with no presence shadow yet, and a concurrent invocation that stores the
    # session's disconnect right after this one found no shadow
    real_read, reads = handler._read, [0]

    def read_then_race(thing: str) -> Any:
        found = real_read(thing)
        reads[0] += 1
        if reads[0] == 1:
            newer = {"state": {"reported": {"connected": False, "at": 1_050, "clientId": THING,
                                            "reason": "AUTH_ERROR", "versionNumber": 1}}}  # fmt: skip
            handler.iot_data.update_thing_shadow(thingName=thing, shadowName="presence", payload=json.dumps(newer))
        return found

    monkeypatch.setattr(handler, "_read", read_then_race)
    # WHEN the older connect of the same session is handled
    handler.lambda_handler(_event("connected", 1_000, 1), None)
    # THEN the device still shows offline: its disconnect is the newest event
    assert _presence()["connected"] is False
