"""A clean shutdown ends the TCP connection with FIN, never RST.

paho closes its socket as soon as DISCONNECT is written. Bytes the broker sent
meanwhile (a PUBACK, a delta) are then unread, and the kernel answers with RST;
Mosquitto drops a connection that reports a reset without reading the DISCONNECT
queued before it, and publishes the last will: a dashboard saw "lost" for an agent
that had stopped cleanly (about one stop in ten under a burst of signals).

A scripted broker makes the race certain: it sends only after the DISCONNECT.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iotbridge_contract.mqtt import Endpoint
from iotbridge_pi.agent import Agent
from iotbridge_pi.config import AgentConfig

from .conftest import wait_for

CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"
# A QoS 0 PUBLISH to a topic the agent does not act on: 2-byte topic length, topic, payload.
LATE_PUBLISH = b"\x30\x0d\x00\x05late/" + b"x" * 6


class ScriptedBroker:
    """Accepts one client, says CONNACK, reads until DISCONNECT, then keeps talking for a while."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.got_disconnect = False
        self.after_disconnect: list[str] = []  # what each send after the DISCONNECT met
        self.final_read: bytes | str = ""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(10)
            received = conn.recv(4096)  # CONNECT
            conn.sendall(CONNACK_ACCEPTED)
            while not received.endswith(DISCONNECT):
                chunk = conn.recv(4096)
                if not chunk:
                    return  # closed without a goodbye
                received += chunk
            self.got_disconnect = True
            for _ in range(3):
                time.sleep(0.05)  # after the client had every chance to close its socket
                try:
                    conn.sendall(LATE_PUBLISH)
                    self.after_disconnect.append("sent")
                except OSError as exc:
                    self.after_disconnect.append(type(exc).__name__)
            try:
                self.final_read = conn.recv(4096)  # b"": the client's FIN
            except OSError as exc:
                self.final_read = type(exc).__name__

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def scripted_broker() -> Iterator[ScriptedBroker]:
    broker = ScriptedBroker()
    yield broker
    broker.close()


@pytest.fixture
def agent_on(tmp_path: Path) -> Iterator[Callable[[int], tuple[Agent, threading.Thread]]]:
    started: list[tuple[Agent, threading.Thread]] = []

    def start(port: int) -> tuple[Agent, threading.Thread]:
        config = AgentConfig(
            thing="pi-bye",
            endpoint=Endpoint(host="127.0.0.1", port=port),
            state_dir=tmp_path / "state",
            hardware="simulated",
            telemetry_interval=60,
        )
        agent = Agent(config)
        thread = threading.Thread(target=agent.run_forever, daemon=True)
        thread.start()
        started.append((agent, thread))
        return agent, thread

    yield start
    for agent, thread in started:
        agent.stop()
        thread.join(10)


def test_the_broker_sees_the_connection_closed_not_reset_after_a_clean_shutdown(
    scripted_broker: ScriptedBroker, agent_on: Callable[[int], tuple[Agent, threading.Thread]]
) -> None:
    # GIVEN an agent connected to a broker that still sends after the agent's DISCONNECT
    agent, thread = agent_on(scripted_broker.port)
    wait_for(lambda: agent.connected, "the agent to connect")

    # WHEN the agent stops cleanly
    agent.stop()
    thread.join(10)
    scripted_broker.thread.join(10)

    # THEN the broker got the DISCONNECT; what it sent after that was read and dropped, not
    # answered with a reset; and the connection ended with the agent's FIN
    assert scripted_broker.got_disconnect
    assert scripted_broker.after_disconnect == ["sent", "sent", "sent"]
    assert scripted_broker.final_read == b""
