"""The HTTP server and request handler base every local endpoint uses (API Gateway, Lambda, IoT data plane, dashboard)."""

from __future__ import annotations

import logging
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


class LocalRequestHandler(BaseHTTPRequestHandler):
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


H = TypeVar("H", bound=BaseHTTPRequestHandler)


def bound_handler(handler: type[H], **attrs: Any) -> type[H]:
    """A subclass of `handler` carrying `attrs` (the service it answers for): one per server, so two never share."""
    return cast("type[H]", type(handler.__name__, (handler,), attrs))
