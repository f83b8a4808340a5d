"""Stopping the stack and starting it again on the same data dir keeps what was there."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack
from tests.integration.http import call

pytestmark = pytest.mark.stack


def test_restart_keeps_shadows_outcomes_desired_state_and_versions(tmp_path: Path) -> None:
    config = StackConfig.free(tmp_path / "stack", devices=1)
    # GIVEN a stack where a command ran and changed the device
    with LocalStack(config) as stack:
        stack.wait_devices_ready(timeout=30)
        status, _, done = call(config.api_url, "POST", "/devices/sim-1/commands", key=config.api_key,
                               body={"action": "relay", "params": {"on": True}})  # fmt: skip
        assert status == 200 and done["state"] == "SUCCEEDED"
        status, _, _ = call(config.api_url, "PATCH", "/devices/sim-1/desired", key=config.api_key,
                            body={"state": {"interval": 42}, "waitMs": 10_000})  # fmt: skip
        assert status == 200
        _, _, before = call(config.api_url, "GET", "/devices/sim-1", key=config.api_key)
    # WHEN it is stopped and started again on the same data dir
    with LocalStack(config) as stack:
        stack.wait_devices_ready(timeout=30)
        deadline = time.monotonic() + 15
        while True:
            _, _, after = call(config.api_url, "GET", "/devices/sim-1", key=config.api_key)
            if after["reported"].get("interval") == 42 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        status, _, again = call(config.api_url, "GET", f"/devices/sim-1/commands/{done['id']}", key=config.api_key)
    # THEN the outcome is still there, desired state was kept and applied again by the restarted device
    # (which reports its real hardware: a restarted relay is off), and versions only grew
    assert status == 200 and again["state"] == "SUCCEEDED"
    assert after["shadow"]["state"]["desired"]["interval"] == 42 and after["reported"]["interval"] == 42
    assert after["shadow"]["version"] >= before["shadow"]["version"]
