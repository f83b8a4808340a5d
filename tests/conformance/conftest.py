"""Fronts that speak to a shadow service: MQTT and HTTP to our iotcore, boto3 to moto.

Every front answers `(status, body)`: 200 and the accepted document, or the
error code and a body whose `message` is the error text. Conformance cases run
the same steps through each front.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from iotbridge_contract import topics
from iotbridge_contract.mqtt import Endpoint, make_client
from iotbridge_local.broker import Broker, wait_for_port
from iotbridge_local.config import StackConfig
from iotbridge_local.iotcore import IotCore

Reply = tuple[int, dict[str, Any]]
WAIT = 10.0  # generous upper bound for one MQTT reply; tests never assert on timing


def boto(service: str, endpoint_url: str | None) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _decode(payload: bytes | bytearray) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except ValueError:
        return {"raw": payload}  # e.g. an empty get request seen by a wide subscription
    return doc if isinstance(doc, dict) else {"raw": payload}


class Watcher:
    """An MQTT client that records every message on the filters it watches."""

    def __init__(self, endpoint: Endpoint, client_id: str) -> None:
        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.client = make_client(client_id, endpoint)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, _decode(m.payload)))
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()

    def watch(self, *filters: str) -> None:
        done = queue.Queue[int]()
        self.client.on_subscribe = lambda c, u, mid, rc, p: done.put(mid)
        _, mid = self.client.subscribe([(f, 1) for f in filters])
        assert done.get(timeout=WAIT) == mid

    def next(self, timeout: float = WAIT) -> tuple[str, dict[str, Any]]:
        return self.messages.get(timeout=timeout)

    def until(self, topic: str, timeout: float = WAIT) -> dict[str, Any]:
        """The next message on `topic`, skipping others."""
        deadline = time.monotonic() + timeout
        while True:
            got_topic, doc = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if got_topic == topic:
                return doc

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get_nowait())
        return out

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Front:
    name = "front"
    prepare_thing = False

    def update(self, thing: str, payload: bytes | dict[str, Any], shadow: str | None = None) -> Reply:
        raise NotImplementedError

    def get(self, thing: str, shadow: str | None = None) -> Reply:
        raise NotImplementedError

    def delete(self, thing: str, shadow: str | None = None) -> Reply:
        raise NotImplementedError

    def list_named(self, thing: str) -> list[str]:
        raise NotImplementedError


def _bytes(payload: bytes | dict[str, Any]) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload).encode()


class MqttFront(Front):
    """Requests on `$aws/things/…/{op}`, answers from `/accepted` or `/rejected`."""

    name = "mqtt"

    def __init__(self, watcher: Watcher, http: HttpFront) -> None:
        self.w = watcher
        self.http = http
        self._watched: set[str] = set()

    def _request(self, thing: str, shadow: str | None, op: str, payload: bytes) -> Reply:
        base = topics.shadow_base(thing, shadow)
        if base not in self._watched:
            self.w.watch(*(f"{base}/{o}/{r}" for o in topics.OPERATIONS for r in ("accepted", "rejected")))
            self._watched.add(base)
        self.w.drain()
        self.w.publish(f"{base}/{op}", payload)
        while True:
            topic, doc = self.w.next()
            if topic == f"{base}/{op}/accepted":
                return 200, doc
            if topic == f"{base}/{op}/rejected":
                return doc["code"], doc

    def update(self, thing: str, payload: bytes | dict[str, Any], shadow: str | None = None) -> Reply:
        return self._request(thing, shadow, "update", _bytes(payload))

    def get(self, thing: str, shadow: str | None = None) -> Reply:
        return self._request(thing, shadow, "get", b"")

    def delete(self, thing: str, shadow: str | None = None) -> Reply:
        return self._request(thing, shadow, "delete", b"")

    def list_named(self, thing: str) -> list[str]:
        return self.http.list_named(thing)  # listing exists only on HTTP


class HttpFront(Front):
    """boto3's iot-data client, pointed at an endpoint."""

    name = "http"

    def __init__(self, endpoint_url: str | None) -> None:
        self.client = boto("iot-data", endpoint_url)

    def _call(self, fn: Any, **kwargs: Any) -> Reply:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        try:
            out = fn(**kwargs)
        except ClientError as err:
            status = err.response["ResponseMetadata"]["HTTPStatusCode"]
            return status, {"message": err.response["Error"]["Message"], "type": err.response["Error"]["Code"]}
        return 200, json.loads(out["payload"].read())

    def update(self, thing: str, payload: bytes | dict[str, Any], shadow: str | None = None) -> Reply:
        return self._call(self.client.update_thing_shadow, thingName=thing, shadowName=shadow, payload=_bytes(payload))

    def get(self, thing: str, shadow: str | None = None) -> Reply:
        return self._call(self.client.get_thing_shadow, thingName=thing, shadowName=shadow)

    def delete(self, thing: str, shadow: str | None = None) -> Reply:
        return self._call(self.client.delete_thing_shadow, thingName=thing, shadowName=shadow)

    def list_named(self, thing: str) -> list[str]:
        return sorted(self.client.list_named_shadows_for_thing(thingName=thing)["results"])


