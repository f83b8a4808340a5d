"""Serves dashboard/ and its config.json (API URL and key), as S3/CloudFront would on AWS."""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

from iotbridge_local.httpserver import LocalHTTPServer, LoopbackOnly

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboard"


class _Handler(LoopbackOnly, SimpleHTTPRequestHandler):  # LoopbackOnly: config.json has the API key
    disable_nagle_algorithm = True
    site_config: bytes = b"{}"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def end_headers(self) -> None:
        # The dashboard is a development build here: never serve a stale script.
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def do_GET(self) -> None:
        host = self.headers.get("Host", "")
        if host.split(":")[0] == "localhost":
            # The API lets one origin call it (CORS): http://127.0.0.1:<port>. Opened as
            # localhost, every call would be refused; send the browser to the allowed origin.
            self.send_response(308)
            port = self.connection.getsockname()[1]  # the port this request came in on
            self.send_header("Location", f"http://127.0.0.1:{port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.split("?")[0] == "/config.json":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.site_config)))
            self.end_headers()
            self.wfile.write(self.site_config)
            return
        super().do_GET()


class DashboardServer:
    def __init__(self, *, port: int, site_config: dict[str, Any], directory: Path = DASHBOARD_DIR) -> None:
        handler = type("Handler", (_Handler,), {"site_config": json.dumps(site_config).encode()})
        self.httpd = LocalHTTPServer(("127.0.0.1", port), partial(handler, directory=str(directory)))

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, name="dashboard", daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
