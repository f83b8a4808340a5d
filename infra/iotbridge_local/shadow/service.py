"""The Device Shadow service: one implementation behind both fronts (MQTT and HTTP).

What each request publishes (AWS "Device Shadow MQTT topics" / "Interacting with shadows"):

- MQTT `update`: success publishes `update/accepted`, `update/documents`, and
  `update/delta` when the resulting shadow has desired != reported (any update);
  failure publishes `update/rejected`.
- MQTT `get` / `delete`: `get|delete/accepted` or `get|delete/rejected`.
- HTTP UpdateThingShadow: on success the same three messages as an MQTT update
  (devices rely on delta); on failure nothing is published, the caller gets the
  HTTP error (AWS: "no MQTT error messages are emitted").
- HTTP DeleteThingShadow publishes `delete/accepted`; GetThingShadow publishes nothing.

Changes commit to SQLite before anything is published or answered, and the
commit and its publishes happen under one lock so subscribers see versions in
order. A crash between the commit and the publishes loses those messages: the
process that starts next publishes the delta of every shadow again
(`republish_deltas`), so no device misses a pending command or desired value.
More than `max_in_flight` requests in progress for one thing are rejected with
429 (AWS: 10 in-flight requests), and so are requests beyond `max_rate` per second
for one thing (AWS: 20), over MQTT and HTTP together: a token bucket per thing,
as full as one second's worth.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from iotbridge_contract import topics
from iotbridge_local.shadow import engine
from iotbridge_local.shadow.engine import Shadow, ShadowError
from iotbridge_local.shadow.store import ShadowStore

log = logging.getLogger("iotbridge.shadow")

Publish = Callable[[str, bytes], None]
Message = tuple[str, "dict[str, Any] | str"]  # topic, document (a str is already JSON)
MAX_IN_FLIGHT = 10
MAX_RATE = 20.0  # requests per second per thing (AWS IoT Device Shadow quota)
_PRUNE_AT = 4096  # buckets kept before the full ones are forgotten
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100


@dataclass
class Outcome:
    """What a request produced: the HTTP status and body, and the MQTT messages to publish."""

    status: int
    body: dict[str, Any]
    messages: list[Message] = field(default_factory=list)


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


class ShadowService:
    def __init__(
        self,
        store: ShadowStore,
        publish: Publish,
        *,
        clock: Callable[[], float] = time.time,
        max_in_flight: int = MAX_IN_FLIGHT,
        max_rate: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._publish = publish
        self._clock = clock
        self._monotonic = monotonic
        self.max_in_flight = max_in_flight
        self.max_rate = max_rate  # None: no rate limit
        self._in_flight: Counter[str] = Counter()
        self._in_flight_lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # thing -> (tokens, when counted)
        self._prune_at = _PRUNE_AT

    def now(self) -> int:
        return int(self._clock())

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in progress (a stop lets them finish); False if some still were."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._in_flight_lock:
                if not self._in_flight:
                    return True
            time.sleep(0.01)
        return False

    def _take_token(self, thing: str) -> bool:
        """One request's worth of the thing's rate; False when it has none left (caller holds the lock)."""
        if self.max_rate is None:
            return True
        now = self._monotonic()
        burst = max(self.max_rate, 1.0)  # a rate under 1/s still lets one request through now and then
        tokens, then = self._buckets.get(thing, (burst, now))
        tokens = min(burst, tokens + (now - then) * self.max_rate)
        if tokens < 1:
            self._buckets[thing] = (tokens, now)
            return False
        self._buckets[thing] = (tokens - 1, now)
        if len(self._buckets) > self._prune_at:  # forget the full buckets (a full one is the default)
            rate = self.max_rate
            self._buckets = {t: (n, at) for t, (n, at) in self._buckets.items() if n + (now - at) * rate < burst}
            self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))
        return True

    @contextmanager
    def _slot(self, thing: str) -> Any:
        with self._in_flight_lock:
            if self._in_flight[thing] >= self.max_in_flight:
                raise ShadowError(429, "Too Many Requests")
            if not self._take_token(thing):
                raise ShadowError(429, "Too Many Requests: over the thing's shadow requests per second")
            self._in_flight[thing] += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight[thing] -= 1
                if not self._in_flight[thing]:
                    del self._in_flight[thing]

    # ------------------------------------------------------------ operations

    def _run(self, thing: str, shadow: str | None, operation: str, payload: bytes, *, via_mqtt: bool) -> Outcome:
        token: str | None = None
        try:
            try:
                with self._slot(thing):
                    if operation == "update":
                        return self._update(thing, shadow, payload, via_mqtt=via_mqtt)
                    token = engine.parse_token_only(payload)
                    if operation == "get":
                        doc = engine.get_document(self.store.load(thing, shadow), thing, shadow, token, self.now())
                        return self._accepted(thing, shadow, "get", doc, via_mqtt=via_mqtt, http_publishes=False)
                    if operation == "delete":
                        return self._delete(thing, shadow, token, via_mqtt=via_mqtt)
                    raise ValueError(f"unknown shadow operation {operation!r}")
            except ShadowError:
                raise
            except Exception as exc:  # a bug here must still answer: an MQTT caller would wait forever
                log.exception("shadow %s of %s failed", operation, thing)
                raise ShadowError(500, "Internal service failure") from exc
        except ShadowError as err:
            if err.code == 429 and token is None:
                # Refused before the request was read: the caller still learns which one it was.
                token = engine.parse_token_only(payload)
            if err.client_token is None and token is not None:
                err.client_token = token
            doc = err.document(self.now())
            rejected = topics.shadow_topic(thing, operation, "rejected", shadow=shadow)
            messages: list[Message] = [(rejected, doc)] if via_mqtt else []
            return Outcome(err.code, doc, messages)

    def _accepted(
        self, thing: str, shadow: str | None, operation: str, doc: dict[str, Any], *, via_mqtt: bool, http_publishes: bool
    ) -> Outcome:
        messages: list[Message] = []
        if via_mqtt or http_publishes:
            messages.append((topics.shadow_topic(thing, operation, "accepted", shadow=shadow), doc))
        return Outcome(200, doc, messages)

    def _update(self, thing: str, shadow: str | None, payload: bytes, *, via_mqtt: bool) -> Outcome:
        request = engine.parse_update(payload)
        now = self.now()

        def change(current: Shadow | None) -> tuple[Shadow, engine.UpdateResult]:
            result = engine.apply_update(current, request, now)
            return result.shadow, result

        with self.store.serial():
            result = self.store.change(thing, shadow, change)
            outcome = Outcome(200, result.accepted)
            outcome.messages.append((topics.shadow_topic(thing, "update", "accepted", shadow=shadow), result.accepted))
            outcome.messages.append((topics.shadow_topic(thing, "update", "documents", shadow=shadow), result.documents_json))
            if result.delta is not None:
                outcome.messages.append((topics.shadow_topic(thing, "update", "delta", shadow=shadow), result.delta))
            self._send(outcome)  # inside the lock: subscribers see versions in commit order
            outcome.messages = []
        return outcome

    def _delete(self, thing: str, shadow: str | None, token: str | None, *, via_mqtt: bool) -> Outcome:
        now = self.now()

        def change(current: Shadow | None) -> tuple[Shadow, dict[str, Any]]:
            return engine.delete_document(current, thing, shadow, token, now)

        with self.store.serial():
            doc = self.store.change(thing, shadow, change)
            outcome = self._accepted(thing, shadow, "delete", doc, via_mqtt=via_mqtt, http_publishes=True)
            self._send(outcome)
            outcome.messages = []
        return outcome

    def _send(self, outcome: Outcome) -> None:
        for topic, doc in outcome.messages:
            self._publish(topic, doc.encode("utf-8") if isinstance(doc, str) else encode(doc))

    # ------------------------------------------------------------ fronts

    def handle(self, thing: str, shadow: str | None, operation: str, payload: bytes, *, via_mqtt: bool) -> Outcome:
        """Run one request and publish what it must publish; returns the response for HTTP."""
        outcome = self._run(thing, shadow, operation, payload, via_mqtt=via_mqtt)
        self._send(outcome)
        return outcome

    def handle_mqtt(self, topic: str, payload: bytes) -> Outcome | None:
        """A message on a request topic; None when the topic is not a shadow request."""
        parsed = topics.parse_shadow_topic(topic)
        if parsed is None or parsed.reply is not None:
            return None
        return self.handle(parsed.thing, parsed.shadow, parsed.operation, payload, via_mqtt=True)

    def republish_deltas(self) -> int:
        """Publish `/update/delta` again for every shadow whose desired and reported differ.

        After a crash: an update is committed before its messages go out, so the last ones
        may never have been published, and a device would not hear of a command until it
        reads its shadow again. Devices take a repeated delta as the same request.
        """
        sent = 0
        for thing, name in self.store.shadow_keys():
            with self.store.serial():  # read and sent between two updates: never an older delta after a newer
                shadow = self.store.load(thing, name)
                doc = None if shadow is None else engine.delta_document(shadow, self.now())
                if doc is not None:
                    self._publish(topics.shadow_topic(thing, "update", "delta", shadow=name), encode(doc))
                    sent += 1
        return sent

    def list_named_shadows(self, thing: str, page_size: int | None, next_token: str | None) -> dict[str, Any]:
        size = DEFAULT_PAGE_SIZE if page_size is None else page_size
        if size < 1 or size > MAX_PAGE_SIZE:
            raise ShadowError(400, f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
        names = self.store.named_shadows(thing)
        if next_token:
            names = [n for n in names if n > next_token]
        page = names[:size]
        doc: dict[str, Any] = {"results": page, "timestamp": self.now()}
        if len(names) > size:
            doc["nextToken"] = page[-1]
        return doc
