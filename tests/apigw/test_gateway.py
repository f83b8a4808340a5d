"""The local API Gateway: what the function receives, and what API Gateway itself answers."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbridge_local.apigw.environments import Environments
from iotbridge_local.apigw.server import ApiGateway
from iotbridge_local.config import free_port
from iotbridge_local.stack import function_timeout_s

KEY = "k-123"


@pytest.fixture
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[int, str]]:
    handler, timeout_s, integration_s = getattr(request, "param", ("echo", 30.0, 29.0))
    port = free_port()
    environments = Environments(handler=f"tests.apigw.handlers.{handler}", env={}, timeout_s=timeout_s, log=tmp_path / "api.log")
    api = ApiGateway(port=port, api_key=KEY, environments=environments, cors_origin="http://dash.local",
                     integration_timeout_s=integration_s)  # fmt: skip
    api.start()
    try:
        yield port, handler
    finally:
        api.stop()


def _request(port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, body=body, headers={"x-api-key": KEY, **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def test_the_function_gets_a_rest_proxy_event(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    # WHEN a request with a query string, repeated headers and a JSON body arrives
    status, _, data = _request(port, "POST", "/devices/d-1/commands?x=1&x=2&y=%2B", body=b'{"a": 1}',
                               headers={"Content-Type": "application/json", "X-Multi": "one"})  # fmt: skip
    event = json.loads(data)["event"]
    # THEN it has the fields API Gateway's proxy integration gives it
    assert status == 200
    assert event["httpMethod"] == "POST" and event["path"] == "/devices/d-1/commands"
    assert event["resource"] == "/{proxy+}" and event["pathParameters"] == {"proxy": "devices/d-1/commands"}
    assert event["queryStringParameters"] == {"x": "2", "y": "+"}
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": ["+"]}
    assert event["multiValueHeaders"]["X-Multi"] == ["one"] and event["headers"]["X-Multi"] == "one"
    assert event["body"] == '{"a": 1}' and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["requestId"] and context["identity"]["apiKey"] == KEY and context["stage"] == "Prod"


def test_binary_bodies_arrive_base64_encoded(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    raw = bytes(range(256))
    _, _, data = _request(port, "POST", "/x", body=raw, headers={"Content-Type": "application/octet-stream"})
    event = json.loads(data)["event"]
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == raw


def test_missing_or_wrong_key_is_refused_before_the_function(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    for headers in ({"x-api-key": ""}, {"x-api-key": "nope"}):
        status, response_headers, data = _request(port, "GET", "/devices", headers=headers)
        assert status == 403 and json.loads(data) == {"code": "INVALID_API_KEY", "message": "Forbidden"}
        assert response_headers["access-control-allow-origin"] == "http://dash.local"


def test_remaining_time_follows_the_functions_timeout(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    _, _, data = _request(port, "GET", "/")
    remaining = json.loads(data)["remainingMs"]
    assert 29_000 < remaining <= 30_000  # the fixture's 30 s Timeout


def test_the_stack_takes_the_timeout_from_the_template(tmp_path: Path) -> None:
    template = tmp_path / "template.yaml"
    template.write_text("Globals:\n  Function:\n    Runtime: python3.11\n    Timeout: 17\n")
    assert function_timeout_s(template) == 17
    assert function_timeout_s(tmp_path / "missing.yaml") == 30


@pytest.mark.parametrize("gateway", [("slow", 30.0, 29.0)], indirect=True)
def test_concurrent_requests_run_in_separate_environments(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    pids: list[int] = []

    def one() -> None:
        pids.append(json.loads(_request(port, "GET", "/?s=0.5")[2])["pid"])

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(pids)) == 3  # one request at a time per environment, as on Lambda


@pytest.mark.parametrize("gateway", [("slow", 30.0, 0.3)], indirect=True)
def test_integration_timeout_is_answered_as_api_gateway_does(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    status, _, data = _request(port, "GET", "/?s=2")
    assert status == 504 and json.loads(data)["code"] == "INTEGRATION_TIMEOUT"
    status, _, _ = _request(port, "GET", "/?s=0")  # a fresh environment replaces the stopped one
    assert status == 200


@pytest.mark.parametrize("gateway", [("crash", 30.0, 29.0)], indirect=True)
def test_a_crashing_function_is_a_502_not_a_hang(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    status, _, data = _request(port, "GET", "/")
    assert status == 502 and json.loads(data) == {"code": "DEFAULT_5XX", "message": "Internal server error"}


@pytest.mark.parametrize("gateway", [("runtime", 30.0, 29.0)], indirect=True)
def test_functions_sign_aws_calls_as_on_lambda_without_awscrt(gateway: tuple[int, str]) -> None:
    # GIVEN a venv where awscrt is installed (for the AWS IoT Device SDK tests), so botocore would sign with it
    import botocore.auth

    assert botocore.auth.AUTH_TYPE_MAPS["v4"].__module__ == "botocore.crt.auth"
    # WHEN a function running in a local execution environment creates an AWS client
    status, _, body = _request(gateway[0], "GET", "/anything")
    # THEN botocore signs in Python there, as in Lambda's runtime, whose boto3 has no awscrt
    assert (status, json.loads(body)) == (200, {"signer": "botocore.auth.SigV4Auth"})


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def test_a_head_answer_has_no_body_so_the_next_answer_on_the_connection_is_intact(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    # WHEN a HEAD and a GET go one after the other on one keep-alive connection
    head = f"HEAD /x HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\n\r\n"
    get = f"GET /y HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\nConnection: close\r\n\r\n"
    out = _raw(port, (head + get).encode())
    # THEN the GET's answer starts right after the HEAD's headers
    assert out[out.index(b"\r\n\r\n") + 4:].startswith(b"HTTP/1.1 "), out[:400]


@pytest.mark.parametrize("length", ["-1", "abc"])
def test_a_malformed_content_length_is_answered_400(gateway: tuple[int, str], length: str) -> None:
    port, _ = gateway
    out = _raw(port, f"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\nContent-Length: {length}\r\n\r\n{{}}".encode())
    assert out.startswith(b"HTTP/1.1 400"), out[:200]


def test_a_chunked_body_reaches_the_function_whole(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    # WHEN a client streams its JSON body in chunks (Transfer-Encoding: chunked, no Content-Length),
    # then sends another request on the same connection
    chunked = (f"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n" "7\r\n{\"a\": 1\r\n" "1;ext=1\r\n}\r\n" "0\r\n\r\n")  # fmt: skip
    get = f"GET /y HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\nConnection: close\r\n\r\n"
    out = _raw(port, (chunked + get).encode())
    # THEN the function gets the body whole, and the next request is answered as one (not as junk)
    first, second = (json.loads(answer[answer.index(b"\r\n\r\n") + 4:]) for answer in out.split(b"HTTP/1.1 200 ")[1:3])
    assert first["event"]["body"] == '{"a": 1}' and second["event"]["path"] == "/y"


def test_a_malformed_chunked_body_is_answered_400_in_json(gateway: tuple[int, str]) -> None:
    port, _ = gateway
    out = _raw(port, (f"POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nx-api-key: {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "zz\r\n{}\r\n0\r\n\r\n").encode())  # fmt: skip
    assert out.startswith(b"HTTP/1.1 400"), out[:200]
    assert json.loads(out[out.index(b"\r\n\r\n") + 4:])["code"] == "BAD_REQUEST_BODY"
