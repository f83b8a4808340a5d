"""The HTTP server and request handler base every local endpoint uses (API Gateway, Lambda, IoT data plane, dashboard).

Every one answers only requests addressed to 127.0.0.1, localhost or [::1] (LoopbackOnly), and the
endpoints only SDKs call only SigV4-signed requests that no web page sent (SignedCallersOnly).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar, cast

log = logging.getLogger(__name__)

# A client that went away before its answer was written: curl -m 1 during a long wait, a reloaded dashboard.
CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class LocalHTTPServer(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of concurrent callers got
    # connection resets in the benchmarks. API Gateway and IoT Core never refuse a burst like that.
    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints a traceback for any error; a client hanging up is no error of ours
        # (it filled the `iotbridge up` terminal). Anything else is still reported.
        if isinstance(sys.exc_info()[1], CLIENT_GONE):
            log.debug("client %s disconnected before its answer was written", client_address)
            return
        super().handle_error(request, client_address)


# The names a loopback server answers to. DNS rebinding points another site's name at 127.0.0.1, and its
# pages could then read our answers (the dashboard's config.json has the API key) as same-origin; the
# browser still sends that site's name in Host.
_LOOPBACK_HOST = re.compile(r"(?:127\.0\.0\.1|localhost|\[::1\])(?::\d{1,5})?", re.IGNORECASE)


class LoopbackOnly(BaseHTTPRequestHandler):
    """Answers only requests addressed to a loopback name; `refusal` says why any other gets a 403."""

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        refused = self.refusal()
        if refused is None:
            return True
        error_type, message = refused
        body = json.dumps({"message": message}).encode()
        self.close_connection = True  # a body, if any, is left unread
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("x-amzn-ErrorType", error_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return False

    def refusal(self) -> tuple[str, str] | None:
        """(error type, message) for a request this server refuses, or None."""
        hosts = self.headers.get_all("Host") or []
        if not hosts and self.request_version == "HTTP/1.0":  # HTTP/1.0 need not name the host
            return None
        if len(hosts) != 1 or not _LOOPBACK_HOST.fullmatch(hosts[0].strip()):
            return "ForbiddenException", "Host must be 127.0.0.1, localhost or [::1]"
        return None


class LocalRequestHandler(LoopbackOnly):
    """HTTP/1.1 keep-alive, as the AWS SDKs expect, and one way to answer."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in separate writes: without this, 40 ms per request

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the services log what matters; access logs would only repeat it

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        headers = headers or {}
        for name, value in headers.items():
            self.send_header(name, value)
        if not any(name.lower() == "content-length" for name in headers):  # a HEAD answer gives its GET's
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class SignedCallersOnly(LocalRequestHandler):
    """For the endpoints only AWS SDKs call (the IoT data plane, the Lambda Invoke API).

    A web page can send them a "simple" cross-origin request (a text/plain POST needs no CORS
    preflight) and write a shadow or invoke a function; its answer need not be readable for that
    to do harm. A browser cannot add Authorization to such a request without a preflight, which
    these servers never approve, and it names the page in Origin / Sec-Fetch-Site. Every SDK call
    is SigV4-signed; the signature itself is not checked (any credentials work, as with moto).
    """

    def refusal(self) -> tuple[str, str] | None:
        refused = super().refusal()
        if refused is not None:
            return refused
        if "Origin" in self.headers or self.headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site"):
            return "ForbiddenException", "Requests from web pages are not accepted"
        if not self.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
            return "MissingAuthenticationTokenException", "Missing Authentication Token"
        return None


H = TypeVar("H", bound=BaseHTTPRequestHandler)


def bound_handler(handler: type[H], **attrs: Any) -> type[H]:
    """A subclass of `handler` carrying `attrs` (the service it answers for): one per server, so two never share."""
    return cast("type[H]", type(handler.__name__, (handler,), attrs))
