"""What a web page the developer visits can do to the local stack's HTTP servers on 127.0.0.1: nothing.

A page can send a "simple" cross-origin request (a text/plain POST, no CORS preflight) to any local port,
and with DNS rebinding (its own name resolving to 127.0.0.1) it can even read the answers.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from iotbridge_local.apigw.environments import Environments
from iotbridge_local.apigw.server import ApiGateway
from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig, free_port
from iotbridge_local.dashboard_server import DashboardServer
from iotbridge_local.iotcore import IotCore
from iotbridge_local.lambdaapi import LambdaService

# The shape of what boto3 sends; the local servers do not check the signature itself.
SIGV4 = "AWS4-HMAC-SHA256 Credential=local/20260101/us-east-1/iotdata/aws4_request, SignedHeaders=host, Signature=0"
EVIL = "https://evil.example"
API_KEY = "k-secret"
INVOKE = "/2015-03-31/functions/record/invocations"
COMMAND = b'{"state":{"desired":{"c1":{"action":"led","params":{"state":"on"},"issuedAt":1,"expiresAt":9999999999999}}}}'


def _call(port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """(status, x-amzn-ErrorType, body). A "Host" in headers replaces the one http.client would send."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("x-amzn-ErrorType") or "", response.read()
    finally:
        conn.close()


