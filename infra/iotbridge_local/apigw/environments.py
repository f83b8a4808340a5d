"""Lambda execution environments for a local function: one process each, one invocation at a time.

Like Lambda, an environment is created on demand when no idle one exists (a cold
start: the handler module is imported then), reused while warm, and destroyed
when an invocation runs past the function's Timeout. Powertools' resolver keeps
per-request state in module globals, so environments must not share a process.
Used by the local API Gateway (`invoke`: a proxy response) and by the local
Lambda Invoke API (`call`: whatever JSON the function returns).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

# What Lambda's Python runtime has that a developer's venv may not, or the reverse.
# awscrt is in the venv for the AWS IoT Device SDK tests, and botocore signs with it
# when it can import it; Lambda's runtime and the function package have no awscrt, so
# botocore signs in Python there. The CRT path costs ~0.5 ms more CPU per call here.
LAMBDA_RUNTIME_ENV = {"BOTO_DISABLE_CRT": "true"}


class InvocationError(Exception):
    """The function raised, crashed or timed out: API Gateway answers 502."""


@dataclass
class _Environment:
    process: subprocess.Popen[str]

    def send(self, event: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(event) + "\n")
        self.process.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next answer, or None if none came within `timeout`."""
        out = self.process.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], max(timeout, 0))
        if not ready:
            return None
        line = out.readline()
        if not line:
            raise InvocationError("the function's environment died")
        answer: dict[str, Any] = json.loads(line)
        return answer


class Environments:
    def __init__(
        self, *, handler: str, env: dict[str, str], timeout_s: float, log: Path | None = None, max_environments: int = 16,
        function_name: str = "function",
    ) -> None:
        self.handler, self.env, self.timeout_s, self.max_environments = handler, env, timeout_s, max_environments
        self.function_name = function_name  # what the function's context (and so its logs) call it
        self._log: IO[bytes] | int = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed in close()
        self._idle: list[_Environment] = []
        self._all: list[_Environment] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_environments)
        self._closed = False

    def _create(self) -> _Environment:
        if self._closed:
            raise InvocationError("the function's environments are closed")
        process = subprocess.Popen(
            [sys.executable, "-m", "iotbridge_local.apigw.worker", self.handler, str(self.timeout_s), self.function_name],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            env={**os.environ, **LAMBDA_RUNTIME_ENV, **self.env}, start_new_session=True,
        )  # fmt: skip
        environment = _Environment(process)
        with self._lock:
            self._all.append(environment)
            closed = self._closed
        if closed:  # closed while it started: close() may not have seen it
            self._destroy(environment)
            raise InvocationError("the function's environments are closed")
        try:
            ready = environment.receive(60)
        except InvocationError:
            ready = None
        if not ready or not ready.get("ready"):
            self._destroy(environment)
            raise InvocationError("the function failed to initialise; see the API log")
        return environment

    def prewarm(self, count: int) -> None:
        for _ in range(count):
            environment = self._create()
            with self._lock:
                self._idle.append(environment)

    def invoke(self, event: dict[str, Any], *, wait_s: float) -> dict[str, Any]:
        """One invocation by API Gateway: the function must answer a proxy response."""
        result = self.call(event, wait_s=wait_s)
        if not isinstance(result, dict) or "statusCode" not in result:
            raise InvocationError("the function returned no proxy response")
        return result

    def call(self, event: Any, *, wait_s: float) -> Any:
        """Run one invocation and return its result. TimeoutError after min(wait_s, Timeout); InvocationError if it failed."""
        with self._slots:
            with self._lock:
                environment = self._idle.pop() if self._idle else None
            if environment is None:
                environment = self._create()
            try:
                environment.send(event)
                answer = environment.receive(min(wait_s, self.timeout_s))
            except (InvocationError, OSError):
                self._destroy(environment)
                raise InvocationError("the function's environment died") from None
            if answer is None:
                self._destroy(environment)  # Lambda stops a timed-out environment; API Gateway gave up anyway
                raise TimeoutError
            with self._lock:
                self._idle.append(environment)
            if "ok" not in answer:
                raise InvocationError(str(answer.get("error", "the function failed")))
            return answer["ok"]

    def _destroy(self, environment: _Environment) -> None:
        environment.process.kill()
        environment.process.wait(5)
        for stream in (environment.process.stdin, environment.process.stdout):
            if stream:
                stream.close()
        with self._lock:
            if environment in self._all:
                self._all.remove(environment)
            if environment in self._idle:
                self._idle.remove(environment)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            environments = list(self._all)
        for environment in environments:
            self._destroy(environment)
        if not isinstance(self._log, int):
            self._log.close()
