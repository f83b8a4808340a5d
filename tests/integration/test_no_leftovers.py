"""`iotbridge up` leaves nothing running: not after Ctrl-C, not even when it is killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotbridge_local.config import StackConfig

pytestmark = pytest.mark.stack


def _processes_using(data_dir: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(data_dir)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def _start_up(data_dir: Path, until: str = "Ctrl-C stops everything") -> subprocess.Popen[str]:
    free = StackConfig.free(data_dir)
    ports = [
        f"--{name.replace('_', '-')}={getattr(free, name)}"
        for name in ("mqtt_port", "mqtts_port", "ws_port", "iot_http_port", "api_port", "dashboard_port")
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "iotbridge_local.cli", "up", "--devices", "1", "--data-dir", str(data_dir), *ports],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    deadline = time.monotonic() + 90
    for line in process.stdout:
        if until in line:
            return process
        assert time.monotonic() < deadline, "iotbridge up did not come up"
    raise AssertionError(f"iotbridge up exited with {process.wait()}")


def _gone(data_dir: Path, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := _processes_using(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_ctrl_c_stops_every_part(tmp_path: Path) -> None:
    # GIVEN `iotbridge up` with its broker, services and a device running
    data_dir = tmp_path / "up"
    process = _start_up(data_dir)
    assert len(_processes_using(data_dir)) >= 4
    # WHEN the user presses Ctrl-C
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    # THEN it says so, exits 0, and no part of the stack is left
    assert process.returncode == 0 and "stopped." in output
    assert _gone(data_dir) == []


def test_a_killed_stack_leaves_no_orphans(tmp_path: Path) -> None:
    # GIVEN `iotbridge up` running
    data_dir = tmp_path / "up"
    process = _start_up(data_dir)
    # WHEN it is killed outright (a crash, or a CI runner timing out)
    process.kill()
    process.wait(10)
    # THEN its children go with it
    assert _gone(data_dir) == []


def test_ctrl_c_while_starting_stops_without_announcing_the_stack(tmp_path: Path) -> None:
    # GIVEN `iotbridge up` that has only begun starting
    data_dir = tmp_path / "up"
    process = _start_up(data_dir, until="starting the local stack")
    # WHEN the user presses Ctrl-C at once
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    # THEN it stops cleanly, never says the stack is up, and leaves nothing running
    assert process.returncode == 0 and "stopped." in output and "stack is up" not in output, output
    assert _gone(data_dir) == []
