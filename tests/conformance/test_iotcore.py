"""The iotcore process as clients see it: MQTT topics, boto3's typed errors, restarts."""

from __future__ import annotations

import json
import queue
import signal
import socket
import threading
import time
import urllib.request
from typing import Any

import pytest
from botocore.exceptions import ClientError

from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig
from iotbridge_local.iotcore import IotCore
from tests.conformance.conftest import WAIT, IotCoreProcess, Watcher, boto

# What boto3 sends, for the raw requests below: the data plane wants a SigV4 Authorization header (it does not check it).
SIGNED = "Authorization: AWS4-HMAC-SHA256 Credential=local/us-east-1/iotdata/aws4_request, SignedHeaders=host, Signature=0"


def test_http_update_publishes_accepted_documents_and_delta_for_devices(iotcore: IotCore, watcher: Watcher) -> None:
    # GIVEN a device listening on its shadow's reply topics, having reported led=off
    base = "$aws/things/dev1/shadow"
    watcher.watch(f"{base}/update/accepted", f"{base}/update/delta", f"{base}/update/documents")
    data = boto("iot-data", iotcore.url)
    data.update_thing_shadow(thingName="dev1", payload=b'{"state":{"reported":{"led":"off","t":20}}}')
    assert watcher.until(f"{base}/update/accepted")["version"] == 1
    watcher.drain()
    # WHEN an app sets desired led=on over HTTP
    data.update_thing_shadow(thingName="dev1", payload=b'{"state":{"desired":{"led":"on"}},"clientToken":"app-1"}')
    # THEN the device gets accepted, documents and a delta with AWS's fields
    accepted = watcher.until(f"{base}/update/accepted")
    documents = watcher.until(f"{base}/update/documents")
    delta = watcher.until(f"{base}/update/delta")
    assert accepted["state"] == {"desired": {"led": "on"}} and accepted["clientToken"] == "app-1"
    assert documents["previous"]["version"] == 1 and documents["current"]["version"] == 2
    assert documents["current"]["state"] == {"desired": {"led": "on"}, "reported": {"led": "off", "t": 20}}
    assert delta == {
        "state": {"led": "on"},
        "metadata": {"led": {"timestamp": delta["timestamp"]}},
        "version": 2,
        "timestamp": delta["timestamp"],
        "clientToken": "app-1",
    }


def test_reported_update_that_leaves_no_delta_publishes_no_delta(iotcore: IotCore, watcher: Watcher) -> None:
    # GIVEN a pending desired led=on
    base = "$aws/things/dev1/shadow"
    watcher.watch(f"{base}/update/accepted", f"{base}/update/delta")
    watcher.publish(f"{base}/update", b'{"state":{"desired":{"led":"on"}}}')
    watcher.until(f"{base}/update/delta")
    # WHEN the device reports led=on and clears desired in one update
    watcher.publish(f"{base}/update", b'{"state":{"reported":{"led":"on"},"desired":null}}')
    assert watcher.until(f"{base}/update/accepted")["version"] == 2
    # THEN no delta follows: a marker update on another thing arrives first
    watcher.watch("$aws/things/other/shadow/update/accepted")
    watcher.publish("$aws/things/other/shadow/update", b'{"state":{}}')
    topic, _ = watcher.next()
    assert topic == "$aws/things/other/shadow/update/accepted"


def test_publishing_to_a_shadow_topic_over_http_is_a_shadow_request(iotcore: IotCore, watcher: Watcher) -> None:
    # GIVEN a client listening on accepted
    watcher.watch("$aws/things/dev2/shadow/name/cfg/update/accepted", "plain/topic")
    data = boto("iot-data", iotcore.url)
    # WHEN it publishes a request document through iot-data Publish, as on AWS
    data.publish(topic="$aws/things/dev2/shadow/name/cfg/update", qos=1, payload=b'{"state":{"reported":{"v":1}}}')
    # THEN the shadow service handles it and answers on MQTT
    assert watcher.until("$aws/things/dev2/shadow/name/cfg/update/accepted")["version"] == 1
    assert json.loads(data.get_thing_shadow(thingName="dev2", shadowName="cfg")["payload"].read())["version"] == 1
    # AND an ordinary topic is simply published
    data.publish(topic="plain/topic", qos=1, payload=b'{"hello":1}')
    assert watcher.until("plain/topic") == {"hello": 1}


