"""The local API Gateway: HTTP in, REST proxy event to the function, its response out.

What it reproduces: `x-api-key` checked first (403), CORS preflight passed to the
function without a key (as SAM configures it), API Gateway's 29 s integration
timeout (504), a failing or timed-out function (502), a 10 MB payload limit (413).
Errors API Gateway answers itself have the body and CORS header that the
template's GatewayResponses give them: {"code": <responseType>, "message": …}.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

from iotbridge_local.apigw.environments import Environments, InvocationError
from iotbridge_local.apigw.event import build_event
from iotbridge_local.httpserver import LocalHTTPServer, LocalRequestHandler, bound_handler

INTEGRATION_TIMEOUT_S = 29.0
MAX_PAYLOAD = 10 * 1024 * 1024


class ApiGateway:
    def __init__(
        self, *, port: int, api_key: str | None, environments: Environments, cors_origin: str | None = None,
        host: str = "127.0.0.1", integration_timeout_s: float = INTEGRATION_TIMEOUT_S,
    ) -> None:  # fmt: skip
        self.integration_timeout_s = integration_timeout_s
        self.environments = environments
        self.api_key = api_key
        self.cors_origin = cors_origin
        self.httpd = LocalHTTPServer((host, port), bound_handler(_RequestHandler, gateway=self))
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="api-gateway", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.environments.close()


class _RequestHandler(LocalRequestHandler):
    gateway: ApiGateway
    server_version = "iotbridge-local-apigw"

    def _gateway_error(self, status: int, message: str, error_type: str, response_type: str) -> None:
        body = json.dumps({"code": response_type, "message": message}).encode()
        headers = {"Content-Type": "application/json", "x-amzn-ErrorType": error_type}
        if self.gateway.cors_origin:
            headers["Access-Control-Allow-Origin"] = self.gateway.cors_origin
        self._send(status, body, headers)

    def _read_chunked(self) -> bytes | None:
        """A `Transfer-Encoding: chunked` body (a streaming client's, as API Gateway takes it); None if malformed."""
        body = bytearray()
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                return None
            if size < 0:
                return None
            if len(body) + size > MAX_PAYLOAD:
                raise OverflowError
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return bytes(body)
            body += self.rfile.read(size)
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                return None

    def _read_body(self) -> bytes | None:
        """The request's body (None: none). ValueError: where it ends is unknown; OverflowError: past MAX_PAYLOAD."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
            if body is None:
                raise ValueError("Invalid chunked body")
            return body or None
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            raise ValueError("Invalid Content-Length")
        if length > MAX_PAYLOAD:
            raise OverflowError
        return self.rfile.read(length) if length else None

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except ValueError as exc:  # unreadable: the body's end is unknown, so the connection cannot go on
            self.close_connection = True
            self._gateway_error(400, str(exc), "BadRequestException", "BAD_REQUEST_BODY")
            return
        except OverflowError:
            self._gateway_error(413, "Request Too Long", "RequestEntityTooLargeException", "REQUEST_TOO_LARGE")
            self.close_connection = True
            return
        key = self.headers.get("x-api-key")
        if self.command != "OPTIONS" and self.gateway.api_key is not None and key != self.gateway.api_key:
            self._gateway_error(403, "Forbidden", "ForbiddenException", "INVALID_API_KEY")
            return
        event = build_event(self.command, self.path, headers=list(self.headers.items()), body=body, api_key=key)
        try:
            result = self.gateway.environments.invoke(event, wait_s=self.gateway.integration_timeout_s)
        except TimeoutError:
            self._gateway_error(504, "Endpoint request timed out", "InternalServerErrorException", "INTEGRATION_TIMEOUT")
            return
        except InvocationError:
            self._gateway_error(502, "Internal server error", "InternalServerErrorException", "DEFAULT_5XX")
            return
        headers = dict(result.get("headers") or {})
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[name] = ", ".join(values)
        raw = result.get("body") or ""
        payload = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
        if self.command == "HEAD":  # the headers a GET would have, no body (else the next answer starts with it)
            headers["Content-Length"] = str(len(payload))
            self._send(int(result["statusCode"]), b"", headers)
            return
        self._send(int(result["statusCode"]), payload, headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _handle

    def _no_such_method(self) -> None:
        self._gateway_error(403, "Missing Authentication Token", "MissingAuthenticationTokenException",
                            "MISSING_AUTHENTICATION_TOKEN")  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        # http.server answers a method without a do_X with 501 and an HTML page; API Gateway
        # answers a method that no route has with 403 Missing Authentication Token.
        if name.startswith("do_"):
            return self._no_such_method
        raise AttributeError(name)