def _raw(port: int, request: bytes, timeout: float = 3.0) -> bytes:
    """What the server answers to `request`, up to when it closes the connection or goes quiet."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def _sdk(service: str, port: int) -> object:
    return boto3.client(  # type: ignore[call-overload]
        service, endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
        aws_access_key_id="local", aws_secret_access_key="local",
    )  # fmt: skip


@pytest.fixture
def iotcore(broker: Broker, stack_config: StackConfig) -> Iterator[IotCore]:
    core = IotCore(data_dir=stack_config.data_dir / "iotcore", mqtt=broker.service_endpoint(),
                   http_port=stack_config.iot_http_port)  # fmt: skip
    core.start()
    yield core
    core.stop()


@pytest.fixture
def lambda_port(tmp_path: Path) -> Iterator[int]:
    record = Environments(handler="tests.lambdaapi.handlers.record", env={}, timeout_s=10.0, log=tmp_path / "record.log",
                          max_environments=1, function_name="record")  # fmt: skip
    service = LambdaService(port=free_port(), functions={"record": record})
    service.start()
    yield service.httpd.server_address[1]
    service.stop()


@pytest.fixture
def api_port(tmp_path: Path) -> Iterator[int]:
    environments = Environments(handler="tests.apigw.handlers.echo", env={}, timeout_s=10.0, log=tmp_path / "api.log")
    api = ApiGateway(port=free_port(), api_key=API_KEY, environments=environments)
    api.start()
    yield api.httpd.server_address[1]
    api.stop()


@pytest.fixture
def dashboard_port(tmp_path: Path) -> Iterator[int]:
    (tmp_path / "index.html").write_text("<h1>dashboard</h1>")
    server = DashboardServer(port=free_port(), site_config={"apiUrl": "http://127.0.0.1:1", "apiKey": API_KEY},
                             directory=tmp_path)  # fmt: skip
    server.start()
    yield server.httpd.server_address[1]
    server.stop()


# -- F1: cross-origin requests to the endpoints only SDKs call ------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Content-Type": "text/plain"}, id="unsigned"),
        pytest.param({"Content-Type": "text/plain", "Origin": EVIL}, id="cross-origin form post"),
        pytest.param({"Authorization": SIGV4, "Origin": EVIL}, id="signed but from a page"),
        pytest.param({"Authorization": SIGV4, "Sec-Fetch-Site": "cross-site"}, id="cross-site fetch"),
        pytest.param({"Authorization": SIGV4, "Sec-Fetch-Site": "same-site"}, id="same-site fetch"),
    ],
)
def test_a_web_page_cannot_queue_a_command_on_a_device(iotcore: IotCore, headers: dict[str, str]) -> None:
    # GIVEN the local IoT data plane
    # WHEN a request a web page can send writes a command into sim-1's commands shadow
    status, error, body = _call(iotcore.http_port, "POST", "/things/sim-1/shadow?name=commands", body=COMMAND, headers=headers)
    # THEN it is refused as AWS refuses an unsigned request, in a form boto3 reads
    assert status == 403 and error in ("MissingAuthenticationTokenException", "ForbiddenException")
    assert json.loads(body)["message"]
    # AND the device has no command to run (an SDK call, signed, is still served)
    with pytest.raises(ClientError) as refused:
        _sdk("iot-data", iotcore.http_port).get_thing_shadow(thingName="sim-1", shadowName="commands")  # type: ignore[attr-defined]
    assert refused.value.response["Error"]["Code"] == "ResourceNotFoundException"


@pytest.mark.parametrize(
    "path, body",
    [
        pytest.param("/things/sim-2/shadow?name=presence", b'{"state":{"reported":{"connected":false}}}', id="presence"),
        pytest.param("/topics/iotbridge%2Fthings%2Fsim-1%2Fstatus?qos=1&retain=true", b"forged", id="publish"),
        pytest.param("/things/sim-3", b"{}", id="create thing"),
    ],
)
def test_a_web_page_cannot_write_presence_publish_or_register_things(iotcore: IotCore, path: str, body: bytes) -> None:
    # GIVEN the local IoT data plane WHEN a cross-origin text/plain POST (no preflight) reaches it
    status, _, _ = _call(iotcore.http_port, "POST", path, body=body, headers={"Content-Type": "text/plain", "Origin": EVIL})
    # THEN it is refused
    assert status == 403


def test_a_web_page_cannot_invoke_a_function(lambda_port: int, tmp_path: Path) -> None:
    # GIVEN the local Lambda Invoke API, serving a function that leaves a trace of each run
    trace = tmp_path / "trace"
    payload = json.dumps({"trace": str(trace)}).encode()
    # WHEN a web page posts an invocation (text/plain, cross-origin: no preflight)
    status, error, body = _call(lambda_port, "POST", INVOKE, body=payload, headers={"Content-Type": "text/plain", "Origin": EVIL})
    # THEN it is refused and the function never ran
    assert (status, error) == (403, "ForbiddenException") and json.loads(body)["message"]
    assert not trace.exists()
    # AND an unsigned request without Origin is refused too, while boto3's (signed) invocation runs it
    assert _call(lambda_port, "POST", INVOKE, body=payload, headers={})[:2] == (403, "MissingAuthenticationTokenException")
    assert not trace.exists()
    answer = _sdk("lambda", lambda_port).invoke(FunctionName="record", Payload=payload)  # type: ignore[attr-defined]
    assert answer["StatusCode"] == 200 and json.loads(answer["Payload"].read())["attempts"] == 1


# -- F2: DNS rebinding -----------------------------------------------------------------------------------


@pytest.fixture
def iotcore_port(iotcore: IotCore) -> int:
    return iotcore.http_port


# A request each server serves when addressed as 127.0.0.1: method, path, headers.
PROBES = {
    "dashboard": ("GET", "/config.json", {}),
    "api": ("GET", "/devices", {"x-api-key": API_KEY}),
    "iotcore": ("GET", "/things", {"Authorization": SIGV4}),
    "lambda": ("POST", INVOKE, {"Authorization": SIGV4, "X-Amz-Invocation-Type": "DryRun"}),
}


@pytest.mark.parametrize("server", ["dashboard", "api", "iotcore", "lambda"])
def test_a_page_on_a_rebound_dns_name_gets_nothing_from_a_local_server(server: str, request: pytest.FixtureRequest) -> None:
    # GIVEN a local server, and a request it serves when addressed as 127.0.0.1
    port: int = request.getfixturevalue(f"{server}_port")
    method, path, headers = PROBES[server]
    assert _call(port, method, path, headers={**headers, "Host": f"127.0.0.1:{port}"})[0] in (200, 204)
    # WHEN a page whose own name now resolves to 127.0.0.1 sends it (the browser names that page's host)
    status, _, body = _call(port, method, path, headers={**headers, "Host": f"rebind.evil.example:{port}"})
    # THEN it is refused, and nothing of the answer (the API key, devices, shadows) is in it
    assert status == 403
    assert json.loads(body)["message"] and API_KEY not in body.decode()


@pytest.mark.parametrize(
    "host, served",
    [
        ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("[::1]:{port}", True), ("127.0.0.1", True),
        ("LocalHost:{port}", True), ("127.0.0.1.evil.example:{port}", False), ("localhost.evil.example", False),
        ("evil.example", False), ("127.0.0.2:{port}", False), ("", False),
    ],
)  # fmt: skip
def test_the_dashboard_answers_only_to_loopback_names(dashboard_port: int, host: str, served: bool) -> None:
    # GIVEN the dashboard server WHEN its config (with the API key) is asked for under a Host name
    status, _, _ = _call(dashboard_port, "GET", "/config.json", headers={"Host": host.format(port=dashboard_port)})
    # THEN a loopback name is served (localhost: sent on to 127.0.0.1) and any other refused
    assert (status != 403) is served, status


def test_an_http_1_0_request_without_host_is_still_served(dashboard_port: int) -> None:
    # GIVEN the dashboard server WHEN a client that names no host (HTTP/1.0 allows it) asks for a file
    answer = _raw(dashboard_port, b"GET /index.html HTTP/1.0\r\n\r\n")
    # THEN it is served
    assert answer.startswith(b"HTTP/1.0 200") and b"dashboard" in answer


# -- F5: the Lambda Invoke API checks the declared body length before reading --------------------------


@pytest.mark.parametrize(
    "length_header, status",
    [
        (b"Content-Length: 1000000000\r\n", b"413"),  # it used to read (wait for) the whole gigabyte first
        (b"Content-Length: abc\r\n", b"400"),  # it used to drop the connection with a traceback
        (b"Content-Length: -5\r\n", b"400"),  # it used to read until the client closed
        (b"", b"411"),  # it used to invoke the function with an empty event
    ],
)
def test_a_bad_or_huge_content_length_is_answered_at_once(lambda_port: int, length_header: bytes, status: bytes) -> None:
    # GIVEN the local Lambda Invoke API
    # WHEN an invocation declares a body length it cannot take, and sends only 1 KB
    head = f"POST {INVOKE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {SIGV4}\r\nContent-Type: application/json\r\n"
    answer = _raw(lambda_port, head.encode() + length_header + b"\r\n" + b"{" * 1024)
    # THEN it is answered at once with Lambda's JSON error, and the connection is closed
    assert answer.startswith(b"HTTP/1.1 " + status), answer[:100]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["message"]