def test_a_retained_publish_to_a_reserved_topic_is_refused_and_reaches_no_one(iotcore: IotCore, watcher: Watcher) -> None:
    # GIVEN the data plane
    data = boto("iot-data", iotcore.url)
    fake = b'{"state":{"x":1},"version":99}'
    # WHEN a caller publishes a retained message to a $aws topic (a fake delta a persistent broker would
    # replay to every device that subscribes later)
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.publish(topic="$aws/things/t1/shadow/update/delta", qos=1, retain=True, payload=fake)
    # THEN it is refused, as AWS refuses retain on reserved topics: a client subscribing afterwards gets nothing
    watcher.watch("$aws/things/t1/shadow/update/delta", "plain/after")
    data.publish(topic="plain/after", qos=1, payload=b'{"marker":1}')
    topic, _ = watcher.next()
    assert topic == "plain/after"
    # AND retain stays allowed on an ordinary topic
    data.publish(topic="plain/kept", qos=1, retain=True, payload=b'{"kept":1}')


def test_bad_names_are_400_and_touch_no_topic(iotcore: IotCore, watcher: Watcher) -> None:
    # GIVEN a watcher on every shadow topic
    watcher.watch("$aws/things/+/shadow/#", "$aws/things/+/shadow/name/+/#")
    data = boto("iot-data", iotcore.url)
    iot = boto("iot", iotcore.url)
    # WHEN names outside AWS's alphabet are used / THEN boto3 raises InvalidRequestException
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.update_thing_shadow(thingName="bad$thing", payload=b'{"state":{}}')
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.get_thing_shadow(thingName="dev1", shadowName="a/b")
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.publish(topic="$aws/things/x y/shadow/update", qos=1, payload=b'{"state":{}}')
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.publish(topic="cmd/+/x", qos=1, payload=b"{}")
    with pytest.raises(iot.exceptions.InvalidRequestException):
        iot.describe_thing(thingName="x" * 129)
    # AND nothing was published: the next message is our marker
    watcher.publish("$aws/things/marker/shadow/get", b"")
    topic, _ = watcher.next()
    assert topic.startswith("$aws/things/marker/")


def test_iot_data_errors_are_boto3_typed_exceptions(iotcore: IotCore) -> None:
    # GIVEN a shadow at version 1
    data = boto("iot-data", iotcore.url)
    data.update_thing_shadow(thingName="dev1", payload=b'{"state":{"reported":{"a":1}}}')
    # WHEN / THEN each failure raises the exception class boto3 documents
    with pytest.raises(data.exceptions.ConflictException):
        data.update_thing_shadow(thingName="dev1", payload=b'{"state":{},"version":7}')
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.get_thing_shadow(thingName="dev1", shadowName="missing")
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.delete_thing_shadow(thingName="nobody")
    with pytest.raises(data.exceptions.InvalidRequestException):
        data.update_thing_shadow(thingName="dev1", payload=b"not json")
    with pytest.raises(data.exceptions.RequestEntityTooLargeException):
        data.update_thing_shadow(thingName="dev1", payload=json.dumps({"state": {"desired": {"b": "x" * 9000}}}))
    with pytest.raises(data.exceptions.UnsupportedDocumentEncodingException):
        data.update_thing_shadow(thingName="dev1", payload=b"\xff\xfe")


