"""Running one handler against its deadline.

The Pi agent runs handlers on a worker thread so the MQTT connection keeps
breathing while a slow handler works, and answers TIMED_OUT when the deadline
passes (the thread cannot be killed; its late result is dropped). The fleet
simulator's handlers are instant, so it runs them inline: one selector loop
drives thousands of devices and no thread per device is needed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotbridge_contract.commands import CommandState
from iotbridge_pi.handlers import Action
from iotbridge_pi.model import DeviceModel


@dataclass(frozen=True)
class JobResult:
    state: CommandState
    result: Any = None
    error: str | None = None


def _call(action: Action, device: DeviceModel, params: dict[str, Any]) -> JobResult:
    try:
        return JobResult(CommandState.SUCCEEDED, result=action.handler(device, params))
    except (Exception, SystemExit) as exc:  # a handler's sys.exit() ends the command, not the agent's thread
        return JobResult(CommandState.FAILED, error=f"{type(exc).__name__}: {exc}")


def _timed_out(action: Action) -> JobResult:
    return JobResult(CommandState.TIMED_OUT, error=f"{action.name} ran past its {action.deadline_s:g} s deadline")


class Job:
    """One running handler; `poll()` returns its result once there is one."""

    def __init__(self, action: Action, deadline: float) -> None:
        self.action = action
        self.deadline = deadline  # time.monotonic()
        self._result: JobResult | None = None
        self._lock = threading.Lock()
        self.returned = threading.Event()  # the handler itself returned (after TIMED_OUT it may still run)

    def _set(self, result: JobResult) -> None:
        with self._lock:
            if self._result is None:
                self._result = result

    def poll(self, now: float) -> JobResult | None:
        if now > self.deadline:
            self._set(_timed_out(self.action))
        with self._lock:
            return self._result


def start_inline(action: Action, device: DeviceModel, params: dict[str, Any]) -> Job:
    started = time.monotonic()
    job = Job(action, started + action.deadline_s)
    result = _call(action, device, params)
    job._set(_timed_out(action) if time.monotonic() > job.deadline else result)
    job.returned.set()
    return job


def threaded_starter(wake: Callable[[], None]) -> Callable[[Action, DeviceModel, dict[str, Any]], Job]:
    """A starter that runs each handler on its own daemon thread and calls `wake` when it is done."""

    def start(action: Action, device: DeviceModel, params: dict[str, Any]) -> Job:
        job = Job(action, time.monotonic() + action.deadline_s)

        def work() -> None:
            try:
                job._set(_call(action, device, params))
            except BaseException as exc:  # KeyboardInterrupt and the like: this command failed, the queue goes on
                job._set(JobResult(CommandState.FAILED, error=f"{type(exc).__name__}: {exc}"))
            finally:
                job.returned.set()
                wake()

        threading.Thread(target=work, name=f"handler-{action.name}", daemon=True).start()
        return job

    return start
