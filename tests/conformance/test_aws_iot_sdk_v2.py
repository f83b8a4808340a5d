"""AWS IoT Device SDK v2 for Python (awsiotsdk, on the AWS CRT) talks to our shadow service unchanged.

Mutual TLS with the thing's certificate, QoS 1, named shadows: what a device written
against AWS's current SDK does.
"""

from __future__ import annotations

import queue
from typing import Any

from iotbridge_local.broker import Broker
from iotbridge_local.iotcore import IotCore
from tests.conformance.conftest import WAIT, boto

THING = "sdk2-dev"


def test_sdk_v2_shadow_client_updates_gets_receives_delta_and_hears_a_delete(broker: Broker, iotcore: IotCore) -> None:
    from awscrt import mqtt
    from awsiot import iotshadow, mqtt_connection_builder

    # GIVEN a device connected with the SDK's mutual-TLS builder and its certificate
    paths = broker.device_cert_paths(THING)
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint="localhost", port=broker.config.mqtts_port, cert_filepath=str(paths.cert),
        pri_key_filepath=str(paths.key), ca_filepath=str(paths.ca), client_id=THING, clean_session=True,
        keep_alive_secs=30,
    )  # fmt: skip
    connection.connect().result(WAIT)
    shadow = iotshadow.IotShadowClient(connection)
    q1 = mqtt.QoS.AT_LEAST_ONCE
    got: queue.Queue[tuple[str, Any]] = queue.Queue()
    # The named shadow a device may write under the device policy (classic and `commands`).
    named = {"thing_name": THING, "shadow_name": "commands"}
    try:
        for subscribe, kind in (
            (shadow.subscribe_to_update_named_shadow_accepted, "update"),
            (shadow.subscribe_to_get_named_shadow_accepted, "get"),
            (shadow.subscribe_to_get_named_shadow_rejected, "get-rejected"),
            (shadow.subscribe_to_named_shadow_delta_updated_events, "delta"),
            (shadow.subscribe_to_delete_named_shadow_accepted, "delete"),
        ):
            request_type = {
                "update": iotshadow.UpdateNamedShadowSubscriptionRequest,
                "get": iotshadow.GetNamedShadowSubscriptionRequest,
                "get-rejected": iotshadow.GetNamedShadowSubscriptionRequest,
                "delta": iotshadow.NamedShadowDeltaUpdatedSubscriptionRequest,
                "delete": iotshadow.DeleteNamedShadowSubscriptionRequest,
            }[kind]
            future, _ = subscribe(request_type(**named), q1, lambda response, kind=kind: got.put((kind, response)))
            future.result(WAIT)

        # WHEN it sets desired state, THEN the update is accepted with a version and a delta follows
        desired = iotshadow.ShadowState(desired={"mode": "eco"})
        shadow.publish_update_named_shadow(
            iotshadow.UpdateNamedShadowRequest(state=desired, client_token="t1", **named), q1
        ).result(WAIT)
        events = dict(got.get(timeout=WAIT) for _ in range(2))
        assert events["update"].version == 1 and events["update"].client_token == "t1"
        assert events["delta"].state == {"mode": "eco"}

        # WHEN it reports the state and gets the document, THEN desired and reported agree and no delta is left
        reported = iotshadow.ShadowState(reported={"mode": "eco"})
        shadow.publish_update_named_shadow(iotshadow.UpdateNamedShadowRequest(state=reported, **named), q1).result(WAIT)
        assert got.get(timeout=WAIT)[0] == "update"
        shadow.publish_get_named_shadow(iotshadow.GetNamedShadowRequest(client_token="g1", **named), q1).result(WAIT)
        kind, document = got.get(timeout=WAIT)
        assert kind == "get" and document.version == 2 and document.client_token == "g1"
        assert document.state.desired == document.state.reported == {"mode": "eco"} and not document.state.delta

        # WHEN an app deletes the shadow (a device may not), THEN the SDK hears delete/accepted
        # and its next get is rejected with 404
        boto("iot-data", iotcore.url).delete_thing_shadow(thingName=THING, shadowName="commands")
        assert got.get(timeout=WAIT)[0] == "delete"
        shadow.publish_get_named_shadow(iotshadow.GetNamedShadowRequest(**named), q1).result(WAIT)
        kind, rejection = got.get(timeout=WAIT)
        assert kind == "get-rejected" and rejection.code == 404
    finally:
        connection.disconnect().result(WAIT)