def test_named_shadow_listing_pages_through_boto3(iotcore: IotCore) -> None:
    # GIVEN five named shadows
    data = boto("iot-data", iotcore.url)
    for name in ("a", "b", "c", "d", "e"):
        data.update_thing_shadow(thingName="dev1", shadowName=name, payload=b'{"state":{}}')
    # WHEN listed two per page
    seen, token = [], None
    while True:
        kwargs: dict[str, Any] = {"thingName": "dev1", "pageSize": 2}
        if token:
            kwargs["nextToken"] = token
        page = data.list_named_shadows_for_thing(**kwargs)
        seen += page["results"]
        token = page.get("nextToken")
        if not token:
            break
    # THEN every name is listed once
    assert seen == ["a", "b", "c", "d", "e"]


def test_thing_registry_through_boto3_iot(iotcore: IotCore) -> None:
    # GIVEN the iot control-plane client
    iot = boto("iot", iotcore.url)
    # WHEN things are created
    created = iot.create_thing(thingName="pi-1", attributePayload={"attributes": {"model": "pi4"}})
    iot.create_thing(thingName="pi-2")
    iot.create_thing(thingName="pi-3")
    # THEN they describe, list in pages, and re-creating the same thing is idempotent
    described = iot.describe_thing(thingName="pi-1")
    assert described["thingId"] == created["thingId"] and described["attributes"] == {"model": "pi4"}
    assert described["thingArn"].endswith(":thing/pi-1")
    assert iot.create_thing(thingName="pi-1", attributePayload={"attributes": {"model": "pi4"}})["thingId"] == created["thingId"]
    first = iot.list_things(maxResults=2)
    rest = iot.list_things(maxResults=2, nextToken=first["nextToken"])
    assert [t["thingName"] for t in first["things"] + rest["things"]] == ["pi-1", "pi-2", "pi-3"]
    assert "nextToken" not in rest
    # AND a token it did not give out is refused, as AWS refuses one (the API answers INVALID_QUERY)
    for forged in ("pi-1", "zzz", first["nextToken"] + "!"):
        with pytest.raises(iot.exceptions.InvalidRequestException):
            iot.list_things(maxResults=2, nextToken=forged)
    # AND conflicts and absences are typed exceptions
    with pytest.raises(iot.exceptions.ResourceAlreadyExistsException):
        iot.create_thing(thingName="pi-1", attributePayload={"attributes": {"model": "other"}})
    iot.delete_thing(thingName="pi-2")
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="pi-2")


def test_shadows_do_not_need_a_registered_thing_as_on_aws(iotcore: IotCore) -> None:
    # GIVEN a thing name that was never registered
    data, iot = boto("iot-data", iotcore.url), boto("iot", iotcore.url)
    # WHEN its shadow is updated / THEN it works (AWS; moto would need create_thing first)
    data.update_thing_shadow(thingName="unregistered", payload=b'{"state":{"reported":{"a":1}}}')
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_thing(thingName="unregistered")


def test_http_server_does_not_wait_on_nagle(iotcore: IotCore) -> None:
    # GIVEN / WHEN / THEN the handler class opts out of Nagle (a timing test would flake; the flag is the fix)
    assert iotcore._http is not None
    assert getattr(iotcore._http.RequestHandlerClass, "disable_nagle_algorithm", False) is True
    name, value = SIGNED.split(": ", 1)
    with urllib.request.urlopen(urllib.request.Request(f"{iotcore.url}/things", headers={name: value})) as resp:
        assert json.loads(resp.read()) == {"things": []}


