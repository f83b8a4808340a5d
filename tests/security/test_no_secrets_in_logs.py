"""Keys, certificates' private keys and passwords never reach a log."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack
from tests.integration.http import call

pytestmark = pytest.mark.stack


def test_no_secret_appears_in_any_log(tmp_path: Path) -> None:
    # GIVEN a stack that did real work: commands, a wrong key, a device restart
    config = StackConfig.free(tmp_path / "stack", devices=1, api_key="k3y-" + "s" * 24)
    with LocalStack(config) as stack:
        stack.wait_devices_ready(timeout=30)
        assert call(config.api_url, "POST", "/devices/sim-1/commands", key=config.api_key, body={"action": "ping"})[0] == 200
        assert call(config.api_url, "GET", "/devices", key="wrong-" + config.api_key)[0] == 403
        stack.stop_device("sim-1")
        stack.start_device("sim-1")
        stack.wait_devices_ready(timeout=30)
        service_password = stack.broker.service_endpoint().password
        key_file = Path(stack.broker.device_cert_paths("sim-1").key)
        data_dir = stack.data_dir
    secrets = {
        "API key": config.api_key,
        "service password": service_password or "",
        "device private key": "".join(key_file.read_text().splitlines()[1:-1])[:40],
        "a private key block": "PRIVATE KEY-----",
    }
    # WHEN every log the stack wrote is read
    logs = [p for p in data_dir.rglob("*.log")]
    assert logs, "the stack wrote no logs to check"
    text = {p: p.read_text(errors="replace") for p in logs}
    # THEN none of the secrets is in any of them
    leaks = [(what, str(p)) for what, secret in secrets.items() if secret for p, t in text.items() if secret in t]
    assert leaks == []
