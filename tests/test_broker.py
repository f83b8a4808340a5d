"""The broker we generate keeps the promises the rest of the stack relies on."""

from __future__ import annotations

import queue
import time

from iotbridge_contract.mqtt import make_client
from iotbridge_local.broker import Broker


def _connected(broker: Broker, client_id: str, *, clean: bool = True):
    endpoint = broker.service_endpoint()
    client = make_client(client_id, endpoint, clean_session=clean)
    client.connect(endpoint.host, endpoint.port)
    client.loop_start()
    return client


def test_qos1_message_to_offline_persistent_session_survives_broker_restart(broker: Broker) -> None:
    # GIVEN a device with a persistent session subscribed at QoS 1, then offline
    got: queue.Queue[bytes] = queue.Queue()
    dev = _connected(broker, "dev-1", clean=False)
    time.sleep(0.2)
    dev.subscribe("cmd/dev-1", qos=1)
    time.sleep(0.2)
    dev.disconnect()
    dev.loop_stop()
    # WHEN a command is published for it and the broker restarts
    app = _connected(broker, "app")
    app.publish("cmd/dev-1", b"run-42", qos=1).wait_for_publish(5)
    app.disconnect()
    app.loop_stop()
    time.sleep(1.5)  # autosave_interval 1
    broker.stop()
    broker.start()
    # THEN the device gets the command when it comes back
    endpoint = broker.service_endpoint()
    dev2 = make_client("dev-1", endpoint, clean_session=False)
    dev2.on_message = lambda c, u, m: got.put(m.payload)
    dev2.connect(endpoint.host, endpoint.port)
    dev2.loop_start()
    try:
        assert got.get(timeout=5) == b"run-42"
    finally:
        dev2.disconnect()
        dev2.loop_stop()