def test_malformed_mqtt_traffic_is_rejected_and_others_keep_being_served(iotcore: IotCore, watcher: Watcher) -> None:
    # GIVEN a client watching rejections of one thing and acceptances of another
    bad, good = "$aws/things/noisy/shadow", "$aws/things/calm/shadow"
    watcher.watch(f"{bad}/update/rejected", f"{bad}/get/rejected", f"{good}/update/accepted")
    deep: dict[str, Any] = {}
    for i in range(7):
        deep = {f"k{i}": deep}
    garbage = [
        (b"{not json", 400),
        (json.dumps({"state": {"reported": {"b": "x" * 9 * 1024}}}).encode(), 413),
        (json.dumps({"state": {"reported": deep}}).encode(), 400),
        (json.dumps({"state": {}, "clientToken": "t" * 65}).encode(), 400),
        (b"\x00\xff", 415),
    ]
    # WHEN malformed updates arrive, and a get for a shadow that does not exist
    for payload, _ in garbage:
        watcher.publish(f"{bad}/update", payload)
    watcher.publish(f"{bad}/get", b"")
    # THEN each is rejected with AWS's code, in order
    codes = [watcher.until(f"{bad}/update/rejected")["code"] for _ in garbage]
    assert codes == [code for _, code in garbage]
    assert watcher.until(f"{bad}/get/rejected") == {
        "code": 404,
        "message": "No shadow exists with name: 'noisy'",
        "timestamp": pytest.approx(0, abs=10**12),
    }
    # AND another thing is still served
    watcher.publish(f"{good}/update", b'{"state":{"reported":{"fine":true}}}')
    assert watcher.until(f"{good}/update/accepted")["version"] == 1


# ------------------------------------------------------------------ the process


def test_sigkill_loses_no_acknowledged_update_and_sigterm_stops_cleanly(iotcore_process: IotCoreProcess, broker: Broker) -> None:
    # GIVEN twenty updates, each acknowledged on update/accepted
    w = Watcher(broker.service_endpoint(), "durability-watcher")
    try:
        base = "$aws/things/dev9/shadow"
        w.watch(f"{base}/update/accepted")
        for i in range(1, 21):
            w.publish(f"{base}/update", json.dumps({"state": {"reported": {"n": i}}}).encode())
            assert w.until(f"{base}/update/accepted")["version"] == i
        # WHEN the process is killed without warning and started again
        iotcore_process.signal(signal.SIGKILL)
        iotcore_process.start()
        # THEN every acknowledged update is there
        data = boto("iot-data", iotcore_process.url)
        doc = json.loads(data.get_thing_shadow(thingName="dev9")["payload"].read())
        assert doc["state"]["reported"] == {"n": 20}
        # (21 when the kill fell between committing the last update and acknowledging its PUBLISH:
        #  the broker redelivers it to the restarted service, at least once, and it is applied again)
        assert doc["version"] in (20, 21)
        # AND SIGTERM ends it with exit status 0
        assert iotcore_process.signal(signal.SIGTERM) == 0
    finally:
        w.close()


def test_after_a_kill_every_pending_delta_goes_out_again_and_after_a_clean_stop_none(
    iotcore_process: IotCoreProcess, broker: Broker
) -> None:
    # GIVEN a command pending in a device's commands shadow (its delta may have died with a crash:
    #   an update is committed before its messages are published), and the device listening
    data = boto("iot-data", iotcore_process.url)
    data.update_thing_shadow(thingName="dev8", shadowName="commands", payload=b'{"state":{"desired":{"c1":{"action":"ping"}}}}')
    data.update_thing_shadow(thingName="dev8", payload=b'{"state":{"desired":{"led":"on"},"reported":{"led":"on"}}}')
    w = Watcher(broker.service_endpoint(), "redelivery-watcher")
    try:
        classic_delta = "$aws/things/dev8/shadow/update/delta"
        commands_delta = "$aws/things/dev8/shadow/name/commands/update/delta"
        w.watch(commands_delta, classic_delta)
        # WHEN the service is killed and started again
        iotcore_process.signal(signal.SIGKILL)
        iotcore_process.start()
        # THEN the pending command's delta is published again (a shadow in agreement gets none)
        again = w.until(commands_delta)
        assert set(again["state"]) == {"c1"} and again["state"]["c1"] == {"action": "ping"}
        time.sleep(0.5)
        assert [t for t, _ in w.drain() if t == classic_delta] == []
        # AND after a clean stop and start nothing is published again: nothing was lost
        assert iotcore_process.signal(signal.SIGTERM) == 0
        iotcore_process.start()
        with pytest.raises(queue.Empty):
            w.next(timeout=2.0)
    finally:
        w.close()


