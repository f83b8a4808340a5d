"""A synchronous test MQTT client over make_client: connect, subscribe and publish wait for the broker's answer."""

from __future__ import annotations

import queue
import threading
from typing import Any

from iotbridge_contract.mqtt import Endpoint, make_client

WAIT = 5.0


class Refused(Exception):
    """The broker answered CONNECT with a failure, or the connection broke first."""


class TestClient:
    __test__ = False  # not a pytest class

    def __init__(self, client_id: str, endpoint: Endpoint, *, keepalive: int = 60, clean_session: bool = True) -> None:
        self.client_id = client_id
        self.endpoint = endpoint
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._connack: queue.Queue[str | None] = queue.Queue()
        self._subacks: dict[int, list[Any]] = {}
        self._suback_event = threading.Condition()
        self.mqtt = make_client(client_id, endpoint, clean_session=clean_session)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_connect_fail = lambda c, u: self._connack.put("connect failed")
        self.mqtt.on_disconnect = lambda c, u, f, rc, p: self._connack.put(f"disconnected: {rc}")
        self.mqtt.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.mqtt.on_subscribe = self._on_subscribe
        self.keepalive = keepalive

    def connack_or_disconnect(self, timeout: float = WAIT) -> str | None:
        """The next connection outcome: None for an accepted CONNECT, else why the connection ended."""
        return self._connack.get(timeout=timeout)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack.put(None if not reason.is_failure else str(reason))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        with self._suback_event:
            self._subacks[mid] = reasons
            self._suback_event.notify_all()

    def connect(self) -> TestClient:
        try:
            self.mqtt.connect(self.endpoint.host, self.endpoint.port, keepalive=self.keepalive)
        except OSError as e:  # TLS handshake refused, connection reset
            raise Refused(str(e)) from e
        self.mqtt.loop_start()
        try:
            error = self._connack.get(timeout=WAIT)
        except queue.Empty:
            error = "no CONNACK"
        if error is not None:
            self.close()
            raise Refused(error)
        return self

    def subscribe(self, topic: str, qos: int = 1) -> bool:
        """True when the broker granted the subscription."""
        with self._suback_event:
            _, mid = self.mqtt.subscribe(topic, qos)
            assert mid is not None, "not connected"
            self._suback_event.wait_for(lambda: mid in self._subacks, timeout=WAIT)
            reasons = self._subacks.get(mid)
        assert reasons is not None, f"no SUBACK for {topic}"
        return not reasons[0].is_failure

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self.mqtt.publish(topic, payload, qos=qos).wait_for_publish(WAIT)

    def next_message(self, timeout: float = WAIT) -> tuple[str, bytes]:
        return self.messages.get(timeout=timeout)

    def disconnect(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()

    def close(self) -> None:
        self.mqtt.loop_stop()
        sock = self.mqtt.socket()
        if sock is not None:
            sock.close()

    def __enter__(self) -> TestClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
