"""Fixtures for the CLI tests: the CLI as a real subprocess, and one local stack per module."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack

CLI = [sys.executable, "-m", "iotbridge_local.cli"]


def cli_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any iotbridge or AWS settings that would redirect the CLI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOTBRIDGE_", "AWS_"))}
    return env | extra


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env or cli_env(), timeout=timeout, check=False
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls; a helper for reaching a state, not an assertion about how fast it is reached."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout}s: {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.free(Path(tmp_path_factory.mktemp("stack")))
    with LocalStack(config) as running:
        running.wait_devices_ready(timeout=30)
        yield running
