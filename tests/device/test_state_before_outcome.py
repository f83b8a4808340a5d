"""A command's outcome becomes visible only after the state it produced.

The API reads the classic shadow right after it sees an outcome in the commands
shadow. MQTT orders messages per topic only (and AWS IoT not even that), so the
agent publishes the state first and holds the outcome until the shadow service
has accepted that state.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iotbridge_contract import topics
from iotbridge_contract.commands import COMMANDS_SHADOW, pending_entry
from iotbridge_contract.mqtt import Endpoint, make_client
from iotbridge_local.broker import Broker
from iotbridge_pi import session

from .conftest import WAIT_S, RunningAgent, Shadows, wait_for


def test_a_reader_that_sees_the_outcome_then_reads_the_classic_shadow_finds_the_new_state(
    start_agent: Callable[..., RunningAgent], shadows: Shadows
) -> None:
    # GIVEN a connected device, read the way the API reads it (boto3 iot-data)
    start_agent("pi-1")
    for i in range(8):
        # WHEN an LED toggle is queued and a reader polls the commands shadow until its outcome shows
        shadows.add_command("pi-1", f"toggle-{i}", "led", {"state": "toggle"})
        outcome = shadows.outcome("pi-1", f"toggle-{i}")

        # THEN the classic shadow, read right after, already reports the LED as the command left it
        assert outcome["state"] == "SUCCEEDED"
        assert shadows.reported("pi-1")["led"] == outcome["result"]["led"], f"toggle-{i}"


class HeldShadowService:
    """Plays the shadow service for one thing; answers the classic shadow's updates only when told to."""

    def __init__(self, endpoint: Endpoint, thing: str, pending: dict[str, Any]) -> None:
        self.thing = thing
        self.pending = pending  # the commands shadow's desired, listed by its get
        self.states: queue.Queue[dict[str, Any]] = queue.Queue()  # classic updates, unanswered
        self.outcomes: queue.Queue[dict[str, Any]] = queue.Queue()  # commands updates, answered at once
        self._topic = {
            topics.shadow_topic(thing, "get"): "classic get",
            topics.shadow_topic(thing, "get", shadow=COMMANDS_SHADOW): "commands get",
            topics.shadow_topic(thing, "update"): "classic update",
            topics.shadow_topic(thing, "update", shadow=COMMANDS_SHADOW): "commands update",
        }
        subscribed = threading.Event()
        self.client = make_client(f"held-shadows-{thing}", endpoint)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in self._topic])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        assert subscribed.wait(5), "the stand-in shadow service could not subscribe"

    def _reply(self, shadow: str | None, operation: str, reply: str, doc: dict[str, Any]) -> None:
        doc = {**doc, "timestamp": int(time.time()), "version": 1}
        self.client.publish(topics.shadow_topic(self.thing, operation, reply, shadow=shadow), json.dumps(doc), qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        kind = self._topic[msg.topic]
        doc = json.loads(msg.payload)
        if kind == "classic get":  # as AWS does, the answer carries the request's clientToken
            self._reply(None, "get", "accepted", {"state": {}, "clientToken": doc.get("clientToken")})
        elif kind == "commands get":
            answer = {"state": {"desired": self.pending}, "clientToken": doc.get("clientToken")}
            self._reply(COMMANDS_SHADOW, "get", "accepted", answer)
        elif kind == "classic update":
            self.states.put(doc)
        else:
            self.outcomes.put(doc)
            self._reply(COMMANDS_SHADOW, "update", "accepted", {"state": doc["state"], "clientToken": doc.get("clientToken")})

    def answer_state(self, doc: dict[str, Any], reply: str = "accepted", code: int = 400) -> None:
        answer = {"state": doc["state"]} if reply == "accepted" else {"code": code, "message": "test"}
        self._reply(None, "update", reply, {**answer, "clientToken": doc["clientToken"]})

    def delta(self, command_id: str, entry: dict[str, Any]) -> None:
        self._reply(COMMANDS_SHADOW, "update", "delta", {"state": {command_id: entry}})

    def next_state_with(self, key: str) -> dict[str, Any]:
        while True:
            doc = self.states.get(timeout=WAIT_S)
            if key in doc["state"].get("reported", {}):
                return doc

    def next_state_with_within(self, key: str, seconds: float) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while True:
            doc = self.states.get(timeout=max(0.0, deadline - time.monotonic()))
            if key in doc["state"].get("reported", {}):
                return doc

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def settled_after_led_on(start_agent: Callable[..., RunningAgent], held: HeldShadowService) -> None:
    """Start the agent; its shadow lists "led on": accept the state that command produced, take its outcome."""
    start_agent("pi-1")
    state = held.next_state_with("led")
    while state["state"]["reported"]["led"] != "on":  # the full report after connecting comes first
        state = held.next_state_with("led")
    held.answer_state(state)
    held.outcomes.get(timeout=WAIT_S)


def command(action: str, params: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return pending_entry(action, params, issued_at=now, expires_at=now + 600_000)


@pytest.fixture
def held(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldShadowService]:
    # Long enough that "not yet" below can only mean "held back", however slow the machine.
    monkeypatch.setattr(session, "STATE_ACK_WAIT_S", 600.0)
    service = HeldShadowService(broker.service_endpoint(), "pi-1", {"led-1": command("led", {"state": "on"})})
    yield service
    service.close()


def test_an_outcome_waits_until_the_state_its_command_produced_is_accepted(
    start_agent: Callable[..., RunningAgent], held: HeldShadowService
) -> None:
    # GIVEN a device whose shadow lists "led on", and a shadow service that has not yet accepted the new state
    start_agent("pi-1")
    state = held.next_state_with("led")
    while state["state"]["reported"]["led"] != "on":  # the full report after connecting comes first
        state = held.next_state_with("led")
    assert "clientToken" in state

    # WHEN nothing answers that state update / THEN the outcome is not published
    with pytest.raises(queue.Empty):
        held.outcomes.get(timeout=0.5)

    # WHEN the service accepts the state
    held.answer_state(state)

    # THEN the outcome follows
    outcome = held.outcomes.get(timeout=WAIT_S)
    assert outcome["state"]["reported"]["led-1"]["state"] == "SUCCEEDED"


def test_a_rejected_state_update_does_not_hold_the_outcome_back_and_stateless_commands_never_wait(
    start_agent: Callable[..., RunningAgent], held: HeldShadowService
) -> None:
    # GIVEN a device that ran "led on" and whose state update was accepted
    settled_after_led_on(start_agent, held)

    # WHEN a ping arrives, which changes no state
    held.delta("ping-1", command("ping", {}))

    # THEN its outcome comes without waiting for any answer about the classic shadow
    assert "ping-1" in held.outcomes.get(timeout=WAIT_S)["state"]["reported"]

    # WHEN a relay command's state update is rejected by the service
    held.delta("relay-1", command("relay", {"on": True}))
    held.answer_state(held.next_state_with("relay"), reply="rejected")

    # THEN its outcome is still reported
    assert held.outcomes.get(timeout=WAIT_S)["state"]["reported"]["relay-1"]["state"] == "SUCCEEDED"


def test_a_command_that_finishes_while_an_earlier_state_is_unanswered_waits_for_its_own_state(
    start_agent: Callable[..., RunningAgent], held: HeldShadowService
) -> None:
    # GIVEN a device that ran "led on", whose state update the service has not answered yet
    handle = start_agent("pi-1")
    first = held.next_state_with("led")
    while first["state"]["reported"]["led"] != "on":
        first = held.next_state_with("led")
    # AND meanwhile "led off" arrives and runs
    held.delta("led-2", command("led", {"state": "off"}))
    wait_for(lambda: handle.agent.device.led == "off", "led-2 to run")

    # WHEN the first state update is accepted
    held.answer_state(first)

    # THEN the second state goes out, and led-2's outcome is not published before it is accepted
    second = held.next_state_with("led")
    assert second["state"]["reported"]["led"] == "off"
    with pytest.raises(queue.Empty):
        while True:
            assert "led-2" not in held.outcomes.get(timeout=0.5)["state"]["reported"]
    held.answer_state(second)
    assert held.outcomes.get(timeout=WAIT_S)["state"]["reported"]["led-2"]["state"] == "SUCCEEDED"


def test_a_throttled_state_update_is_sent_again_with_the_state_the_device_has_now(
    start_agent: Callable[..., RunningAgent], held: HeldShadowService
) -> None:
    # GIVEN a device that ran "led on" and whose state update was accepted
    settled_after_led_on(start_agent, held)

    # WHEN a relay command's state update is throttled (429), as AWS does past 20 requests/s per thing
    held.delta("relay-1", command("relay", {"on": True}))
    lost = held.next_state_with("relay")
    assert lost["state"]["desired"] == {"relay": None}  # the command also clears the desired value it overrode
    held.answer_state(lost, reply="rejected", code=429)

    # THEN the outcome is still reported
    assert held.outcomes.get(timeout=WAIT_S)["state"]["reported"]["relay-1"]["state"] == "SUCCEEDED"
    # AND the state is sent again, by itself, with a new token: the relay on and its desired value cleared
    again = held.next_state_with("relay")
    assert again["state"]["reported"]["relay"] is True
    assert again["state"]["desired"] == {"relay": None}
    assert again["clientToken"] != lost["clientToken"]


def test_a_state_update_refused_as_wrong_is_not_sent_again(
    start_agent: Callable[..., RunningAgent], held: HeldShadowService
) -> None:
    # GIVEN a device whose "led on" state update was accepted
    settled_after_led_on(start_agent, held)

    # WHEN a relay command's state update is rejected as invalid (400): sending it again would not help
    held.delta("relay-1", command("relay", {"on": True}))
    held.answer_state(held.next_state_with("relay"), reply="rejected", code=400)
    held.outcomes.get(timeout=WAIT_S)

    # THEN no further state with the relay follows (the retry after a 429 comes within about a second)
    with pytest.raises(queue.Empty):
        held.next_state_with_within("relay", 2 * session.RESYNC_DELAY_S + 1.0)