class MotoFront(HttpFront):
    """moto's iot-data: the independent oracle; it needs the thing registered first."""

    name = "moto"
    prepare_thing = True

    def __init__(self) -> None:
        super().__init__(None)
        self.iot = boto("iot", None)
        self._things: set[str] = set()

    def _ensure(self, thing: str) -> None:
        if thing not in self._things:
            self.iot.create_thing(thingName=thing)
            self._things.add(thing)

    def update(self, thing: str, payload: bytes | dict[str, Any], shadow: str | None = None) -> Reply:
        self._ensure(thing)
        return super().update(thing, payload, shadow)

    def get(self, thing: str, shadow: str | None = None) -> Reply:
        self._ensure(thing)
        return super().get(thing, shadow)

    def delete(self, thing: str, shadow: str | None = None) -> Reply:
        self._ensure(thing)
        return super().delete(thing, shadow)

    def list_named(self, thing: str) -> list[str]:
        self._ensure(thing)
        return super().list_named(thing)


# ---------------------------------------------------------------- fixtures


@pytest.fixture
def iotcore(broker: Broker, stack_config: StackConfig) -> Iterator[IotCore]:
    core = IotCore(
        data_dir=stack_config.data_dir / "iotcore",
        mqtt=broker.service_endpoint(),
        http_port=stack_config.iot_http_port,
    )
    core.start()
    yield core
    core.stop()


@pytest.fixture
def watcher(broker: Broker) -> Iterator[Watcher]:
    w = Watcher(broker.service_endpoint(), "conformance-watcher")
    yield w
    w.close()


@pytest.fixture
def http_front(iotcore: IotCore) -> HttpFront:
    return HttpFront(iotcore.url)


@pytest.fixture
def mqtt_front(iotcore: IotCore, watcher: Watcher) -> MqttFront:
    return MqttFront(watcher, HttpFront(iotcore.url))


@pytest.fixture
def moto_front(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoFront]:
    from moto import mock_aws

    for var in ("AWS_ENDPOINT_URL_IOT_DATA_PLANE", "AWS_ENDPOINT_URL_IOT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    with mock_aws():
        yield MotoFront()


@pytest.fixture(params=["mqtt", "http"])
def front(request: pytest.FixtureRequest) -> Front:
    """Our service through each of its fronts."""
    fixture: Front = request.getfixturevalue(f"{request.param}_front")
    return fixture


@dataclass
class IotCoreProcess:
    """`python -m iotbridge_local.iotcore` as the stack supervisor runs it."""

    args: list[str]
    url: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "iotbridge_local.iotcore", *self.args], env=env)
        wait_for_port(int(self.url.rsplit(":", 1)[1]), timeout=20)

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(20)
        self.proc = None
        return code

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@pytest.fixture
def iotcore_process(broker: Broker, stack_config: StackConfig) -> Iterator[IotCoreProcess]:
    ep = broker.service_endpoint()
    assert ep.username is not None and ep.password is not None
    proc = IotCoreProcess(
        args=[
            "--data-dir",
            str(stack_config.data_dir / "iotcore"),
            "--mqtt-port",
            str(stack_config.mqtt_port),
            "--http-port",
            str(stack_config.iot_http_port),
            "--mqtt-username",
            ep.username,
            f"--mqtt-password={ep.password}",  # '=': a password may start with '-'
            "--log-level",
            "WARNING",
        ],
        url=stack_config.iot_endpoint,
    )
    proc.start()
    yield proc
    proc.stop()
