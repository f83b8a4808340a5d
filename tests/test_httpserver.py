"""The HTTP server every local endpoint runs on (API Gateway, Lambda, IoT data plane, dashboard): a client
that hangs up early is normal traffic, not an error printed into the `iotbridge up` terminal."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from iotbridge_local.dashboard_server import _Handler as DashboardHandler
from iotbridge_local.httpserver import LocalHTTPServer, LocalRequestHandler


class _Joined(LocalHTTPServer):
    daemon_threads = False  # server_close() waits for the request threads: their errors are all printed by then


@contextmanager
def _serving(handler: object) -> Iterator[int]:
    server = _Joined(("127.0.0.1", 0), handler)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _raising(exc: type[BaseException]) -> type[LocalRequestHandler]:
    class Handler(LocalRequestHandler):
        def do_GET(self) -> None:
            raise exc("from the handler")

    return Handler


def _get(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        while s.recv(65536):  # until the server closes the connection
            pass


@pytest.mark.parametrize("gone", [BrokenPipeError, ConnectionResetError, ConnectionAbortedError])
def test_a_client_that_hung_up_prints_no_traceback(gone: type[BaseException], capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a request whose answer fails because the client is gone
    with _serving(_raising(gone)) as port:
        # WHEN it is served
        _get(port)
    # THEN nothing is printed: the server goes on as for any finished request
    assert capsys.readouterr().err == ""


def test_other_errors_are_still_reported(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a handler with a bug WHEN a request reaches it
    with _serving(_raising(ValueError)) as port:
        _get(port)
    # THEN its traceback is printed, as before
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: from the handler" in err


def test_a_dashboard_reload_mid_download_prints_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the dashboard serving a file larger than the socket buffers
    (tmp_path / "big.js").write_bytes(b"x" * (32 << 20))
    with _serving(partial(DashboardHandler, directory=str(tmp_path))) as port:
        # WHEN the browser reads the first bytes and drops the connection (a reload: RST, not FIN)
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /big.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert s.recv(1024).startswith(b"HTTP/1.0 200")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    # THEN the server's failed write is not printed
    assert capsys.readouterr().err == ""