def test_requests_sent_while_iotcore_is_down_are_answered_after_restart(iotcore_process: IotCoreProcess, broker: Broker) -> None:
    # GIVEN a device subscribed to accepted, and iotcore stopped
    w = Watcher(broker.service_endpoint(), "offline-watcher")
    try:
        base = "$aws/things/dev7/shadow"
        w.watch(f"{base}/update/accepted")
        assert iotcore_process.signal(signal.SIGTERM) == 0
        # WHEN the device publishes an update while iotcore is down, then iotcore comes back
        w.publish(f"{base}/update", b'{"state":{"reported":{"while":"down"}},"clientToken":"late"}')
        iotcore_process.start()
        # THEN the broker kept the request for iotcore's session and it is answered
        accepted = w.until(f"{base}/update/accepted", timeout=WAIT)
        assert accepted["clientToken"] == "late" and accepted["version"] == 1
    finally:
        w.close()


def test_concurrent_http_updates_get_distinct_versions_published_in_order(iotcore: IotCore, watcher: Watcher) -> None:
    # GIVEN a subscriber on accepted, and 8 callers (fewer than the 10 in flight AWS allows)
    watcher.watch("$aws/things/busy/shadow/update/accepted")
    versions: list[int] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        data = boto("iot-data", iotcore.url)
        for i in range(10):
            body = json.dumps({"state": {"reported": {f"c{n}": i}}}).encode()
            doc = json.loads(data.update_thing_shadow(thingName="busy", payload=body)["payload"].read())
            with lock:
                versions.append(doc["version"])

    # WHEN they all update the same shadow at once
    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # THEN every update got its own version, none lost
    assert sorted(versions) == list(range(1, 81))
    doc = json.loads(boto("iot-data", iotcore.url).get_thing_shadow(thingName="busy")["payload"].read())
    assert doc["state"]["reported"] == {f"c{n}": 9 for n in range(8)}
    # AND subscribers saw the accepted documents in version order
    seen = [watcher.until("$aws/things/busy/shadow/update/accepted")["version"] for _ in range(80)]
    assert seen == list(range(1, 81))


def test_broker_restart_is_survived(iotcore: IotCore, broker: Broker) -> None:
    # GIVEN a running iotcore, then the broker restarts
    broker.stop()
    broker.start()
    w = Watcher(broker.service_endpoint(), "after-restart")
    try:
        w.watch("$aws/things/dev3/shadow/update/accepted")
        # WHEN a device sends an update after the restart
        w.publish("$aws/things/dev3/shadow/update", b'{"state":{"reported":{"back":true}}}')
        # THEN iotcore, reconnected with its persistent session, answers it
        assert w.until("$aws/things/dev3/shadow/update/accepted", timeout=WAIT)["version"] == 1
    finally:
        w.close()


