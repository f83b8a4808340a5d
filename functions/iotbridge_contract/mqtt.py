"""The one way our CPython code opens an MQTT connection (paho-mqtt 2.x).

Every client sets TCP_NODELAY: paho never does, and without it a QoS 1
request/reply on loopback costs ~88 ms of Nagle delay instead of ~0.5 ms.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """PEM paths for mutual TLS (AWS IoT: Amazon root CA, device cert and key)."""

    ca: str
    cert: str | None = None
    key: str | None = None
    alpn: str | None = None  # "x-amzn-mqtt-ca" for AWS IoT on port 443


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    host: str
    port: int
    tls: TlsFiles | None = None
    username: str | None = None
    password: str | None = None


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    # Plain and TLS sockets take the option directly; paho 2.x's WebSocket wrapper keeps its socket in `_socket`.
    raw = getattr(sock, "_socket", None) or sock
    with contextlib.suppress(OSError, AttributeError):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(
    client_id: str,
    endpoint: Endpoint,
    *,
    clean_session: bool = True,
    will: tuple[str, bytes, int] | None = None,
    transport: Literal["tcp", "websockets"] = "tcp",
) -> mqtt.Client:
    """A configured, not yet connected, MQTT 3.1.1 client."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        transport=transport,
    )
    client.on_socket_open = _nodelay
    # Unbounded in-flight/queue: a slow consumer must not make paho drop QoS 1.
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls is not None:
        ctx = ssl.create_default_context(cafile=endpoint.tls.ca)
        if endpoint.tls.cert:
            ctx.load_cert_chain(endpoint.tls.cert, endpoint.tls.key)
        if endpoint.tls.alpn:
            ctx.set_alpn_protocols([endpoint.tls.alpn])
        client.tls_set_context(ctx)
    if will is not None:
        topic, payload, qos = will
        client.will_set(topic, payload, qos=qos)
    return client


class Backoff:
    """Full-jitter exponential backoff: delay in [0, min(cap, base * 2**attempt)]."""

    def __init__(self, *, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.base, self.cap = base, cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        # The exponent is bounded: 0.5 * 2**1024 (the 1025th failed reconnect, ~4.4 h offline) is
        # an OverflowError, and the reconnect loop would stop backing off.
        delay = self._rng.uniform(0, min(self.cap, self.base * (2 ** min(self.attempt, 64))))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
