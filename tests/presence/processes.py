"""The local rule process and lifecycle-event helpers shared by the presence tests."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import boto3

from iotbridge_contract.topics import PRESENCE_PREFIX
from iotbridge_local.broker import Broker
from tests.security.clients import TestClient


def aws(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",  # type: ignore[call-overload]
                        aws_access_key_id="local", aws_secret_access_key="local")


class RulesProcess:
    def __init__(self, broker: Broker, iot_endpoint: str) -> None:
        ep = broker.service_endpoint()
        self.argv = [
            sys.executable, "-m", "iotbridge_local.rules", "--mqtt-port", str(ep.port),
            "--mqtt-username", str(ep.username), f"--mqtt-password={ep.password}",
            "--iot-endpoint", iot_endpoint, "--data-dir", str(broker.config.data_dir),
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, observer: TestClient) -> list[str]:
        """Start it; returns the event topics the observer saw until the process reported its own connection."""
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        own = f"{PRESENCE_PREFIX}connected/iotbridge.rules"
        seen: list[str] = []
        while not seen or seen[-1] != own:
            seen.append(observer.next_message(timeout=10)[0])
        return seen

    def kill(self) -> None:
        """SIGKILL: no chance to save its position."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def next_event(observer: TestClient, kind: str, client_id: str) -> dict[str, Any]:
    """The next `kind` event of `client_id`, skipping other clients' events."""
    wanted = f"{PRESENCE_PREFIX}{kind}/{client_id}"
    while True:
        topic, payload = observer.next_message(timeout=10)
        if topic == wanted:
            event: dict[str, Any] = json.loads(payload)
            return event
