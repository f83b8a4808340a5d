"""What a connection that died leaves behind: nothing of it may be sent again after the reconnect.

The agent talks to the real broker (mutual TLS) through a TCP relay that can go
deaf one way, as a Wi-Fi link does before TCP notices, and then cut the link.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
import time
from pathlib import Path

from iotbridge_local.broker import Broker
from iotbridge_local.config import free_port
from iotbridge_pi.agent import Agent
from iotbridge_pi.config import AgentConfig

from .conftest import Shadows, wait_for


class Relay:
    """127.0.0.1:port -> the broker. `deaf`: what the device sends is dropped. `cut()`: every link closes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.deaf = False
        self._links: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                device, _ = self._server.accept()
            except OSError:
                return
            broker = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._links += [device, broker]
            threading.Thread(target=self._pipe, args=(device, broker, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(broker, device, False), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, from_device: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (from_device and self.deaf):
                    sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        links, self._links = self._links, []
        for sock in links:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._server.close()
        self.cut()


def test_a_state_update_lost_with_a_connection_does_not_wipe_a_value_set_while_the_device_was_away(
    broker: Broker, shadows: Shadows, tmp_path: Path
) -> None:
    # GIVEN an agent connected through a link that then goes deaf towards the broker
    relay = Relay(broker.device_endpoint("pi-1").port)
    endpoint = dataclasses.replace(broker.device_endpoint("pi-1"), port=relay.port)
    agent = Agent(AgentConfig(thing="pi-1", endpoint=endpoint, state_dir=tmp_path / "pi-1", hardware="simulated"))
    thread = threading.Thread(target=agent.run_forever, daemon=True)
    thread.start()
    try:
        wait_for(lambda: shadows.reported("pi-1").get("actions"), "the agent's first report")
        relay.deaf = True
        # WHEN a command turns the LED on: its state update (which nulls desired.led) never arrives
        shadows.add_command("pi-1", "on-1", "led", {"state": "on"})
        wait_for(lambda: agent.device.led == "on", "the command to run")
        time.sleep(1)
        # AND the user, hearing nothing, asks for the LED off (later than the command)
        shadows.update("pi-1", {"state": {"desired": {"led": "off"}}})
        # AND the link is cut, and the agent connects again
        relay.deaf = False
        relay.cut()
        wait_for(lambda: agent.session.connections >= 2 and agent.connected, "the reconnect", 60)
        # THEN the user's later value is applied, not wiped by the old update sent again
        wait_for(lambda: agent.device.led == "off", "the LED off, as the user asked last")
        time.sleep(1)
        assert agent.device.led == "off" and shadows.reported("pi-1")["led"] == "off"
        # AND the command's outcome is reported from the agent's log
        assert shadows.outcome("pi-1", "on-1")["state"] == "SUCCEEDED"
    finally:
        agent.stop()
        thread.join(15)
        relay.close()
