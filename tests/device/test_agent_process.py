"""The agent as a process: `python -m iotbridge_pi --config agent.toml`, signals, last will."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotbridge_contract.mqtt import make_client
from iotbridge_local.broker import Broker
from iotbridge_pi.session import status_topic

from .conftest import Shadows


def write_config(path: Path, thing: str, broker: Broker, state_dir: Path) -> Path:
    endpoint = broker.device_endpoint(thing)
    assert endpoint.tls is not None
    q = json.dumps  # a JSON string is a TOML basic string
    path.write_text(
        "\n".join(
            [
                f"thing = {q(thing)}",
                f"host = {q(endpoint.host)}",
                f"port = {endpoint.port}",
                f"state_dir = {q(str(state_dir))}",
                "telemetry_interval = 5",
                'hardware = "simulated"',
                "[tls]",
                f"ca = {q(endpoint.tls.ca)}",
                f"cert = {q(endpoint.tls.cert)}",
                f"key = {q(endpoint.tls.key)}",
                "",
            ]
        )
    )
    return path


@pytest.fixture
def agent_process(broker: Broker, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    config = write_config(tmp_path / "agent.toml", "pi-cli", broker, tmp_path / "state")
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:  # a file, not a pipe nobody drains
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotbridge_pi", "--config", str(config), "--log-level", "INFO"],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        print(log_path.read_text()[-4000:])  # shown when a test fails


class StatusWatcher:
    """Our service identity subscribed to a device's retained status topic."""

    def __init__(self, broker: Broker, thing: str) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = make_client("test-status-watcher", broker.service_endpoint())
        self.client.on_message = lambda c, u, m: self.messages.put(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(status_topic(thing), qos=1)
        endpoint = broker.service_endpoint()
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()

    def next_where(self, predicate: Any) -> dict[str, Any]:
        while True:
            message = self.messages.get(timeout=20)
            if predicate(message):
                return message

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def status(broker: Broker) -> Iterator[StatusWatcher]:
    watcher = StatusWatcher(broker, "pi-cli")
    yield watcher
    watcher.close()


def test_the_agent_process_runs_commands_and_says_goodbye_on_sigterm(
    agent_process: subprocess.Popen[bytes], shadows: Shadows, status: StatusWatcher
) -> None:
    # GIVEN the agent started from its config file
    assert status.next_where(lambda m: m["connected"])["thing"] == "pi-cli"

    # WHEN a command is queued for it
    shadows.add_command("pi-cli", "cli-1", "relay", {"on": True})

    # THEN it answers through the shadow
    assert shadows.outcome("pi-cli", "cli-1")["result"] == {"relay": True}

    # AND WHEN it gets SIGTERM, it exits 0 and leaves a retained "shutdown" status
    agent_process.send_signal(signal.SIGTERM)
    assert agent_process.wait(15) == 0
    assert status.next_where(lambda m: not m["connected"])["reason"] == "shutdown"


def test_a_burst_of_signals_stops_the_agent_all_the_same(
    agent_process: subprocess.Popen[bytes], status: StatusWatcher
) -> None:
    # GIVEN a connected agent process
    status.next_where(lambda m: m["connected"])

    # WHEN signals come in a burst (Ctrl-C pressed again and again, SIGTERM from a dying parent on top):
    # a handler that took a lock hung when the next signal re-entered it
    for _ in range(200):
        agent_process.send_signal(signal.SIGINT)
        agent_process.send_signal(signal.SIGTERM)

    # THEN it still exits cleanly and says goodbye
    assert agent_process.wait(15) == 0
    assert status.next_where(lambda m: not m["connected"])["reason"] == "shutdown"


def test_a_killed_agent_is_reported_lost_by_its_last_will(
    agent_process: subprocess.Popen[bytes], broker: Broker, status: StatusWatcher
) -> None:
    # GIVEN a connected agent process
    status.next_where(lambda m: m["connected"])

    # WHEN it dies without a goodbye
    agent_process.send_signal(signal.SIGKILL)
    agent_process.wait(10)

    # THEN the broker publishes its last will: offline, reason "lost"
    assert status.next_where(lambda m: not m["connected"])["reason"] == "lost"


def test_a_bad_config_file_is_refused_with_a_message(tmp_path: Path) -> None:
    # GIVEN a config without a host
    config = tmp_path / "agent.toml"
    config.write_text('thing = "pi-x"\n')

    # WHEN the agent starts with it
    result = subprocess.run(
        [sys.executable, "-m", "iotbridge_pi", "--config", str(config)], capture_output=True, text=True, timeout=30
    )

    # THEN it exits 2 naming the problem
    assert result.returncode == 2
    assert "host" in result.stderr
