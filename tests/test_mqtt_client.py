"""Every MQTT client of ours sets TCP_NODELAY: plain, and over WebSockets too."""

from __future__ import annotations

import socket
import threading

from iotbridge_contract.mqtt import make_client
from iotbridge_local.broker import Broker


def _nodelay_after_connect(client, host: str, port: int) -> int:
    opened = threading.Event()
    seen: list[int] = []
    original = client.on_socket_open

    def on_open(c, userdata, sock) -> None:
        original(c, userdata, sock)
        raw = getattr(sock, "_socket", None) or sock
        seen.append(raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        opened.set()

    client.on_socket_open = on_open
    client.connect(host, port)
    client.loop_start()
    try:
        assert opened.wait(5)
    finally:
        client.disconnect()
        client.loop_stop()
    return seen[0]


def test_plain_client_sets_nodelay(broker: Broker) -> None:
    endpoint = broker.service_endpoint()
    assert _nodelay_after_connect(make_client("iotbridge.t1", endpoint), endpoint.host, endpoint.port) != 0


def test_websocket_client_sets_nodelay(broker: Broker) -> None:
    endpoint = broker.dashboard_endpoint()
    client = make_client("iotbridge.t2", endpoint, transport="websockets")
    assert _nodelay_after_connect(client, endpoint.host, endpoint.port) != 0
