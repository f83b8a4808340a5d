"""AWS's own Python device SDK (AWSIoTPythonSDK) talks to our shadow service unchanged.

It connects over mutual TLS with the thing's certificate, as a device does on
AWS. Kept small: the SDK uses QoS 0 and sleeps 2 s on every subscribe.
"""

from __future__ import annotations

import json
import queue
from typing import Any

from iotbridge_local.broker import Broker
from iotbridge_local.iotcore import IotCore
from tests.conformance.conftest import WAIT, boto

THING = "sdk-dev"


def test_sdk_shadow_client_gets_updates_and_receives_delta_and_404_after_a_delete(broker: Broker, iotcore: IotCore) -> None:
    from AWSIoTPythonSDK.MQTTLib import AWSIoTMQTTShadowClient

    # GIVEN a device using the SDK's shadow client with its certificate
    tls = broker.device_endpoint(THING)
    assert tls.tls is not None
    client = AWSIoTMQTTShadowClient(THING)
    client.configureEndpoint(tls.host, tls.port)
    client.configureCredentials(tls.tls.ca, tls.tls.key, tls.tls.cert)
    client.disableMetricsCollection()
    client.configureConnectDisconnectTimeout(10)
    client.configureMQTTOperationTimeout(5)
    assert client.connect()
    replies: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    deltas: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_reply(payload: str, status: str, token: str) -> None:
        replies.put((status, json.loads(payload)))

    try:
        shadow = client.createShadowHandlerWithName(THING, True)
        shadow.shadowRegisterDeltaCallback(lambda payload, status, token: deltas.put(json.loads(payload)))
        # WHEN it reports its state
        shadow.shadowUpdate(json.dumps({"state": {"reported": {"led": "off"}}}), on_reply, 10)
        # THEN the SDK sees it accepted
        status, doc = replies.get(timeout=WAIT + 10)
        assert (status, doc["version"]) == ("accepted", 1)
        # WHEN an app sets desired state over HTTP
        boto("iot-data", iotcore.url).update_thing_shadow(thingName=THING, payload=b'{"state":{"desired":{"led":"on"}}}')
        # THEN the SDK's delta callback fires with the difference
        delta = deltas.get(timeout=WAIT)
        assert (delta["state"], delta["version"]) == ({"led": "on"}, 2)
        # WHEN it reads the shadow / THEN it gets the whole document with delta
        shadow.shadowGet(on_reply, 10)
        status, doc = replies.get(timeout=WAIT + 10)
        assert status == "accepted" and doc["state"]["delta"] == {"led": "on"} and doc["version"] == 2
        # WHEN an app deletes the shadow (the device policy lets a device update and get, not delete)
        boto("iot-data", iotcore.url).delete_thing_shadow(thingName=THING)
        # THEN the SDK's next get is rejected with 404
        shadow.shadowGet(on_reply, 10)
        status, doc = replies.get(timeout=WAIT + 10)
        assert (status, doc["code"]) == ("rejected", 404)
    finally:
        client.disconnect()
