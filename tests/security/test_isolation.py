"""Per-device isolation on the real broker: one device's certificate opens that device's topics and nothing else.

Mosquitto's ACL file grants a SUBACK for any filter and then filters every
message by the subscriber's username; AWS IoT would refuse the subscription
instead. What a user can notice is the same: nothing of B ever reaches A.
Every "nothing arrived" below is proven with a sentinel sent after the
forbidden message on the same path: when the sentinel arrives, the forbidden
message would have arrived before it.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from iotbridge_contract import names, topics
from iotbridge_contract.mqtt import Endpoint, TlsFiles
from iotbridge_local.broker import SERVICE_USER, Broker
from iotbridge_local.config import StackConfig
from iotbridge_local.pki import LocalCA, common_name
from tests.security.clients import Refused, TestClient

A, B = "thing-a", "thing-b"


def _only_sentinel(client: TestClient, sentinel_topic: str) -> list[str]:
    """Topics received up to and including the sentinel."""
    seen = []
    while True:
        topic, _ = client.next_message()
        seen.append(topic)
        if topic == sentinel_topic:
            return seen


def test_device_certificate_carries_the_thing_name(broker: Broker) -> None:
    # GIVEN a device endpoint for thing-a
    paths = broker.device_cert_paths(A)
    # THEN its certificate's CN is the thing name, in PEM and DER, and the CA is shipped with it
    assert common_name(paths.cert) == A
    assert paths.cert_der.read_bytes()[0] == 0x30 and paths.key_der.read_bytes()[0] == 0x30  # DER SEQUENCE
    assert paths.ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
    # AND asking again returns the same certificate rather than a second one
    assert broker.device_cert_paths(A).cert.read_bytes() == paths.cert.read_bytes()


def test_no_device_certificate_can_carry_a_service_identity(tmp_path: Path) -> None:
    # GIVEN the local CA
    ca = LocalCA(tmp_path / "pki")
    # WHEN asked for a device certificate named like the service identity
    # THEN it refuses: '.' is outside the thing-name alphabet
    with pytest.raises(names.InvalidName):
        ca.ensure_device(SERVICE_USER)


def test_device_receives_nothing_published_for_another_device(broker: Broker) -> None:
    # GIVEN device A subscribed to B's shadow replies, to every shadow, and to its own topic
    with TestClient(A, broker.device_endpoint(A)) as a, TestClient("svc", broker.service_endpoint()) as svc:
        for flt in (topics.shadow_topic(B, "update", "accepted"), "$aws/things/+/shadow/#", f"iotbridge/things/{B}/#"):
            a.subscribe(flt)
        own = topics.shadow_topic(A, "update", "accepted")
        a.subscribe(own)
        # WHEN the service publishes B's shadow reply and a message for B, then one for A
        svc.publish(topics.shadow_topic(B, "update", "accepted"), b'{"state":{}}')
        svc.publish(f"iotbridge/things/{B}/telemetry", b"secret")
        svc.publish(own, b"sentinel")
        # THEN A gets only its own message
        assert _only_sentinel(a, own) == [own]


def _disconnected(client: TestClient) -> str:
    """What the client was told when the broker dropped it."""
    while True:
        outcome = client.connack_or_disconnect()
        if outcome is not None:
            return outcome


@pytest.mark.parametrize(
    "forbidden",
    [
        topics.shadow_topic(B, "update"),
        topics.shadow_topic(B, "update", shadow="commands"),
        topics.shadow_topic(B, "update", "accepted"),
        f"iotbridge/things/{B}/telemetry",
        topics.presence_topic("disconnected", B),
        "$SYS/broker/forged",
        # its own, but not its to write: the presence shadow (a device could pin itself
        # "connected"), the shadow service's replies, a delete
        topics.shadow_topic(A, "update", shadow="presence"),
        topics.shadow_topic(A, "update", "accepted", shadow="commands"),
        topics.shadow_topic(A, "delete"),
    ],
)
def test_device_publishing_where_its_policy_does_not_allow_is_dropped_and_disconnected(
    broker: Broker, forbidden: str
) -> None:
    # GIVEN the service listening to every shadow, device topic and lifecycle event
    with TestClient("svc", broker.service_endpoint()) as svc:
        for flt in ("$aws/things/+/shadow/#", "iotbridge/things/#", f"{topics.PRESENCE_PREFIX}#", "$SYS/broker/forged"):
            svc.subscribe(flt)
        # WHEN device A publishes on a topic that is not its own, or not its to write
        a = TestClient(A, broker.device_endpoint(A)).connect()
        a.mqtt.publish(forbidden, b'{"state":{"reported":{"led":"on"}}}', qos=0)
        # THEN the broker drops the connection (AWS IoT does the same on a policy violation)
        assert "disconnected" in _disconnected(a)
        a.close()
        # AND nothing reached the service before A's next, legitimate message
        with TestClient(A, broker.device_endpoint(A)) as again:
            own = topics.shadow_topic(A, "update")
            again.publish(own, b"{}")
            assert [t for t in _only_sentinel(svc, own) if not t.startswith(topics.PRESENCE_PREFIX)] == [own]


def test_device_cannot_read_broker_internals(broker: Broker) -> None:
    # GIVEN the broker's retained $SYS tree, which the service can read
    with TestClient("svc", broker.service_endpoint()) as svc:
        svc.subscribe("$SYS/broker/version")
        assert svc.next_message()[0] == "$SYS/broker/version"
        # WHEN device A subscribes to $SYS and then receives a message on its own topic
        with TestClient(A, broker.device_endpoint(A)) as a:
            a.subscribe("$SYS/#")
            own = f"iotbridge/things/{A}/ping"
            a.subscribe(own)
            svc.publish(own, b"sentinel")
            # THEN A saw nothing of $SYS before it
            assert _only_sentinel(a, own) == [own]


def test_borrowed_client_id_gains_nothing(broker: Broker) -> None:
    # GIVEN device B connected and subscribed to its shadow deltas
    delta_b = topics.shadow_topic(B, "update", "delta")
    with TestClient(B, broker.device_endpoint(B)) as b, TestClient("svc", broker.service_endpoint()) as svc:
        b.subscribe(delta_b)
        # WHEN a client with A's certificate connects using B's client id and subscribes to B's deltas
        with TestClient(B, broker.device_endpoint(A)) as impostor:
            impostor.subscribe(delta_b)
            impostor.subscribe(topics.shadow_topic(A, "update", "delta"))
            svc.publish(delta_b, b'{"state":{"led":"on"}}')
            svc.publish(topics.shadow_topic(A, "update", "delta"), b"sentinel")
            # THEN the impostor receives only A's messages
            assert _only_sentinel(impostor, topics.shadow_topic(A, "update", "delta")) == [
                topics.shadow_topic(A, "update", "delta")
            ]
            # AND the real B was not thrown off: it still gets its delta
            assert b.next_message() == (delta_b, b'{"state":{"led":"on"}}')


def _handshake(port: int, ctx: ssl.SSLContext) -> None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # CONNECT, empty client id
        if not tls.recv(4):
            raise ConnectionResetError("closed by the broker")


def test_tls_port_refuses_a_client_without_certificate(broker: Broker) -> None:
    # GIVEN a client that trusts the local CA but has no certificate of its own
    ctx = ssl.create_default_context(cafile=str(broker.device_cert_paths(A).ca))
    # WHEN it connects to the mutual-TLS port
    # THEN the handshake is refused
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        _handshake(broker.config.mqtts_port, ctx)


def test_tls_port_refuses_a_certificate_from_another_ca(broker: Broker, tmp_path: Path) -> None:
    # GIVEN a certificate with B's name, issued by some other CA
    other = LocalCA(tmp_path / "other-ca").ensure_device(B)
    endpoint = Endpoint(host="127.0.0.1", port=broker.config.mqtts_port,
                        tls=TlsFiles(ca=str(broker.device_cert_paths(A).ca), cert=str(other.cert_pem), key=str(other.key_pem)))
    # WHEN it connects
    # THEN it is refused
    with pytest.raises(Refused):
        TestClient(B, endpoint).connect()


def test_service_identity_needs_its_password(broker: Broker) -> None:
    # GIVEN the service endpoint with a wrong password, and one without credentials
    good = broker.service_endpoint()
    wrong = Endpoint(host=good.host, port=good.port, username=good.username, password="not-the-password")
    anonymous = Endpoint(host=good.host, port=good.port)
    # WHEN each connects to the plain port
    # THEN both are refused, and the right password is accepted
    for endpoint in (wrong, anonymous):
        with pytest.raises(Refused, match=r"[Nn]ot authori"):
            TestClient("svc-x", endpoint).connect()
    with TestClient("svc-ok", good):
        pass


def test_device_certificate_is_no_good_on_the_plain_port(broker: Broker) -> None:
    # GIVEN device A's identity used as a username on the plain port, without a password
    endpoint = Endpoint(host="127.0.0.1", port=broker.config.mqtt_port, username=A)
    # WHEN it connects
    # THEN it is refused: with TLS on, devices authenticate by certificate only
    with pytest.raises(Refused):
        TestClient(A, endpoint).connect()


def test_without_tls_devices_are_still_isolated_by_username(tmp_path: Path) -> None:
    # GIVEN a stack with tls off (devices on the plain port, username = thing name)
    with Broker(StackConfig.free(tmp_path / "plain", tls=False)) as broker:
        a_ep = broker.device_endpoint(A)
        assert a_ep.tls is None and a_ep.username == A
        with TestClient(A, a_ep) as a, TestClient("svc", broker.service_endpoint()) as svc:
            a.subscribe("$aws/things/+/shadow/#")
            # WHEN the service publishes for B, then for A
            svc.publish(topics.shadow_topic(B, "update", "delta"), b"{}")
            own = topics.shadow_topic(A, "update", "delta")
            svc.publish(own, b"{}")
            # THEN A only gets its own
            assert _only_sentinel(a, own) == [own]
        # AND a device name without its password is refused
        with pytest.raises(Refused):
            TestClient(B, Endpoint(host="127.0.0.1", port=broker.config.mqtt_port, username=B)).connect()


def test_device_registered_from_another_process_is_accepted_without_restart(tmp_path: Path) -> None:
    # GIVEN a running tls-off broker, and a second Broker object for the same stack (as the CLI would make)
    config = StackConfig.free(tmp_path / "plain", tls=False)
    with Broker(config) as running:
        other = Broker(config)
        # WHEN the other one registers a new device
        endpoint = other.device_endpoint("late-device")
        # THEN the running broker accepts it at once (reloaded through its pid file)
        with TestClient("late-device", endpoint):
            pass
        assert running.pid == other.running_pid()


def test_stale_pid_file_never_signals_an_unrelated_process(tmp_path: Path) -> None:
    # GIVEN a stopped stack whose pid file names some unrelated process
    config = StackConfig.free(tmp_path / "stale", tls=False)
    broker = Broker(config)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        broker.dir.mkdir(parents=True)
        broker.pid_path.write_text(f"{bystander.pid}\n")
        # WHEN a device is registered (which reloads a running broker)
        broker.device_endpoint("thing-z")
        # THEN the unrelated process was not signalled
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_longest_thing_name_can_be_registered_without_tls(tmp_path: Path) -> None:
    # GIVEN a tls-off broker and a thing name of AWS's maximum length
    thing = "t" * 128
    with Broker(StackConfig.free(tmp_path / "long", tls=False)) as broker:
        # WHEN it is registered and connects
        endpoint = broker.device_endpoint(thing)
        # THEN the broker accepts it
        with TestClient(thing, endpoint):
            pass


def test_longest_thing_name_connects_over_mutual_tls(broker: Broker) -> None:
    # GIVEN a thing name of AWS's maximum length (longer than X.509's suggested 64 for a CN)
    thing = "m" * 128
    # WHEN it connects with its certificate
    with TestClient(thing, broker.device_endpoint(thing)) as device, TestClient("svc", broker.service_endpoint()) as svc:
        own = topics.shadow_topic(thing, "update", "delta")
        device.subscribe(own)
        svc.publish(own, b"{}")
        # THEN its certificate identity opens its own topics
        assert device.next_message()[0] == own
