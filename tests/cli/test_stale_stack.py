"""A local stack that died without a clean stop (terminal closed, kill -9) leaves its stack.json behind: the
CLI says the stack is not running and how to start it, instead of printing old endpoints or a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from iotbridge_local.cli import _only_stack_in
from iotbridge_local.config import free_port
from tests.cli.conftest import run_cli


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # reaped: its pid names no process now
    return process.pid


def _stack_json(data_dir: Path, pid: int) -> None:
    """What `iotbridge up` writes, pointing at ports where nothing listens (the stack is gone)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    mqtt, mqtts, iot, api = (free_port() for _ in range(4))
    state = {"pid": pid, "api": f"http://127.0.0.1:{api}", "apiKey": "local-dev-key", "dashboard": "http://127.0.0.1:8080",
             "mqtts": mqtts, "dataDir": str(data_dir), "tls": True, "iot": f"http://127.0.0.1:{iot}", "mqtt": mqtt,
             "things": ["sim-1", "sim-2"], "lambda": "http://127.0.0.1:9010"}  # fmt: skip
    (data_dir / "stack.json").write_text(json.dumps(state))


def test_status_of_a_killed_stack_says_it_is_not_running(tmp_path: Path) -> None:
    # GIVEN the stack.json of an `iotbridge up` that was killed: its process is gone
    _stack_json(tmp_path, _dead_pid())
    # WHEN a person asks for its status
    done = run_cli("status", "--data-dir", str(tmp_path))
    # THEN it says the stack is not running and how to start it, with a non-zero exit, not the old endpoints
    assert done.returncode == 1, done.stdout
    assert "not running" in done.stdout and f"iotbridge up --data-dir {tmp_path}" in done.stdout
    assert "apiKey" not in done.stdout


def test_status_tells_a_running_stack_from_a_dead_one_by_its_lock(tmp_path: Path) -> None:
    # GIVEN stack.json naming a live process (its pid could have been given to another process since)
    _stack_json(tmp_path, os.getpid())
    # WHEN that process holds the data dir's lock, as a running `iotbridge up` does
    with _only_stack_in(tmp_path):
        running = run_cli("status", "--data-dir", str(tmp_path))
    # THEN status prints the stack's endpoints
    assert running.returncode == 0, running.stdout
    assert json.loads(running.stdout)["pid"] == os.getpid()
    # WHEN the lock is free again (the kernel frees it when `up` dies, however it died)
    stale = run_cli("status", "--data-dir", str(tmp_path))
    # THEN the stack is reported not running
    assert stale.returncode == 1 and "not running" in stale.stdout, stale.stdout


def test_an_unreachable_local_stack_says_it_may_not_be_running(tmp_path: Path) -> None:
    # GIVEN a stack.json left by a killed stack, found because no API URL is given
    _stack_json(tmp_path, _dead_pid())
    # WHEN devices are listed
    done = run_cli("devices", "--data-dir", str(tmp_path))
    # THEN exit 6, and the one line says the stack may not be running and how to start it
    assert done.returncode == 6, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "cannot reach the API" in line
    assert "the local stack may not be running" in line and f"iotbridge up --data-dir {tmp_path}" in line


def test_simulate_against_a_killed_stack_says_it_is_not_running(tmp_path: Path) -> None:
    # GIVEN a stack.json left by a killed stack
    _stack_json(tmp_path, _dead_pid())
    # WHEN a fleet is simulated against it
    done = run_cli("simulate", "--devices", "2", "--data-dir", str(tmp_path))
    # THEN one line says the stack is not running and how to start it (exit 2), no traceback
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "not running" in line and f"iotbridge up --data-dir {tmp_path}" in line


def test_simulate_against_an_unreachable_stack_is_one_line(tmp_path: Path) -> None:
    # GIVEN a stack.json whose process is alive (no lock to check) but whose endpoints do not answer
    _stack_json(tmp_path, os.getpid())
    # WHEN a fleet is simulated against it
    done = run_cli("simulate", "--devices", "2", "--data-dir", str(tmp_path))
    # THEN one line says the stack cannot be reached (exit 6), instead of botocore's traceback
    assert done.returncode == 6, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "cannot reach the local stack" in line and "Traceback" not in done.stderr
