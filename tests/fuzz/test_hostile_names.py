"""Names that could address another topic or break a parser (`/ + # $`, NUL, unicode, over-long)
are refused with a 4xx on every route that takes one, and nothing is published anywhere: a service
identity subscribed to `#` and `$aws/#` sees no message while they are sent."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from iotbridge_contract.commands import COMMANDS_SHADOW
from iotbridge_contract.mqtt import make_client
from iotbridge_local.stack import LocalStack
from tests.faults.harness import http, start_stack, wait_until

pytestmark = pytest.mark.stack

TARGET = "target-1"  # a registered device with a shadow, and no agent: no traffic of its own
HOSTILE = [
    "a/b", f"{TARGET}/shadow/update", "+", "#", f"{TARGET}#", "$aws", "$aws/things/x/shadow/update",
    f"{TARGET}\0", "\0", "ä", "設備", "🙂", "x" * 129, "x" * 4000, "..", ".", " ", f"{TARGET} ", "a\nb",
    "%2F", "a\\b", "a?b", "a;b", "a'b", '"',
]  # fmt: skip
TRAILING_NEWLINE = [f"{TARGET}\n", "\n"]


class Sniffer:
    """A service-identity MQTT client subscribed to everything, including `$aws/…`. Its callback only records."""

    def __init__(self, stack: LocalStack) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self.client = make_client(f"iotbridge.sniffer-{uuid.uuid4().hex[:8]}", stack.broker.service_endpoint())
        self.client.on_message = lambda c, u, msg: self.messages.append((msg.topic, bytes(msg.payload)))
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_connect = lambda c, *args: c.subscribe([("#", 1), ("$aws/#", 1)])
        self.client.connect("127.0.0.1", stack.config.mqtt_port)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise AssertionError("the sniffer could not subscribe")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(scope="module")
def quiet_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack with no device agents, and one registered device whose shadows exist."""
    running = start_stack(Path(tmp_path_factory.mktemp("hostile")), devices=0)
    try:
        running.boto3_client("iot").create_thing(thingName=TARGET)
        data = running.boto3_client("iot-data")
        reported = {"led": "off", "actions": {"ping": {}, "led": {"state": "enum:on|off|toggle"}}}
        data.update_thing_shadow(thingName=TARGET, payload=json.dumps({"state": {"reported": reported}}).encode())
        data.update_thing_shadow(thingName=TARGET, shadowName=COMMANDS_SHADOW, payload=b'{"state":{"reported":{}}}')
        yield running
    finally:
        running.stop()


def _requests(name: str) -> list[tuple[str, str, Any]]:
    """Every route that takes a thing name, command id, shadow name or job id, with `name` in that place."""
    q = quote(name, safe="")
    return [
        ("GET", f"/devices/{q}", None),
        ("GET", f"/devices/{q}/commands", None),
        ("POST", f"/devices/{q}/commands", {"action": "ping"}),
        ("PATCH", f"/devices/{q}/desired", {"state": {"led": "on"}}),
        ("GET", f"/devices/{q}/commands/c1", None),
        ("GET", f"/devices/{TARGET}/commands/{q}", None),
        ("POST", f"/devices/{TARGET}/commands", {"action": "ping", "id": name, "timeoutMs": 0}),
        ("GET", f"/devices/{TARGET}?shadow={q}", None),
        ("POST", "/commands", {"action": "ping", "things": [name]}),
        ("GET", f"/commands/jobs/{q}", None),
    ]


def _sentinel(stack: LocalStack, sniffer: Sniffer) -> None:
    """Publish a marker through the data plane and wait for it: anything published before it has arrived."""
    topic = f"iotbridge/test/sentinel/{uuid.uuid4().hex}"
    stack.boto3_client("iot-data").publish(topic=topic, qos=1, payload=b"{}")
    wait_until(lambda: any(t == topic for t, _ in sniffer.messages), timeout=10, what="sentinel arrived")


def _refused_silently(stack: LocalStack, names: list[str]) -> tuple[list[Any], list[Any]]:
    """Answers that are not a 4xx with a code, and messages published, while `names` are sent everywhere."""
    api, key = stack.config.api_url, stack.config.api_key
    sniffer = Sniffer(stack)
    try:
        _sentinel(stack, sniffer)
        time.sleep(0.2)
        sniffer.messages.clear()
        answers = []
        for name in names:
            for method, path, body in _requests(name):
                reply = http(api, method, path, key=key, body=body)
                answers.append((method, path[:80], repr(name)[:40], reply.status, reply.code))
        _sentinel(stack, sniffer)
        leaked = [(t, p[:120]) for t, p in sniffer.messages if not t.startswith("iotbridge/test/sentinel/")]
    finally:
        sniffer.close()
    wrong = [a for a in answers if not (400 <= a[3] < 500 and a[4])]
    return wrong, leaked


def test_hostile_names_are_refused_and_publish_nothing(quiet_stack: LocalStack) -> None:
    # GIVEN a stack whose only device has no agent, and a sniffer on `#` and `$aws/#` that has gone quiet
    # WHEN every route is called with every hostile name where a thing name, command id, shadow name
    #   or job id goes
    wrong, leaked = _refused_silently(quiet_stack, HOSTILE)
    # THEN each is a client error with an error code, never a 2xx or a 5xx
    assert not wrong, "\n".join(map(str, wrong))
    # AND nothing was published on any topic
    assert not leaked, leaked


def test_a_trailing_newline_is_not_stripped_from_a_name(quiet_stack: LocalStack) -> None:
    # GIVEN a registered device, WHEN its name (or nothing) is sent with a trailing newline on every route
    wrong, leaked = _refused_silently(quiet_stack, TRAILING_NEWLINE)
    # THEN every answer is a client error, and nothing is published
    assert not wrong, "\n".join(map(str, wrong))
    assert not leaked, leaked


def test_the_sniffer_would_see_a_command(quiet_stack: LocalStack) -> None:
    # GIVEN the same sniffer
    sniffer = Sniffer(quiet_stack)
    try:
        # WHEN a valid command is queued for the registered device
        reply = http(quiet_stack.config.api_url, "POST", f"/devices/{TARGET}/commands", key=quiet_stack.config.api_key,
                     body={"action": "ping", "timeoutMs": 0})  # fmt: skip
        assert reply.status == 202, reply
        _sentinel(quiet_stack, sniffer)
    finally:
        sniffer.close()
    # THEN the sniffer saw its delta on the device's `$aws/…` topic (so silence above means something)
    delta = f"$aws/things/{TARGET}/shadow/name/{COMMANDS_SHADOW}/update/delta"
    assert any(t == delta for t, _ in sniffer.messages), [t for t, _ in sniffer.messages]
