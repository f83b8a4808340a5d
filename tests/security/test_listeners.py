"""What the broker exposes: loopback only, and a read-only identity for the browser over WebSockets."""

from __future__ import annotations

import queue
import shutil
import socket
import subprocess
from typing import Any

import paho.mqtt.client as paho
import pytest

from iotbridge_contract import topics
from iotbridge_contract.mqtt import Endpoint
from iotbridge_local.broker import Broker
from tests.security.clients import TestClient


def _listening_addresses(port: int) -> set[str]:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], check=True, capture_output=True, text=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs iproute2's ss")
def test_every_listener_is_on_loopback_only(broker: Broker) -> None:
    # GIVEN a running broker
    c = broker.config
    # WHEN we look at what listens on its three ports
    # THEN each is bound to 127.0.0.1 and nothing else (no IPv6 wildcard from the WebSockets listener)
    for port in (c.mqtt_port, c.mqtts_port, c.ws_port):
        assert _listening_addresses(port) == {"127.0.0.1"}, port


class WebSocketClient:
    """paho over WebSockets (the browser's transport); make_client only builds TCP/TLS clients."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.mqtt = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dashboard-test", transport="websockets")
        self.mqtt.on_socket_open = self._nodelay
        self.mqtt.username_pw_set(endpoint.username, endpoint.password)
        self.mqtt.on_connect = lambda c, u, f, rc, p: self.events.put(("connack", rc))
        self.mqtt.on_disconnect = lambda c, u, f, rc, p: self.events.put(("disconnect", rc))
        self.mqtt.on_subscribe = lambda c, u, mid, rcs, p: self.events.put(("suback", rcs))
        self.mqtt.on_message = lambda c, u, m: self.events.put(("message", m.topic))

    @staticmethod
    def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
        raw = getattr(sock, "_socket", sock)  # paho's WebSocket wrapper keeps the TCP socket here
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def next(self, kind: str) -> Any:
        while True:
            got, value = self.events.get(timeout=5)
            if got == kind:
                return value

    def __enter__(self) -> WebSocketClient:
        self.mqtt.connect(self.endpoint.host, self.endpoint.port)
        self.mqtt.loop_start()
        assert not self.next("connack").is_failure
        return self

    def __exit__(self, *exc: object) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()


def test_dashboard_reads_shadows_and_presence_over_websockets(broker: Broker) -> None:
    # GIVEN the dashboard identity connected over WebSockets, subscribed to shadows and presence
    with WebSocketClient(broker.dashboard_endpoint()) as dash, TestClient("svc", broker.service_endpoint()) as svc:
        dash.mqtt.subscribe([("$aws/things/+/shadow/#", 1), (f"{topics.PRESENCE_PREFIX}+/+", 1)])
        dash.next("suback")
        # WHEN a shadow document and a lifecycle event are published
        svc.publish(topics.shadow_topic("lamp-1", "update", "documents"), b"{}")
        svc.publish(topics.presence_topic("connected", "lamp-1"), b"{}")
        # THEN the dashboard receives both
        assert dash.next("message") == topics.shadow_topic("lamp-1", "update", "documents")
        assert dash.next("message") == topics.presence_topic("connected", "lamp-1")


def test_dashboard_cannot_command_a_device(broker: Broker) -> None:
    # GIVEN the service listening to shadow requests, and the dashboard identity
    with TestClient("svc", broker.service_endpoint()) as svc, WebSocketClient(broker.dashboard_endpoint()) as dash:
        svc.subscribe("$aws/things/+/shadow/#")
        # WHEN the dashboard publishes a shadow update (only the API, with its key, may change a device)
        dash.mqtt.publish(topics.shadow_topic("lamp-1", "update", shadow="commands"), b'{"state":{"desired":{}}}', qos=0)
        # THEN the broker drops it and disconnects the dashboard
        dash.next("disconnect")
        sentinel = topics.shadow_topic("lamp-1", "get")
        svc.publish(sentinel, b"")
        assert svc.next_message()[0] == sentinel


def test_wrong_dashboard_password_is_refused(broker: Broker) -> None:
    # GIVEN the dashboard identity with a wrong password
    good = broker.dashboard_endpoint()
    bad = Endpoint(host=good.host, port=good.port, username=good.username, password="guess")
    client = WebSocketClient(bad)
    # WHEN it connects
    client.mqtt.connect(bad.host, bad.port)
    client.mqtt.loop_start()
    try:
        # THEN the broker refuses it
        assert client.next("connack").is_failure
    finally:
        client.mqtt.loop_stop()
