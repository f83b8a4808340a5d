"""The HTTP server class every local endpoint uses (API Gateway, IoT data plane, dashboard)."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LocalHTTPServer(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a burst of concurrent callers got
    # connection resets in the benchmarks. API Gateway and IoT Core never refuse a burst like that.
    request_queue_size = 128
    daemon_threads = True
