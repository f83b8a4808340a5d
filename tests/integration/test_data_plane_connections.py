"""Our functions keep one connection to the IoT data plane (and to Lambda) for many calls.

On AWS every new connection is a TLS handshake. botocore returns a connection
to its pool only once the answer's body has been read, so a call whose answer
is dropped unread makes the next call open a new one. The local data plane
keeps connections alive as AWS does (moto's server closes each one, so it
cannot tell); a counting proxy in front of it sees every connection.
"""

from __future__ import annotations

import contextlib
import importlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from iotbridge_api import bulk, iot
from iotbridge_contract.commands import COMMANDS_SHADOW
from iotbridge_jobs import record
from iotbridge_local.apigw.environments import Environments
from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig, free_port
from iotbridge_local.iotcore import IotCore
from iotbridge_local.lambdaapi import LambdaService

THINGS = [f"conn-{i}" for i in range(12)]


class CountingProxy:
    """Forwards TCP connections to `target_port` and counts how many clients opened."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def _local_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "local"), ("AWS_SECRET_ACCESS_KEY", "local"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)


@pytest.fixture
def proxy(broker: Broker, stack_config: StackConfig, monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingProxy]:
    core = IotCore(data_dir=stack_config.data_dir / "iotcore", mqtt=broker.service_endpoint(),
                   http_port=stack_config.iot_http_port)  # fmt: skip
    core.start()
    _local_credentials(monkeypatch)
    counting = CountingProxy(stack_config.iot_http_port)
    try:
        registry = boto3.client("iot", endpoint_url=core.url)
        for thing in THINGS:
            registry.create_thing(thingName=thing)
        monkeypatch.setenv("AWS_ENDPOINT_URL_IOT_DATA_PLANE", counting.url)
        # the functions create their clients once per environment: make them anew, pointed at the proxy
        monkeypatch.setattr(record, "_clients", {})
        monkeypatch.setattr(iot, "_clients", {})
        # the presence function's client is made at import (its cold start): import it now, pointed here
        importlib.reload(importlib.import_module("iotbridge_presence.handler"))
        yield counting
    finally:
        counting.close()
        core.stop()


def _desired(thing: str, key: str) -> dict[str, Any]:
    return {"state": {"desired": {key: {"action": "ping"}}}, "clientToken": key}


def test_the_fan_out_writes_every_device_over_one_connection(proxy: CountingProxy) -> None:
    # GIVEN the jobs function's data-plane client
    # WHEN it queues a command on a dozen devices, one after the other, and reads one back
    for thing in THINGS:
        record.update(thing, _desired(thing, "job1"), COMMANDS_SHADOW)
    doc = record.get(THINGS[-1], COMMANDS_SHADOW)
    # THEN every device has it, and all of it went over a single connection
    assert doc is not None and "job1" in record.desired(doc)
    assert proxy.accepted == 1


def test_the_presence_function_folds_many_events_over_one_connection(proxy: CountingProxy) -> None:
    # GIVEN the presence function
    presence = importlib.import_module("iotbridge_presence.handler")
    # WHEN a dozen devices connect
    for n, thing in enumerate(THINGS):
        event = {"eventType": "connected", "clientId": thing, "timestamp": 1_000 + n, "versionNumber": 1}
        assert presence.lambda_handler(event, None)["written"] is True
    # THEN every event was written, over a single connection
    assert proxy.accepted == 1


def test_the_api_reads_and_writes_shadows_over_one_connection(proxy: CountingProxy) -> None:
    # GIVEN the API function's data-plane calls
    # WHEN it queues a command on each device and reads each shadow back
    for thing in THINGS:
        iot.update_shadow(thing, _desired(thing, "c1"), COMMANDS_SHADOW)
        assert iot.get_shadow(thing, COMMANDS_SHADOW) is not None
    # THEN a single connection carried all of it
    assert proxy.accepted == 1


def test_the_api_starts_every_fan_out_page_over_one_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN the local Lambda Invoke API with a fan-out function, reached through the counting proxy
    functions = {"fanout": Environments(handler="tests.lambdaapi.handlers.noop", env={}, timeout_s=5.0,
                                        log=tmp_path / "fanout.log", max_environments=1, function_name="fanout")}  # fmt: skip
    service = LambdaService(port=free_port(), functions=functions)
    service.start()
    counting = CountingProxy(service.httpd.server_address[1])
    try:
        _local_credentials(monkeypatch)
        monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", counting.url)
        monkeypatch.setenv("JOBS_FUNCTION_NAME", "fanout")
        monkeypatch.setattr(bulk, "_lambda_client", [])
        # WHEN the API starts a job's eight pages
        for page in range(8):
            bulk._start_fanout("0" * 32, page)
        # THEN Lambda accepted every one, over a single connection
        assert counting.accepted == 1
    finally:
        counting.close()
        service.stop()
