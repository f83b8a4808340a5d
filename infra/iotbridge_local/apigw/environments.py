"""Lambda execution environments for the local API: one process each, one request at a time.

Like Lambda, an environment is created on demand when no idle one exists (a cold
start: the handler module is imported then), reused while warm, and destroyed
when an invocation runs past the function's Timeout. Powertools' resolver keeps
per-request state in module globals, so environments must not share a process.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from iotbridge_local.apigw.event import LambdaContext


class InvocationError(Exception):
    """The function raised, crashed or timed out: API Gateway answers 502."""


def _serve(conn: Connection, handler_path: str, env: dict[str, str], timeout_s: float) -> None:
    os.environ.update(env)
    module_name, _, attr = handler_path.rpartition(".")
    handler = getattr(importlib.import_module(module_name), attr)
    conn.send(("ready", None))
    while True:
        try:
            event = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", handler(event, LambdaContext(timeout_s=timeout_s))))
        except Exception:
            traceback.print_exc()
            conn.send(("error", "unhandled exception in the function"))


@dataclass
class _Environment:
    process: multiprocessing.process.BaseProcess
    conn: Connection


class Environments:
    def __init__(self, *, handler: str, env: dict[str, str], timeout_s: float, max_environments: int = 16) -> None:
        self.handler, self.env, self.timeout_s = handler, env, timeout_s
        self._ctx = multiprocessing.get_context("spawn")
        self._idle: list[_Environment] = []
        self._all: list[_Environment] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_environments)

    def _create(self) -> _Environment:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_serve, args=(child, self.handler, self.env, self.timeout_s), daemon=True, name="lambda-env"
        )
        process.start()
        child.close()
        if not parent.poll(60) or parent.recv()[0] != "ready":
            process.kill()
            raise InvocationError("the function failed to initialise")
        environment = _Environment(process, parent)
        with self._lock:
            self._all.append(environment)
        return environment

    def prewarm(self, count: int) -> None:
        for _ in range(count):
            environment = self._create()
            with self._lock:
                self._idle.append(environment)

    def invoke(self, event: dict[str, Any], *, wait_s: float) -> dict[str, Any]:
        """Run one invocation; waits at most `wait_s` for it (API Gateway's limit)."""
        with self._slots:
            with self._lock:
                environment = self._idle.pop() if self._idle else None
            if environment is None:
                environment = self._create()
            environment.conn.send(event)
            if not environment.conn.poll(min(wait_s, self.timeout_s)):
                self._destroy(environment)  # Lambda stops a timed-out environment; API Gateway gave up anyway
                raise TimeoutError
            try:
                status, result = environment.conn.recv()
            except EOFError:
                self._destroy(environment)
                raise InvocationError("the function's environment died") from None
            with self._lock:
                self._idle.append(environment)
            if status != "ok" or not isinstance(result, dict) or "statusCode" not in result:
                raise InvocationError(str(result))
            return result

    def _destroy(self, environment: _Environment) -> None:
        environment.process.kill()
        environment.process.join(5)
        environment.conn.close()
        with self._lock:
            if environment in self._all:
                self._all.remove(environment)

    def close(self) -> None:
        with self._lock:
            environments, self._all, self._idle = list(self._all), [], []
        for environment in environments:
            environment.conn.close()
            environment.process.terminate()
        for environment in environments:
            environment.process.join(5)
            if environment.process.is_alive():
                environment.process.kill()