@pytest.mark.parametrize(
    "payload",
    [
        b'{"state":{"desired":{"a":"\\ud800"}}}',  # an escaped lone surrogate: JSON text, but no UTF-8 document
        b'{"clientToken":"\\udc00","state":{"desired":{"a":1}}}',
        b'{"state":{"desired":{"a":' + b"[" * 400 + b"]" * 400 + b"}}}",  # parses; deeper than a recursive walk goes
        b'{"state":{"desired":{"a":1e400}}}',  # parses to infinity, which would be written back as Infinity
    ],
)
def test_every_update_request_is_answered_and_bad_json_is_a_400(iotcore: IotCore, watcher: Watcher, payload: bytes) -> None:
    # GIVEN a client waiting for the answer to its shadow request
    base = "$aws/things/dev1/shadow"
    watcher.watch(f"{base}/update/accepted", f"{base}/update/rejected")
    # WHEN it sends a document that parses as JSON yet is none AWS would store
    watcher.publish(f"{base}/update", payload)
    # THEN it is answered (not left waiting), with AWS's 400, and so is the same request over HTTP
    topic, doc = watcher.next(timeout=WAIT)
    assert (topic, doc["code"]) == (f"{base}/update/rejected", 400)
    with pytest.raises(ClientError) as err:
        boto("iot-data", iotcore.url).update_thing_shadow(thingName="dev1", payload=payload)
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_a_retained_request_is_handled_once_not_again_at_every_restart(broker: Broker, stack_config: StackConfig) -> None:
    # GIVEN a device that published its report with the retain flag, and a newer report after it
    def iotcore() -> IotCore:
        return IotCore(data_dir=stack_config.data_dir / "iotcore", mqtt=broker.service_endpoint(),
                       http_port=stack_config.iot_http_port)  # fmt: skip

    base = "$aws/things/dev1/shadow"
    core = iotcore()
    core.start()
    watcher = Watcher(broker.service_endpoint(), "retain-watcher")
    try:
        watcher.watch(f"{base}/update/accepted")
        watcher.client.publish(f"{base}/update", b'{"state":{"reported":{"led":"off"}}}', qos=1, retain=True).wait_for_publish(10)
        assert watcher.until(f"{base}/update/accepted")["version"] == 1
        boto("iot-data", core.url).update_thing_shadow(thingName="dev1", payload=b'{"state":{"reported":{"led":"on"}}}')
        # WHEN the shadow service restarts (and subscribes again, which replays retained messages)
        core.stop()
        core = iotcore()
        core.start()
        # THEN the old report is not applied again over the newer one
        doc = json.loads(boto("iot-data", core.url).get_thing_shadow(thingName="dev1")["payload"].read())
        assert (doc["version"], doc["state"]["reported"]["led"]) == (2, "on")
    finally:
        watcher.close()
        core.stop()


def test_a_clean_stop_lets_an_update_in_progress_publish_its_delta(broker: Broker, stack_config: StackConfig) -> None:
    # GIVEN a device listening for deltas, and an app's update that has committed but not yet published
    base = "$aws/things/dev1/shadow"
    core = IotCore(data_dir=stack_config.data_dir / "iotcore", mqtt=broker.service_endpoint(),
                   http_port=stack_config.iot_http_port)  # fmt: skip
    core.start()
    watcher = Watcher(broker.service_endpoint(), "stop-watcher")
    try:
        watcher.watch(f"{base}/update/delta")
        assert core.store is not None
        real_change, committed = core.store.change, threading.Event()

        def slow_change(*args: Any, **kwargs: Any) -> Any:
            result = real_change(*args, **kwargs)
            committed.set()
            time.sleep(0.5)  # widens the window between the commit and its messages
            return result

        core.store.change = slow_change  # type: ignore[method-assign]
        update = threading.Thread(target=lambda: boto("iot-data", core.url).update_thing_shadow(
            thingName="dev1", payload=b'{"state":{"desired":{"led":"on"}}}'), daemon=True)  # fmt: skip
        update.start()
        assert committed.wait(WAIT)
        # WHEN the service is stopped cleanly (SIGTERM) at that moment
        core.stop()
        update.join(WAIT)
        # THEN the device still gets the delta (a clean stop republishes nothing after a restart)
        assert watcher.until(f"{base}/update/delta", timeout=WAIT)["state"] == {"led": "on"}
    finally:
        watcher.close()
        core.stop()


@pytest.mark.parametrize("length", [b"abc", b"-1"])
def test_a_malformed_content_length_is_a_400_not_a_hang(iotcore: IotCore, length: bytes) -> None:
    head = f"POST /things/dev1/shadow HTTP/1.1\r\nHost: 127.0.0.1\r\n{SIGNED}\r\nContent-Length: ".encode()
    request = head + length + b"\r\n\r\n{}"
    with socket.create_connection(("127.0.0.1", iotcore.http_port), timeout=WAIT) as sock:
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 400")
