"""Our MQTT client's byte handling under MicroPython, with a scripted socket: QoS 1 acks, redelivery, the reader hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.micropython.test_ledger import run_mpy

pytestmark = pytest.mark.micropython

FAKE = r'''
import json
from mqtt import MQTTClient

class Sock:
    """Plays the broker: hands out scripted bytes, records what the client writes."""
    def __init__(self, data):
        self.data = memoryview(data)
        self.sent = bytearray()
    def readinto(self, view):
        n = min(len(view), len(self.data), 7)  # short reads, as a real socket may give
        view[:n] = self.data[:n]
        self.data = self.data[n:]
        return n
    def write(self, buf):
        self.sent += buf
        return len(buf)

class Poll:
    def __init__(self, sock):
        self.sock = sock
    def poll(self, timeout):
        return [1] if len(self.sock.data) else []

def publish(topic, payload, qos=1, pid=1, dup=False):
    t = topic.encode()
    body = bytes([len(t) >> 8, len(t) & 255]) + t + (bytes([pid >> 8, pid & 255]) if qos else b"") + payload
    return bytes([0x30 | (8 if dup else 0) | (qos << 1), len(body)]) + body

def client(data, reader=None):
    c = MQTTClient("dev", "127.0.0.1")
    c.sock = Sock(data)
    c._poll = Poll(c.sock)
    c.reader = reader
    got = []
    c.set_callback(lambda t, p: got.append([t, bytes(p).decode()]))
    while c.check_msg(0):
        pass
    return c, got
'''


def test_qos1_publish_is_acked_and_a_redelivery_is_acked_but_not_delivered_twice(tmp_path: Path) -> None:
    # GIVEN a broker that delivers a QoS 1 message, then redelivers it (DUP, same packet id)
    script = FAKE + r'''
c, got = client(publish("a/b", b"one", pid=7) + publish("a/b", b"one", pid=7, dup=True) + publish("a/b", b"two", pid=8))
print(json.dumps([got, list(c.sock.sent)]))
'''
    # WHEN the client reads them
    (answer,) = run_mpy(script, tmp_path)
    assert isinstance(answer, list)
    got, sent = answer
    # THEN each message reaches the application once, and every delivery is acknowledged (PUBACK)
    assert got == [["a/b", "one"], ["a/b", "two"]]
    assert bytes(sent) == bytes([0x40, 2, 0, 7, 0x40, 2, 0, 7, 0x40, 2, 0, 8])


def test_the_reader_hook_reads_the_payload_and_what_it_returns_is_delivered(tmp_path: Path) -> None:
    # GIVEN a client whose reader trims shadow documents (as the firmware sets it up)
    script = FAKE + r'''
from protocol import read_trimmed
doc = b'{"state":{"led":"on"},"metadata":{"led":{"timestamp":1}},"version":2,"timestamp":5}'
c, got = client(publish("$aws/things/x/shadow/update/delta", doc, qos=0),
                reader=lambda topic, n, fill: read_trimmed(n, fill, {1: (b"metadata",)}))
print(json.dumps(got))
'''
    # WHEN a delta with metadata arrives
    (got,) = run_mpy(script, tmp_path)
    # THEN the application receives the document without its metadata
    assert got == [["$aws/things/x/shadow/update/delta", '{"state":{"led":"on"},"metadata":0,"version":2,"timestamp":5}']]


def test_publish_writes_one_well_formed_packet(tmp_path: Path) -> None:
    # GIVEN a connected client
    script = FAKE + r'''
c, _ = client(b"")
c.sock.data = memoryview(bytes([0x40, 2, 0, 1]))  # the broker's PUBACK for packet id 1
c.publish("t/x", '{"a":"é"}', qos=1)
print(json.dumps(list(c.sock.sent)))
'''
    # WHEN it publishes a str payload at QoS 1
    (sent,) = run_mpy(script, tmp_path)
    assert isinstance(sent, list)
    # THEN the bytes are PUBLISH|QoS1, remaining length, topic, packet id 1, the UTF-8 payload
    payload = '{"a":"é"}'.encode()
    body = b"\x00\x03t/x" + b"\x00\x01" + payload
    assert bytes(sent) == bytes([0x32, len(body)]) + body


def test_subscribe_writes_one_well_formed_packet_for_several_filters(tmp_path: Path) -> None:
    # GIVEN a connected client
    script = FAKE + r'''
c, _ = client(b"")
c.sock.data = memoryview(bytes([0x90, 4, 0, 1, 1, 1]))  # the broker's SUBACK for packet id 1: QoS 1 granted twice
c.subscribe(["a/b", "$aws/things/t/shadow/+/rejected"], qos=1)
print(json.dumps(list(c.sock.sent)))
'''
    # WHEN it subscribes to two filters at once
    (sent,) = run_mpy(script, tmp_path)
    assert isinstance(sent, list)
    # THEN the bytes are one SUBSCRIBE: type 0x82, remaining length, packet id 1, then each filter
    # as length + UTF-8 + requested QoS
    body = b"\x00\x01" + b"\x00\x03a/b\x01" + b"\x00\x1f$aws/things/t/shadow/+/rejected\x01"
    assert bytes(sent) == bytes([0x82, len(body)]) + body
