"""The broker we generate keeps the promises the rest of the stack relies on."""

from __future__ import annotations

import queue
import time

from iotbridge_contract.mqtt import Endpoint, make_client
from iotbridge_local.broker import Broker


def _connected(client_id: str, port: int, *, clean: bool = True):
    client = make_client(client_id, Endpoint(host="127.0.0.1", port=port), clean_session=clean)
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def test_qos1_message_to_offline_persistent_session_survives_broker_restart(broker: Broker) -> None:
    # GIVEN a device with a persistent session subscribed at QoS 1, then offline
    port = broker.config.mqtt_port
    got: queue.Queue[bytes] = queue.Queue()
    dev = _connected("dev-1", port, clean=False)
    time.sleep(0.2)
    dev.subscribe("cmd/dev-1", qos=1)
    time.sleep(0.2)
    dev.disconnect()
    dev.loop_stop()
    # WHEN a command is published for it and the broker restarts
    app = _connected("app", port)
    app.publish("cmd/dev-1", b"run-42", qos=1).wait_for_publish(5)
    app.disconnect()
    app.loop_stop()
    time.sleep(1.5)  # autosave_interval 1
    broker.stop()
    broker.start()
    # THEN the device gets the command when it comes back
    dev2 = make_client("dev-1", Endpoint(host="127.0.0.1", port=port), clean_session=False)
    dev2.on_message = lambda c, u, m: got.put(m.payload)
    dev2.connect("127.0.0.1", port)
    dev2.loop_start()
    try:
        assert got.get(timeout=5) == b"run-42"
    finally:
        dev2.disconnect()
        dev2.loop_stop()
