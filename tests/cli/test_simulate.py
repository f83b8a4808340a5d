"""`iotbridge simulate`: a fleet in one process joins a running stack and answers through the API."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack
from tests.integration.http import call

pytestmark = pytest.mark.stack


def test_simulated_fleet_answers_commands_and_stops_cleanly(tmp_path: Path) -> None:
    # GIVEN a running stack with no devices of its own
    with LocalStack(StackConfig.free(tmp_path / "stack", devices=0)) as stack:
        api, key = stack.config.api_url, stack.config.api_key
        # WHEN a fleet of 3 is simulated against it
        fleet = subprocess.Popen(
            [sys.executable, "-m", "iotbridge_local.cli", "simulate", "--devices", "3", "--data-dir", str(stack.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            online: set[str] = set()
            while len(online) < 3 and time.monotonic() < deadline:
                _, _, listing = call(api, "GET", "/devices", key=key)
                online = {d["thing"] for d in listing["devices"] if d["connected"] and d["actions"]}
                time.sleep(0.2)
            # THEN every simulated device is listed online with its actions, and answers a command
            assert online == {"fleet-00001", "fleet-00002", "fleet-00003"}
            status, _, body = call(api, "POST", "/devices/fleet-00002/commands", key=key, body={"action": "ping"})
            assert status == 200 and body["state"] == "SUCCEEDED"
        finally:
            # AND Ctrl-C stops the fleet with exit code 0
            fleet.send_signal(signal.SIGINT)
            output, _ = fleet.communicate(timeout=30)
        assert fleet.returncode == 0, output
        assert "simulating 3 devices" in output


def _registered(stack: LocalStack) -> set[str]:
    pages = stack.boto3_client("iot").get_paginator("list_things").paginate()
    return {t["thingName"] for page in pages for t in page["things"]}


def _simulate_then_ctrl_c(stack: LocalStack, *flags: str) -> str:
    """`iotbridge simulate --devices 2 …` until both its things are registered, then Ctrl-C; its output."""
    fleet = subprocess.Popen(
        [sys.executable, "-m", "iotbridge_local.cli", "simulate", "--devices", "2", *flags,
         "--data-dir", str(stack.data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not {"fleet-00001", "fleet-00002"} <= _registered(stack) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        fleet.send_signal(signal.SIGINT)
        output, _ = fleet.communicate(timeout=60)
    assert fleet.returncode == 0, output
    return output


def test_simulate_removes_the_things_it_registered_unless_kept(tmp_path: Path) -> None:
    # GIVEN a running stack whose registry already has a device that a fleet would also be named
    with LocalStack(StackConfig.free(tmp_path / "stack", devices=0)) as stack:
        stack.boto3_client("iot").create_thing(thingName="fleet-00002")
        # WHEN a fleet of 2 is simulated and stopped with Ctrl-C
        output = _simulate_then_ctrl_c(stack)
        # THEN the thing it registered is gone from the registry, and the one that was there before stays
        # (1000 left behind filled the dashboard's list and every later `job --all`)
        assert _registered(stack) == {"fleet-00002"}, output
        assert "removing 1 simulated thing(s)" in output
        # WHEN a fleet is simulated with --keep THEN its things stay registered after Ctrl-C
        _simulate_then_ctrl_c(stack, "--keep")
        assert _registered(stack) == {"fleet-00001", "fleet-00002"}
