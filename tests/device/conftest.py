"""Device tests against the real parts: Mosquitto (mTLS), the shadow service process, boto3 iot-data."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from iotbridge_contract.commands import COMMANDS_SHADOW, pending_entry
from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig
from iotbridge_pi.agent import Agent
from iotbridge_pi.config import AgentConfig
from iotbridge_pi.handlers import Registry

WAIT_S = 20.0  # an upper bound for "eventually", never a performance claim


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def iotcore(broker: Broker, stack_config: StackConfig, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """The shadow service as its own process, as the stack runs it."""
    service = broker.service_endpoint()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "iotbridge_local.iotcore",
            "--data-dir", str(tmp_path / "iotcore"),
            "--mqtt-port", str(stack_config.mqtt_port),
            "--http-port", str(stack_config.iot_http_port),
            f"--mqtt-username={service.username}", f"--mqtt-password={service.password}",  # a password may start with "-"
            "--log-level", "WARNING",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "iotcore ready" in line, f"iotcore did not start: {line!r}"
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


class Shadows:
    """What the API does to a device's shadows, through boto3's iot-data client."""

    def __init__(self, config: StackConfig) -> None:
        self.iot = boto3.client(
            "iot-data",
            endpoint_url=config.iot_endpoint,
            region_name=config.region,
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def get(self, thing: str, shadow: str | None = None) -> dict[str, Any]:
        kwargs = {"shadowName": shadow} if shadow else {}
        try:
            return json.loads(self.iot.get_thing_shadow(thingName=thing, **kwargs)["payload"].read())
        except self.iot.exceptions.ResourceNotFoundException:
            return {}

    def update(self, thing: str, document: dict[str, Any], shadow: str | None = None) -> dict[str, Any]:
        kwargs = {"shadowName": shadow} if shadow else {}
        reply = self.iot.update_thing_shadow(thingName=thing, payload=json.dumps(document).encode(), **kwargs)
        return json.loads(reply["payload"].read())

    def add_command(
        self, thing: str, command_id: str, action: str, params: dict[str, Any] | None = None, *, ttl_ms: int = 60_000
    ) -> None:
        now = int(time.time() * 1000)
        entry = pending_entry(action, params or {}, issued_at=now, expires_at=now + ttl_ms)
        self.update(thing, {"state": {"desired": {command_id: entry}}, "clientToken": command_id}, COMMANDS_SHADOW)

    def commands(self, thing: str) -> dict[str, Any]:
        state: dict[str, Any] = self.get(thing, COMMANDS_SHADOW).get("state", {})
        return state

    def outcome(self, thing: str, command_id: str, *, timeout: float = WAIT_S) -> dict[str, Any]:
        outcome: dict[str, Any] = wait_for(
            lambda: self.commands(thing).get("reported", {}).get(command_id), f"outcome of {command_id}", timeout
        )
        return outcome

    def reported(self, thing: str) -> dict[str, Any]:
        reported: dict[str, Any] = self.get(thing).get("state", {}).get("reported", {})
        return reported


@pytest.fixture
def shadows(iotcore: subprocess.Popen[str], stack_config: StackConfig) -> Shadows:
    return Shadows(stack_config)


@dataclass
class RunningAgent:
    agent: Agent
    thread: threading.Thread

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(15)
        assert not self.thread.is_alive(), "the agent did not stop"


@pytest.fixture
def start_agent(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """Start an in-process agent for a thing (mTLS with its own certificate); all are stopped at the end."""
    running: list[RunningAgent] = []

    def start(thing: str = "pi-1", *, registry: Registry | None = None, wait_connected: bool = True) -> RunningAgent:
        config = AgentConfig(
            thing=thing,
            endpoint=broker.device_endpoint(thing),
            state_dir=tmp_path / "devices" / thing,
            hardware="simulated",
            telemetry_interval=60,
        )
        agent = Agent(config, registry=registry)
        thread = threading.Thread(target=agent.run_forever, name=f"agent-{thing}", daemon=True)
        thread.start()
        handle = RunningAgent(agent, thread)
        running.append(handle)
        if wait_connected:
            wait_for(lambda: agent.connected, f"{thing} to connect")
        return handle

    yield start
    for handle in running:
        if handle.thread.is_alive():
            handle.stop()
