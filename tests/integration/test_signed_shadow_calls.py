"""The functions' shadow calls (iotbridge_dataplane) are the calls boto3 makes: same request, same signature, same answers.

The local data plane does not check signatures, so the signature is compared
with the one boto3 puts on the same call in the same second, on a server that
records what arrives.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from unittest import mock

import boto3
import pytest
from botocore.exceptions import ClientError
from iotbridge_dataplane.signed import SignedShadows

from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig
from iotbridge_local.iotcore import IotCore


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "AKIDLOCAL"), ("AWS_SECRET_ACCESS_KEY", "local-secret"),
                        ("AWS_SESSION_TOKEN", "local-token"), ("AWS_DEFAULT_REGION", "eu-west-1")):  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


class _Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        out = b'{"state":{}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.seen = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


CALLS = [
    ("get_thing_shadow", {"thingName": "pi:01", "shadowName": "commands"}),
    ("update_thing_shadow", {"thingName": "pi:01", "shadowName": "cmd:x", "payload": b'{"state":{"desired":{"a":1}}}'}),
    ("get_thing_shadow", {"thingName": "lamp-2"}),
]


def test_each_call_goes_out_as_boto3_sends_it_signed_the_same(credentials: None, recorder: str) -> None:
    # GIVEN boto3's iot-data client and ours, made from it, both pointed at a server that records requests
    sdk = boto3.client("iot-data", endpoint_url=recorder)
    ours = SignedShadows(sdk, connect_timeout=1, read_timeout=1, max_connections=2)
    for operation, params in CALLS:
        # WHEN each makes the same call (a thing name and a shadow name that need escaping, a body), in the same second
        getattr(sdk, operation)(**params)
        when = datetime.datetime.strptime(_Recorder.seen[-1][2]["x-amz-date"], "%Y%m%dT%H%M%SZ")
        with mock.patch("botocore.auth.get_current_datetime", return_value=when):
            getattr(ours, operation)(**params)
        (method, path, sdk_headers, sdk_body), (our_method, our_path, headers, body) = _Recorder.seen[-2:]
        # THEN the method, path, query and body are boto3's, and so is the signature over them
        assert (our_method, our_path, body) == (method, path, sdk_body)
        assert headers["authorization"] == sdk_headers["authorization"], (operation, params)
        assert headers["x-amz-security-token"] == "local-token"


@pytest.fixture
def data_plane(broker: Broker, stack_config: StackConfig, credentials: None) -> Iterator[str]:
    core = IotCore(data_dir=stack_config.data_dir / "iotcore", mqtt=broker.service_endpoint(),
                   http_port=stack_config.iot_http_port)  # fmt: skip
    core.start()
    try:
        registry = boto3.client("iot", endpoint_url=core.url)
        registry.create_thing(thingName="pi:01")
        yield core.url
    finally:
        core.stop()


def _outcome(client: Any, call: Any) -> tuple[Any, ...]:
    try:
        doc = json.loads(call(client)["payload"].read())
        return ("ok", doc.get("version"), doc.get("state"))
    except ClientError as exc:
        return ("error", exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"])


def test_answers_and_refusals_are_the_ones_boto3_gives(data_plane: str) -> None:
    # GIVEN boto3's client and ours against the local data plane, and a thing whose commands shadow is at version 1
    sdk = boto3.client("iot-data", endpoint_url=data_plane)
    ours = SignedShadows(sdk, connect_timeout=1, read_timeout=2, max_connections=2)
    sdk.update_thing_shadow(thingName="pi:01", shadowName="commands", payload=b'{"state":{"desired":{"a":1}}}')
    stale = b'{"state":{"desired":{"a":2}},"version":0}'
    too_big = json.dumps({"state": {"desired": {"blob": "x" * 9000}}}).encode()
    thing = {"thingName": "pi:01", "shadowName": "commands"}
    cases = [
        ("a shadow that exists", lambda c: c.get_thing_shadow(**thing)),
        ("a shadow that does not", lambda c: c.get_thing_shadow(thingName="pi:01", shadowName="none")),
        ("a write with a stale version", lambda c: c.update_thing_shadow(**thing, payload=stale)),
        ("a document over 8 KB", lambda c: c.update_thing_shadow(**thing, payload=too_big)),
        ("a document that is no JSON", lambda c: c.update_thing_shadow(**thing, payload=b"{")),
    ]
    # WHEN each is asked of both THEN ours answers as boto3 does: the document, or AWS's error code and status
    for name, call in cases:
        assert _outcome(ours, call) == _outcome(sdk, call), name
    # AND the refusals are the ones the callers map (not found, conflict, too large, invalid)
    assert [_outcome(ours, call)[1] for _, call in cases[1:]] == [
        "ResourceNotFoundException", "ConflictException", "RequestEntityTooLargeException", "InvalidRequestException"]


def test_a_call_never_outlasts_the_time_its_caller_has_left(credentials: None) -> None:
    # GIVEN a data plane that accepts connections and never answers, and a caller with 0.4 s left
    import socket
    import time

    silent = socket.create_server(("127.0.0.1", 0))
    try:
        sdk = boto3.client("iot-data", endpoint_url=f"http://127.0.0.1:{silent.getsockname()[1]}")
        ours = SignedShadows(sdk, connect_timeout=1, read_timeout=2, max_connections=1, budget=lambda: 0.4)
        # WHEN it reads a shadow
        started = time.monotonic()
        with pytest.raises(Exception) as failed:
            ours.get_thing_shadow(thingName="pi-01")
        # THEN it fails as a timeout once those 0.4 s are spent, not after its 2 s read timeout
        assert "timed out" in str(failed.value).lower() or "Timeout" in type(failed.value).__name__, failed.value
        assert time.monotonic() - started < 1.0
    finally:
        silent.close()
