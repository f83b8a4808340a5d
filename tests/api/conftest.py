"""Unit-test fixtures: the API function against moto's AWS IoT, through the in-process client."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from iotbridge_contract.commands import COMMANDS_SHADOW, PRESENCE_SHADOW, CommandState, outcome_entry
from iotbridge_local.testclient import ApiClient

ACTIONS = {"led": {"state": "enum:on|off|toggle"}, "ping": {}, "set_interval": {"seconds": "int:1..3600"}}


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", "AWS_ENDPOINT_URL_IOT", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "iotbridge-test")
    monkeypatch.setenv("IOTBRIDGE_SHADOW_CALLS", "sdk")  # moto answers boto3 only (iotbridge_dataplane)
    from iotbridge_api import iot, waiting

    with mock_aws():
        iot._clients.clear()
        waiting.forget()
        yield
        iot._clients.clear()


@pytest.fixture
def iot_data(aws: None) -> Any:
    return boto3.client("iot-data", region_name="us-east-1")


@pytest.fixture
def api(aws: None) -> ApiClient:
    return ApiClient()


def worst_call_s(client: Any) -> float:
    """How long one call of a boto3 client may take: its timeouts, times the attempts it makes.

    botocore counts `total_max_attempts` with the first attempt and `max_attempts` without it.
    """
    config = client.meta.config
    retries = config.retries or {}
    if "total_max_attempts" in retries:
        attempts = int(retries["total_max_attempts"])
    elif "max_attempts" in retries:
        attempts = int(retries["max_attempts"]) + 1
    else:
        attempts = 3 if retries.get("mode") == "standard" else 5
    return float(config.connect_timeout + config.read_timeout) * attempts


def make_device(thing: str, *, connected: bool = True, actions: dict[str, Any] | None = None) -> None:
    """A registered thing whose device has reported its actions and presence."""
    boto3.client("iot", region_name="us-east-1").create_thing(thingName=thing)
    data = boto3.client("iot-data", region_name="us-east-1")
    state = {"state": {"reported": {"led": "off", "actions": actions if actions is not None else ACTIONS}}}
    data.update_thing_shadow(thingName=thing, payload=json.dumps(state))
    presence = {"state": {"reported": {"connected": connected, "at": 1, "clientId": thing}}}
    data.update_thing_shadow(thingName=thing, shadowName=PRESENCE_SHADOW, payload=json.dumps(presence))


def shadow(thing: str, name: str | None = COMMANDS_SHADOW) -> dict[str, Any]:
    data = boto3.client("iot-data", region_name="us-east-1")
    kwargs = {"thingName": thing} | ({"shadowName": name} if name else {})
    return json.loads(data.get_thing_shadow(**kwargs)["payload"].read())  # type: ignore[no-any-return]


class FakeDeviceAnswers:
    """Answers pending commands in moto's shadow the way a device does (one update: outcome in, desired out).

    Unit tests only: the integration tests use the real agent against the local stack.
    """

    def __init__(self, thing: str, *, result: Any = None) -> None:
        self.thing, self.result = thing, result
        self.executed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FakeDeviceAnswers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        data = boto3.client("iot-data", region_name="us-east-1")
        while not self._stop.wait(0.005):
            try:
                doc = json.loads(data.get_thing_shadow(thingName=self.thing, shadowName=COMMANDS_SHADOW)["payload"].read())
            except data.exceptions.ResourceNotFoundException:
                continue
            for cid, cmd in (doc.get("state", {}).get("desired") or {}).items():
                self.executed.append(cid)
                outcome = outcome_entry(
                    CommandState.SUCCEEDED, cmd["action"], done_at=1, result=self.result, params=cmd.get("params")
                )
                update = {"state": {"desired": {cid: None}, "reported": {cid: outcome}}}
                data.update_thing_shadow(thingName=self.thing, shadowName=COMMANDS_SHADOW, payload=json.dumps(update))
