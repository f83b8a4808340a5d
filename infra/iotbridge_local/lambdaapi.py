"""The local Lambda Invoke API: what boto3's `lambda` client calls to invoke the stack's functions.

    POST /2015-03-31/functions/{name or ARN}/invocations
      X-Amz-Invocation-Type: Event            -> 202 at once; the event is queued and run later
      X-Amz-Invocation-Type: RequestResponse  -> 200 with the result (default)
      X-Amz-Invocation-Type: DryRun           -> 204

The functions run in execution environments (iotbridge_local.apigw.environments),
the same as the API's, with the same code and only endpoints and credentials
differing. Asynchronous events behave as Lambda documents them: a function error
or timeout is retried twice (AWS waits about 1 and then 2 minutes; here
`retry_delays_s`), and an event whose retries are spent is logged as dropped;
at most `max_environments` run at once (like reserved concurrency) and the others
wait in the queue. Errors are AWS's: 404 ResourceNotFoundException, 400
InvalidRequestContentException, 413 RequestTooLargeException. A request must be
SigV4-signed (any credentials: the signature is not checked); one from a web page
or to a non-loopback Host name gets 403 (see httpserver.SignedCallersOnly).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from iotbridge_local.apigw.environments import Environments, InvocationError
from iotbridge_local.httpserver import LocalHTTPServer, SignedCallersOnly, bound_handler

log = logging.getLogger("iotbridge.lambda")

ASYNC_PAYLOAD_LIMIT = 256 * 1024  # AWS: 256 KB for an asynchronous invocation
SYNC_PAYLOAD_LIMIT = 6 * 1024 * 1024
_PATH = re.compile(r"^/2015-03-31/functions/([^/?]+)/invocations(?:\?.*)?$")


@dataclass
class _Event:
    function: str
    payload: Any
    request_id: str
    attempt: int = 0
    received: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """What became of one asynchronous event (kept for tests and the benchmark)."""

    function: str
    request_id: str
    attempts: int
    ok: bool
    error: str | None = None


class LambdaService:
    def __init__(
        self, *, port: int, functions: dict[str, Environments], host: str = "127.0.0.1",
        retry_delays_s: tuple[float, ...] = (1.0, 2.0),
    ) -> None:  # fmt: skip
        self.functions = functions
        self.retry_delays_s = retry_delays_s
        self.outcomes: list[Outcome] = []
        self._queues: dict[str, queue.Queue[_Event | None]] = {name: queue.Queue() for name in functions}
        self._busy = 0  # events accepted and not finished (queued, running or waiting for a retry)
        self._cond = threading.Condition()
        self._timers: set[threading.Timer] = set()
        self._workers: list[threading.Thread] = []
        self._running = False
        self.httpd = LocalHTTPServer((host, port), bound_handler(_RequestHandler, service=self))

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._running = True
        threading.Thread(target=self.httpd.serve_forever, name="lambda-api", daemon=True).start()
        for name, environments in self.functions.items():
            for i in range(environments.max_environments):
                worker = threading.Thread(target=self._work, args=(name,), name=f"lambda-{name}-{i}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def stop(self) -> None:
        self._running = False
        self.httpd.shutdown()
        self.httpd.server_close()
        with self._cond:
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()
        for name, environments in self.functions.items():
            for _ in range(environments.max_environments):
                self._queues[name].put(None)
        for environments in self.functions.values():
            environments.close()  # a worker inside an invocation then sees it fail, and stops
        for worker in self._workers:
            worker.join(5)

    def wait_idle(self, timeout: float) -> bool:
        """Until no asynchronous event is queued, running or due for a retry; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    # -- asynchronous invocations ------------------------------------------------------------
    def enqueue(self, function: str, payload: Any) -> str:
        event = _Event(function, payload, str(uuid.uuid4()))
        with self._cond:
            self._busy += 1
        self._queues[function].put(event)
        return event.request_id

    def _work(self, name: str) -> None:
        environments = self.functions[name]
        while True:
            event = self._queues[name].get()
            if event is None:
                return
            if not self._running:  # stopping: no new environment may start
                self._finish(Outcome(name, event.request_id, event.attempt, ok=False, error="the service stopped"))
                continue
            try:
                environments.call(event.payload, wait_s=environments.timeout_s)
            except (InvocationError, TimeoutError, OSError) as exc:
                self._failed(event, "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__)
                continue
            self._finish(Outcome(name, event.request_id, event.attempt + 1, ok=True))

    def _failed(self, event: _Event, error: str) -> None:
        if event.attempt >= len(self.retry_delays_s) or not self._running:
            log.error("%s: event %s dropped after %d attempts (%s): %s", event.function, event.request_id,
                      event.attempt + 1, error, json.dumps(event.payload)[:500])  # fmt: skip
            self._finish(Outcome(event.function, event.request_id, event.attempt + 1, ok=False, error=error))
            return
        log.warning("%s: event %s failed (attempt %d: %s); retrying", event.function, event.request_id, event.attempt + 1, error)
        delay = self.retry_delays_s[event.attempt]
        event.attempt += 1

        def again() -> None:
            with self._cond:
                self._timers.discard(timer)
            self._queues[event.function].put(event)

        timer = threading.Timer(delay, again)
        timer.daemon = True
        with self._cond:
            self._timers.add(timer)
        timer.start()

    def _finish(self, outcome: Outcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._busy -= 1
            self._cond.notify_all()


class _RequestHandler(SignedCallersOnly):
    service: LambdaService
    server_version = "iotbridge-local-lambda"

    def _error(self, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"Type": "User", "message": message}).encode()
        self._send(status, body, {"Content-Type": "application/json", "x-amzn-ErrorType": error_type,
                                  "x-amzn-RequestId": str(uuid.uuid4())})  # fmt: skip

    def _body(self, limit: int) -> bytes | None:
        """The body, or None once refused: its length is checked before a byte is read (a client
        could declare 1 GB and hold a thread while it trickles in), and the connection is closed
        since where the body ends is then unknown or not worth reading to."""
        declared = self.headers.get("Content-Length")
        try:
            length = int(declared) if declared is not None else None
        except ValueError:
            length = -1
        if length is None or length < 0 or length > limit:
            self.close_connection = True
            if length is None:  # boto3 always sends one; a chunked body is not supported
                self._error(411, "InvalidRequestContentException", "Content-Length is required")
            elif length < 0:
                self._error(400, "InvalidRequestContentException", "Invalid Content-Length")
            else:
                self._error(413, "RequestTooLargeException", "Request must be smaller than the invocation payload limit")
            return None
        return self.rfile.read(length)

    def do_POST(self) -> None:
        kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        raw = self._body(ASYNC_PAYLOAD_LIMIT if kind == "Event" else SYNC_PAYLOAD_LIMIT)
        if raw is None:
            return
        match = _PATH.match(self.path)
        if not match:
            self._error(404, "UnknownOperationException", f"no such operation: POST {self.path}")
            return
        name = _function_name(unquote(match.group(1)))
        if name not in self.service.functions:
            self._error(404, "ResourceNotFoundException", f"Function not found: {name}")
            return
        if kind == "DryRun":
            self._send(204)
            return
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError:
            self._error(400, "InvalidRequestContentException", "Could not parse request body into json")
            return
        if kind == "Event":
            request_id = self.service.enqueue(name, payload)
            self._send(202, headers={"x-amzn-RequestId": request_id})
            return
        if kind != "RequestResponse":
            self._error(400, "InvalidParameterValueException", f"unknown invocation type {kind!r}")
            return
        environments = self.service.functions[name]
        headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST", "x-amzn-RequestId": str(uuid.uuid4())}
        try:
            result = environments.call(payload, wait_s=environments.timeout_s)
        except TimeoutError:
            body = {"errorType": "Sandbox.Timedout", "errorMessage": "Task timed out"}
            self._send(200, json.dumps(body).encode(), {**headers, "X-Amz-Function-Error": "Unhandled"})
            return
        except InvocationError as exc:
            body = {"errorType": "Unhandled", "errorMessage": str(exc)}
            self._send(200, json.dumps(body).encode(), {**headers, "X-Amz-Function-Error": "Unhandled"})
            return
        self._send(200, json.dumps(result).encode(), headers)


def _function_name(name_or_arn: str) -> str:
    """`name`, `name:qualifier`, or `arn:aws:lambda:region:account:function:name[:qualifier]` -> name."""
    if name_or_arn.startswith("arn:"):
        parts = name_or_arn.split(":")
        return parts[6] if len(parts) > 6 else name_or_arn
    return name_or_arn.split(":")[0]
