"""Tiny functions for the local Lambda Invoke API tests: they leave a trace in a file, or fail on purpose."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def _trace(event: dict[str, Any]) -> int:
    """Append this attempt to the event's trace file; returns how many attempts it now holds."""
    path = Path(event["trace"])
    with path.open("a") as fh:
        fh.write(json.dumps({"pid": os.getpid(), "at": time.time()}) + "\n")
    return len(path.read_text().splitlines())


def record(event: dict[str, Any], context: Any) -> dict[str, Any]:
    attempts = _trace(event)
    return {"attempts": attempts, "remainingMs": context.get_remaining_time_in_millis(), "name": context.function_name,
            "arn": context.invoked_function_arn}  # fmt: skip


def flaky(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fails until it has been tried `fail` times."""
    attempts = _trace(event)
    if attempts <= int(event.get("fail", 0)):
        raise RuntimeError(f"failing on purpose, attempt {attempts}")
    return {"attempts": attempts}


def sleepy(event: dict[str, Any], context: Any) -> dict[str, Any]:
    _trace(event)
    time.sleep(float(event["s"]))
    return {}


def gated(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Runs until the test creates the gate file (at most 10 s)."""
    _trace(event)
    deadline = time.monotonic() + 10
    while not Path(event["gate"]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return {}


def noop(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return {}
