"""One device on the wire: its MQTT connection, shadows and commands.

paho callbacks only record into `inbox` and nudge the pump; `step()` (called
by the pump's loop) does everything else: connecting with backoff, subscribing,
reading both shadows after every connect, applying desired state, running
commands one at a time through `CommandCore`, and periodic telemetry.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iotbridge_contract import topics
from iotbridge_contract.commands import COMMANDS_SHADOW, QUEUE_OPENED, CommandState
from iotbridge_contract.mqtt import Backoff, Endpoint, make_client
from iotbridge_pi import __version__
from iotbridge_pi.executed_log import ExecutedLog
from iotbridge_pi.handlers import Action, Registry
from iotbridge_pi.model import DESIRED_SPECS, DeviceModel
from iotbridge_pi.protocol import Command, CommandCore, Plan, desired_changes, wall_ms
from iotbridge_pi.pump import CONNECT_RETRY_S
from iotbridge_pi.runner import Job

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from iotbridge_pi.pump import Pump

log = logging.getLogger(__name__)

MIN_TELEMETRY_GAP_S = 1.0
# AWS allows 20 shadow requests/s per thing. Updates wait in an outbox and go out as a
# token bucket allows (a flush sends at most one update per shadow), so a single command
# is reported at once and a burst of commands becomes a few merged updates.
UPDATE_RATE_PER_S = 8.0  # flushes per second; two shadows -> at most 16 requests/s
UPDATE_BURST = 3.0
# Outcomes of a command that changed state wait for the shadow service to accept that
# state (classic update/accepted with our clientToken): MQTT orders messages per topic
# only, and AWS IoT not even that, so publishing state first is not enough on its own.
# Unanswered this long, the outcomes go anyway: an outcome is never held back for good.
STATE_ACK_WAIT_S = 3.0
REBOOT_DOWNTIME_S = 1.0  # a simulated reboot stays off the network this long
RESYNC_DELAY_S = 1.0  # after a throttled or failed shadow update
# The commands shadow is read this often while connected: its answer (ours, by clientToken) keeps
# the service clock right when the monotonic clock runs fast (ServiceClock.observe).
CLOCK_CHECK_S = 6 * 3600.0
STABLE_CONNECTION_S = 10.0  # a connection that lasted this long resets the reconnect backoff
MAX_STATES_UNANSWERED = 64  # state updates remembered until answered (a lost answer must not grow memory)
# A get that is never answered (the shadow service was down, the reply was lost)
# is asked again: until one is answered the device has no service clock and
# ignores command deltas, so it must not wait forever.
GET_RETRY_S = (2.0, 60.0)  # first retry after, cap
# After a connect, the classic shadow's desired is applied before any command runs (a command
# must win over an older desired value, not be undone by it); AWS orders nothing across topics,
# so the commands shadow's messages wait for the classic get's answer, at most this long.
CLASSIC_FIRST_S = 5.0
# A handler past its deadline is answered TIMED_OUT but its thread cannot be stopped: the next
# command waits for it to return (two handlers never drive the hardware at once), this long at most.
STRAGGLER_WAIT_S = 30.0

Starter = Callable[[Action, DeviceModel, dict[str, Any]], Job]


def status_topic(thing: str) -> str:
    """Retained `{"connected": …}`; the broker publishes the last will here on an unclean drop."""
    return f"iotbridge/things/{thing}/status"


@dataclass(frozen=True, kw_only=True)
class SessionOptions:
    keepalive: int = 60
    kind: str = "pi-agent"  # reported in `agent`, so a simulated device never passes for a real one
    reboot: Callable[[], bool] | None = None  # a real reboot (systemctl), True if taken; None: simulated in-process
    first_connect_delay: float = 0.0


class DeviceSession:
    def __init__(
        self,
        thing: str,
        endpoint: Endpoint,
        *,
        state_dir_log: Callable[[], ExecutedLog],
        device: DeviceModel,
        registry: Registry,
        start_job: Starter,
        options: SessionOptions | None = None,
    ) -> None:
        self.thing = thing
        self.endpoint = endpoint
        self.device = device
        self.registry = registry
        self.options = options or SessionOptions()
        self._open_log = state_dir_log
        self._start_job = start_job
        self._pump: Pump | None = None
        self.inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self.client = self._make_client()
        self._ever_connected = False
        self._backoff = Backoff(base=0.5, cap=30.0)
        self._connected_at = 0.0
        self._next_connect = time.monotonic() + self.options.first_connect_delay
        self.connections = 0  # successful CONNACKs so far (tests and the fleet's counters read it)
        self.commands_run = 0
        self.started_at = wall_ms()
        self._reset_process_state()

    # -- wiring --------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        offline = json.dumps({"connected": False, "thing": self.thing, "reason": "lost"}).encode()
        client = make_client(self.thing, self.endpoint, clean_session=False)
        # The will is retained so a dashboard that subscribes later still sees it.
        client.will_set(status_topic(self.thing), offline, qos=1, retain=True)
        client.enable_logger(logging.getLogger("iotbridge_pi.mqtt"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        return client

    def bind(self, pump: Pump) -> None:
        self._pump = pump
        pump.attach(self.client)

    def _record(self, kind: str, data: Any = None) -> None:
        self.inbox.append((kind, data))
        if self._pump is not None:
            self._pump.notify(self)

    # paho callbacks: record only.
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        # paho sends again, right after this callback, what the last connection left unacknowledged.
        # Nothing of it is precious (outcomes are in the executed log; state and outcomes are
        # reported again after the gets), and an old state update would null desired keys a user
        # set since (the command that cleared them came before): dropped.
        client.drop_out_messages()
        self._record("connack", not reason.is_failure)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._record("disconnected", str(reason))

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._record("message", (msg.topic, msg.payload))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self._record("suback", mid)

    # -- state ---------------------------------------------------------------

    def _reset_process_state(self) -> None:
        """What a process restart forgets. The executed log is re-read from disk."""
        self.core = CommandCore(self._open_log(), self.registry.advertisement())
        self.connected = False
        self._sub_mid: int | None = None
        self._queue: collections.deque[Command] = collections.deque()
        self._job: tuple[Command, Job] | None = None
        self._straggler: tuple[Job, float] | None = None  # a timed-out handler still running, and until when to wait
        self._telemetry_due: float | None = None
        self._last_telemetry = 0.0
        self._reboot_at: float | None = None
        self._resync_at: float | None = None
        self._clock_check_at: float | None = None
        self._state_retry_at: float | None = None  # a throttled / failed state update is sent again then
        self._state_lost: set[str] = set()  # desired keys to clear again with that retry
        self._get_retry: dict[str | None, tuple[float, float]] = {}  # shadow -> (when, current wait)
        # Gets carry a token unique to this process and connection: the broker's persistent session
        # may hold answers to an earlier connection's gets, stale (an old clock, commands since done).
        self._get_nonce = uuid.uuid4().hex[:8]
        self._gets_sent = 0
        self._get_tokens: dict[str | None, set[str]] = {}
        self._queue_opened = False  # this run created its commands shadow (once: a 404 after it is a late answer)
        self._classic_synced = False  # this connection's classic get was answered
        self._commands_read = False  # this connection's commands get was answered and acted on
        self._held: list[tuple[str, dict[str, Any]]] = []  # commands-shadow messages waiting for it
        self._held_since: float | None = None
        # Desired keys a command set, with when (the service's ms): a desired value the shadow
        # stamped before that is older than the command, and is cleared, never applied (see _older).
        # From the executed log too: a crash can come before a command's clear was sent.
        self._commanded: dict[str, int] = {}
        executed = self.core.log
        for command_id in executed.ids():
            entry = executed.get(command_id)
            outcome = entry.outcome if entry is not None else None
            done_at = outcome.get("doneAt") if outcome and outcome.get("state") == CommandState.SUCCEEDED else None
            if isinstance(done_at, int) and entry is not None:
                for key in _STATE_OF_ACTION.get(entry.action, ()):
                    self._commanded[key] = max(done_at, self._commanded.get(key, 0))
        self._refused_logged: dict[str, str] = {}  # desired keys last refused, with why
        self._clear_outbox()
        self._flush_tokens = UPDATE_BURST
        self._tokens_at = time.monotonic()
        self._state_tokens = 0
        self._stopping = False
        self._draining = False  # stopping, or the system reboots: no queued command starts

    def _clear_outbox(self) -> None:
        # Nothing here is precious: outcomes are in the executed log and state is
        # reported in full after every connect.
        self._classic: dict[str, Any] = {}
        self._classic_clear: set[str] = set()
        self._classic_from_command = False  # the pending state includes what a command did
        self._state_gate: tuple[str, float] | None = None  # (clientToken, give up at): outcomes wait for it
        self._state_sent: dict[str, tuple[str, ...]] = {}  # clientToken -> desired keys it cleared, until answered
        self._outcomes_paid = False  # the flush that sent the state also paid for the outcomes held back

    def busy(self) -> bool:
        return self._job is not None or self.core.has_unsent

    # -- the main-loop side ------------------------------------------------------

    def step(self, now: float) -> float | None:
        while self.inbox:
            kind, data = self.inbox.popleft()
            self._handle(kind, data, now)
        if self._stopping:
            return None
        if not self.connected:
            # A handler that returns meanwhile is logged now (a restart must know it finished);
            # its outcome is reported from the log when the next connection's get lists it.
            self._advance_job(now, connected=False)
            if self._pending_connect() and now >= self._next_connect:
                if self._pump is None or self._pump.may_connect():
                    self._connect(now)
                else:
                    self._next_connect = now + CONNECT_RETRY_S
            return self._next_wake(now)
        # A reboot waits for the outcomes to go out: after a reconnect, for the commands get too, which
        # lists a reboot that finished while offline (logged, not reported) and reports it first.
        if self._reboot_at is not None and now >= self._reboot_at and self._commands_read and not self.core.has_unsent:
            self._reboot()
            return self._next_wake(time.monotonic())
        if self._held_since is not None and now >= self._held_since + CLASSIC_FIRST_S:
            log.warning("%s: no answer to the classic shadow's get; running commands without it", self.thing)
            self._release_held()
        self._advance_job(now)
        if self._resync_at is not None and now >= self._resync_at:
            self._resync_at = None
            self._get(COMMANDS_SHADOW)
        if self._clock_check_at is not None and now >= self._clock_check_at:
            self._clock_check_at = now + CLOCK_CHECK_S
            self._get(COMMANDS_SHADOW)
        if self._state_retry_at is not None and now >= self._state_retry_at:
            # What was lost is reported again as the hardware is now, not as it was then:
            # a newer value of the same key may have been accepted meanwhile.
            self._state_retry_at = None
            self._report_full_state(now, clear_desired=tuple(self._state_lost))
            self._state_lost = set()
        for shadow, (when, wait) in list(self._get_retry.items()):
            if now >= when:
                log.info("%s: no answer to get of the %s shadow; asking again", self.thing, shadow or "classic")
                self._get(shadow, wait=min(wait * 2, GET_RETRY_S[1]))
        if self._telemetry_due is not None and now >= self._telemetry_due:
            self._publish_telemetry(now)
        self._flush(now)
        return self._next_wake(now)

    def _pending_connect(self) -> bool:
        return self.client.socket() is None

    def _next_wake(self, now: float) -> float | None:
        times: list[float] = []
        if not self.connected:
            if self._pending_connect():
                times.append(self._next_connect)
            return min(times) if times else None
        if self._job is not None:
            times.append(self._job[1].deadline)  # the worker wakes the pump sooner when it is done
        if self._straggler is not None:
            times.append(self._straggler[1])  # its thread wakes the pump when it returns
        for t in (self._telemetry_due, self._reboot_at, self._resync_at, self._state_retry_at, self._clock_check_at):
            if t is not None:
                times.append(t)
        if self._held_since is not None:
            times.append(self._held_since + CLASSIC_FIRST_S)
        times.extend(when for when, _ in self._get_retry.values())
        if self._state_gate is not None:
            times.append(self._state_gate[1])
        elif self._outcomes_paid:
            times.append(now)
        elif self.core.has_unsent or self._classic or self._classic_clear:
            times.append(self._tokens_at + max(0.0, 1.0 - self._flush_tokens) / UPDATE_RATE_PER_S)
        return min(times) if times else None

    def _connect(self, now: float) -> None:
        try:
            if self._ever_connected:
                self.client.reconnect()
            else:
                self.client.connect(self.endpoint.host, self.endpoint.port, keepalive=self.options.keepalive)
                self._ever_connected = True
        except Exception as exc:
            delay = self._backoff.next_delay()
            log.info("%s: connect failed (%s); retrying in %.1f s", self.thing, exc, delay)
            self._next_connect = now + delay

    def _handle(self, kind: str, data: Any, now: float) -> None:
        if kind == "connack":
            if data:
                self._on_connected(now)
            else:
                log.warning("%s: the broker refused the connection", self.thing)
        elif kind == "disconnected":
            was = self.connected
            self.connected = False
            self._sub_mid = None
            self._get_retry.clear()  # every connect asks afresh
            self._get_tokens.clear()  # and answers to this connection's gets are stale after it
            self._classic_synced, self._held, self._held_since = False, [], None
            self._commands_read = False
            self._clear_outbox()
            # Commands not started yet wait for the next connection's gets, which list them again:
            # run at its CONNACK, one would start before the classic shadow's get is applied, and
            # an older desired value in that get would undo it.
            for command in self._queue:
                self.core.release(command.id)
            self._queue.clear()
            self.core.disconnected()
            if self._reboot_at is None:
                if was and now - self._connected_at >= STABLE_CONNECTION_S:
                    self._backoff.reset()  # it worked for a while: come back quickly
                delay = self._backoff.next_delay()
                self._next_connect = max(self._next_connect, now + delay)
                if was:
                    log.info("%s: disconnected (%s); reconnecting in %.1f s", self.thing, data, delay)
        elif kind == "suback":
            if data == self._sub_mid:
                self._get(None)
                self._get(COMMANDS_SHADOW)
        elif kind == "message" and self.connected:
            topic, payload = data
            self._on_shadow_message(topic, payload, now)

    def _on_connected(self, now: float) -> None:
        self.connected = True
        self.connections += 1
        # The backoff is reset only once this connection has lasted: a broker that drops us
        # right after CONNACK (another client with our id, a policy violation) must not see
        # us back at once forever (AWS allows one connect per second per client id).
        self._connected_at = now
        self._clock_check_at = now + CLOCK_CHECK_S
        online = {"connected": True, "thing": self.thing, "at": wall_ms()}
        self.client.publish(status_topic(self.thing), json.dumps(online), qos=1, retain=True)
        subs = []
        for shadow in (None, COMMANDS_SHADOW):
            for op, reply in (("get", "accepted"), ("get", "rejected"), ("update", "delta"), ("update", "rejected")):
                subs.append((topics.shadow_topic(self.thing, op, reply, shadow=shadow), 1))
        # Acknowledgements of our updates (matched by clientToken).
        for shadow in (None, COMMANDS_SHADOW):
            subs.append((topics.shadow_topic(self.thing, "update", "accepted", shadow=shadow), 1))
        _, self._sub_mid = self.client.subscribe(subs)

    def _get(self, shadow: str | None, *, wait: float = GET_RETRY_S[0]) -> None:
        self._get_retry[shadow] = (time.monotonic() + wait, wait)
        self._gets_sent += 1
        token = f"get.{self._get_nonce}.{self._gets_sent}"  # the shadow service echoes it in its answer
        self._get_tokens.setdefault(shadow, set()).add(token)
        payload = json.dumps({"clientToken": token}, separators=(",", ":"))
        self.client.publish(topics.shadow_topic(self.thing, "get", shadow=shadow), payload, qos=1)

    def _report_outcomes(self, outcomes: dict[str, dict[str, Any]]) -> None:
        self.core.queue_report(outcomes)

    def _report_state(self, reported: dict[str, Any], *, clear_desired: tuple[str, ...] = (), by_command: bool = False) -> None:
        self._classic.update(reported)
        self._classic_clear.update(clear_desired)
        self._classic_from_command |= by_command

    def _flush(self, now: float) -> None:
        self._flush_tokens = min(UPDATE_BURST, self._flush_tokens + (now - self._tokens_at) * UPDATE_RATE_PER_S)
        self._tokens_at = now
        if not self.connected:
            return
        if self._state_gate is not None:
            if now < self._state_gate[1]:
                return
            log.warning("%s: no answer to the state update %s; reporting outcomes anyway", self.thing, self._state_gate[0])
            self._open_state_gate()
        if self._outcomes_paid and self._classic_from_command:
            # Another command changed state meanwhile: its outcome is among those waiting,
            # so they all go behind its state, through the usual path.
            self._outcomes_paid = False
        if self._outcomes_paid:
            self._outcomes_paid = False
            update = self.core.take_update()
            if update is not None:
                self._update(COMMANDS_SHADOW, update)
            return
        if self._flush_tokens < 1.0:
            return
        sent = False
        # State first, outcomes after it is accepted: whoever sees a command SUCCEEDED
        # and then reads the classic shadow finds the state that command produced.
        if self._classic or self._classic_clear:
            state: dict[str, Any] = {"reported": self._classic}
            if self._classic_clear:
                state["desired"] = dict.fromkeys(self._classic_clear)
            # Every state update carries a token, so a rejection names what it lost.
            self._state_tokens += 1
            token = f"state.{self._state_tokens}"
            document: dict[str, Any] = {"state": state, "clientToken": token}
            if len(self._state_sent) < MAX_STATES_UNANSWERED:
                self._state_sent[token] = tuple(self._classic_clear)
            if self._classic_from_command and self.core.has_unsent:
                self._state_gate = (token, now + STATE_ACK_WAIT_S)
            self._update(None, document)
            self._classic, self._classic_clear, self._classic_from_command = {}, set(), False
            sent = True
        if self._state_gate is None:
            update = self.core.take_update()
            if update is not None:
                self._update(COMMANDS_SHADOW, update)
                sent = True
        if sent:
            self._flush_tokens -= 1.0

    def _open_state_gate(self) -> None:
        # One flush paid for the state and its outcomes: those go out without a new token.
        self._state_gate = None
        self._outcomes_paid = True

    def _update(self, shadow: str | None, document: dict[str, Any]) -> None:
        payload = json.dumps(document, separators=(",", ":"))
        self.client.publish(topics.shadow_topic(self.thing, "update", shadow=shadow), payload, qos=1)

    # -- shadow messages -----------------------------------------------------

    def _on_shadow_message(self, topic: str, payload: bytes, now: float) -> None:
        parsed = topics.parse_shadow_topic(topic)
        if parsed is None or parsed.thing != self.thing:
            return
        try:
            doc = json.loads(payload or b"{}")
        except ValueError:
            log.warning("%s: not JSON on %s", self.thing, topic)
            return
        if not isinstance(doc, dict):
            return
        what = (parsed.operation, parsed.reply)
        log.debug("%s: %s %s %s", self.thing, parsed.shadow or "classic", what, doc)
        token = doc.get("clientToken")
        if what[0] == "get" and not (isinstance(token, str) and token in self._get_tokens.get(parsed.shadow, ())):
            log.info("%s: ignoring an answer to a get of an earlier connection", self.thing)
            return
        if what == ("get", "accepted") or (what == ("get", "rejected") and doc.get("code") == 404):
            self._get_retry.pop(parsed.shadow, None)  # answered; other rejections (429, 500) are asked again
        if parsed.shadow == COMMANDS_SHADOW:
            if what == ("get", "accepted") or what == ("update", "delta"):
                if not self._classic_synced:
                    self._held.append((what[1], doc))
                    self._held_since = now if self._held_since is None else self._held_since
                else:
                    self._commands_message(what[1], doc)
            elif what == ("get", "rejected"):
                self._act_on(self.core.on_get_rejected(doc))
                self._commands_read = self._commands_read or doc.get("code") == 404  # no shadow: nothing to report
                if self.core.has_early and self.core.service_clock.now_ms() is None:
                    self._resync_at = now + RESYNC_DELAY_S  # deltas wait for a clock: a get finds the shadow now
                if doc.get("code") == 404 and not self._queue_opened:
                    # A new device opens its command queue: the API's first commands are then queued
                    # at once (it creates the shadow itself otherwise: two calls more per device), and
                    # the get that follows finds it, with the service's clock (a 404 need not carry it).
                    self._queue_opened = True
                    self._update(COMMANDS_SHADOW, QUEUE_OPENED)
                    self._get(COMMANDS_SHADOW)
            elif what == ("update", "accepted"):
                self.core.on_update_answered(doc)
            elif what == ("update", "rejected"):
                self.core.on_update_answered(doc)
                self._update_rejected(doc, now)
        elif parsed.shadow is None:
            if what == ("get", "accepted"):
                desired = (doc.get("state") or {}).get("desired") or {}
                # A value older than a command that set the key is cleared, not applied again: its
                # clear may be unsent or lost with a connection, or this answer late or a second one.
                overridden = self._older(desired, ((doc.get("metadata") or {}).get("desired")))
                # All of desired, not the delta: the delta is against the reported state from
                # before this (re)start, and a rebooted device's hardware may no longer match it.
                self._apply_desired({k: v for k, v in desired.items() if k not in overridden}, now)
                self._report_full_state(now, clear_desired=overridden)
                self._release_held()
            elif what == ("get", "rejected"):
                self._report_full_state(now)  # 404: a new device, its shadow starts here; else asked again
                if doc.get("code") == 404:
                    self._release_held()
            elif what == ("update", "delta"):
                # A delta published before a command's clear can arrive after the command ran.
                delta = doc.get("state") or {}
                older = self._older(delta, doc.get("metadata"))
                if self._apply_desired({k: v for k, v in delta.items() if k not in older}, now):
                    self._report_state(self.device.state())
            if what[0] == "update" and what[1] in ("accepted", "rejected"):
                token = doc.get("clientToken")
                cleared = self._state_sent.pop(str(token), None)
                if what[1] == "rejected":
                    self._state_rejected(doc, cleared, now)
                if self._state_gate is not None and token == self._state_gate[0]:
                    self._open_state_gate()

    def _older(self, desired: Any, stamps: Any) -> tuple[str, ...]:
        """Keys of `desired` whose value the shadow stamped before a command set them here.

        AWS orders nothing across topics and stamps whole seconds, and our clock of the service
        may run up to a second fast (ServiceClock): only a value stamped in an earlier second than
        the command's, by that margin, is older. One stamped in the command's own second counts as
        newer (a user's change is not dropped on a guess); one without a stamp as older."""
        if not isinstance(desired, dict):
            return ()
        older = []
        for key in desired:
            at = self._commanded.get(key)
            if at is None:
                continue
            meta = stamps.get(key) if isinstance(stamps, dict) else None
            ts = meta.get("timestamp") if isinstance(meta, dict) else None
            if not isinstance(ts, int) or isinstance(ts, bool) or ts * 1000 + 1999 <= at:
                older.append(key)
        return tuple(older)

    def _commands_message(self, kind: str, doc: dict[str, Any]) -> None:
        if kind == "accepted":
            self._commands_read = True
        if kind == "delta" and self.core.service_clock.now_ms() is None and COMMANDS_SHADOW not in self._get_retry:
            # No clock yet: this connection's get found no shadow, and AWS's 404 need not carry a
            # timestamp (a delta cannot set it). The delta says the shadow exists now: read it again.
            self._get(COMMANDS_SHADOW)
        self._act_on(self.core.on_get_accepted(doc) if kind == "accepted" else self.core.on_delta(doc))

    def _release_held(self) -> None:
        """The classic desired is applied (or given up on): the commands shadow's messages go through, in order."""
        self._classic_synced = True
        held, self._held, self._held_since = self._held, [], None
        for kind, doc in held:
            self._commands_message(kind, doc)

    def _state_rejected(self, doc: dict[str, Any], cleared: tuple[str, ...] | None, now: float) -> None:
        log.warning("%s: classic shadow update rejected: %s", self.thing, doc)
        code = doc.get("code")
        if isinstance(code, int) and (code == 429 or code >= 500):
            # Throttled or failed, not wrong: without another try the shadow would keep the
            # old state (and a desired value a command overrode) until the next reconnect.
            self._state_lost.update(cleared or ())
            if self._state_retry_at is None:
                self._state_retry_at = now + RESYNC_DELAY_S

    def _update_rejected(self, doc: dict[str, Any], now: float) -> None:
        log.warning("%s: commands shadow update rejected: %s", self.thing, doc)
        code = doc.get("code")
        if isinstance(code, int) and (code == 429 or code >= 500):
            # The outcomes are in the executed log: a fresh read re-reports them.
            self._resync_at = now + RESYNC_DELAY_S

    def _apply_desired(self, delta: dict[str, Any], now: float) -> bool:
        """Apply what can be applied; True if anything was (and so needs reporting).

        Refused keys are not reported on: AWS publishes a delta after every update that
        leaves one, so a report for them would bring them back at once, forever.
        """
        changes, refused = desired_changes(delta, DESIRED_SPECS)
        if refused and refused != self._refused_logged:
            log.warning("%s: desired state not applied: %s", self.thing, refused)
        self._refused_logged = refused  # logged once, not on every delta that repeats it
        self.device.apply(changes)
        if "interval" in changes:
            self._interval_changed(now)
        return bool(changes)

    def _interval_changed(self, now: float) -> None:
        # The sample already scheduled may be up to an old interval away: a new one applies at once.
        self._telemetry_due = min(self._telemetry_due or now, now + self.device.interval_s)

    def _report_full_state(self, now: float, *, clear_desired: tuple[str, ...] = ()) -> None:
        reported = {
            **self.device.state(),
            "actions": self.registry.advertisement(),
            "agent": {
                "kind": self.options.kind,
                "version": __version__,
                "hardware": self.device.hardware.kind,
                "startedAt": self.started_at,
            },
            "telemetry": self._telemetry(),
        }
        self._report_state(reported, clear_desired=clear_desired)
        self._last_telemetry = now
        self._telemetry_due = now + self.device.interval_s

    # -- commands ------------------------------------------------------------

    def _act_on(self, plan: Plan) -> None:
        log.debug("%s: run %s, answer %s", self.thing, [c.id for c in plan.run], sorted(plan.report))
        if plan.report:
            self._report_outcomes(plan.report)
        self._queue.extend(plan.run)

    def _advance_job(self, now: float, *, connected: bool = True) -> None:
        while True:
            if self._job is not None:
                command, job = self._job
                result = job.poll(time.monotonic())
                if result is None:
                    return
                self._job = None
                outcome = self.core.finish(command, result.state, result=result.result, error=result.error)
                self._after_command(command, result.state, outcome, now, report=connected)
                if not job.returned.is_set():
                    self._straggler = (job, now + STRAGGLER_WAIT_S)
            if self._straggler is not None:
                straggler, until = self._straggler
                if straggler.returned.is_set():
                    # What it did after its deadline is the hardware's state now: report it (offline,
                    # the full report after the next connect's gets does).
                    self._straggler = None
                    if connected:
                        self._report_state(self.device.state())
                elif now < until:
                    return
                else:
                    log.warning("%s: a timed-out %s handler is still running; going on without it",
                                self.thing, straggler.action.name)  # fmt: skip
                    self._straggler = None
            if not connected or not self._queue or self._reboot_at is not None or self._draining:
                return
            command = self._queue.popleft()
            instead = self.core.begin(command)  # EXPIRED, or FAILED when it cannot be logged: not run
            if instead is not None:
                self._report_outcomes({command.id: instead})
                continue
            action = self.registry.get(command.action)
            assert action is not None  # the core rejected unknown actions already
            self.commands_run += 1
            self._job = (command, self._start_job(action, self.device, command.params))

    def _after_command(self, command: Command, state: CommandState, outcome: dict[str, Any], now: float,
                       *, report: bool = True) -> None:  # fmt: skip
        if report:
            self._report_outcomes({command.id: outcome})
        if state is not CommandState.SUCCEEDED:
            return
        changed = {k: v for k, v in self.device.state().items() if k in _STATE_OF_ACTION.get(command.action, ())}
        at = self.core.service_clock.now_ms() or wall_ms()
        self._commanded.update(dict.fromkeys(changed, at))
        if changed and report:
            # A command supersedes an older desired value of the same key; left in
            # desired, it would show up as a delta and undo the command at once.
            self._report_state(changed, clear_desired=tuple(changed), by_command=True)
        if "interval" in changed:
            self._interval_changed(now)
        if self.device.reboot is not None:
            self._reboot_at = now + self.device.reboot.delay_ms / 1000.0
            self.device.reboot = None

    def _reboot(self) -> None:
        if self.options.reboot is not None:
            log.warning("%s: rebooting the system", self.thing)
            self._reboot_at = None
            # Going down: a command started now would be cut off. Refused, the agent goes on.
            self._draining = self.options.reboot()
            return
        log.info("%s: simulated reboot: dropping the connection and process state", self.thing)
        sock: Any = self.client.socket()
        self._reset_process_state()
        self._next_connect = time.monotonic() + REBOOT_DOWNTIME_S
        if sock is not None:
            # No DISCONNECT: like a power cut, so the broker publishes the last will.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- telemetry -----------------------------------------------------------

    def _telemetry(self) -> dict[str, Any]:
        return {**self.device.hardware.sensors.read(), "at": wall_ms()}

    def _publish_telemetry(self, now: float) -> None:
        if now - self._last_telemetry < MIN_TELEMETRY_GAP_S:
            self._telemetry_due = self._last_telemetry + MIN_TELEMETRY_GAP_S
            return
        self._report_state({"telemetry": self._telemetry()})
        self._last_telemetry = now
        self._telemetry_due = now + self.device.interval_s

    # -- shutdown ------------------------------------------------------------

    def drain(self) -> None:
        """Stopping: the command running may finish and report; no queued one starts (a command
        started now would be cut off, and answered FAILED for nothing). The next start's get lists them."""
        self._draining = True

    def shutdown(self) -> None:
        self._stopping = True
        if self.client.socket() is None:
            return
        if self.connected:
            offline = {"connected": False, "thing": self.thing, "reason": "shutdown", "at": wall_ms()}
            self.client.publish(status_topic(self.thing), json.dumps(offline), qos=1, retain=True)
        self.client.disconnect()


# Which classic shadow keys each built-in action changes.
_STATE_OF_ACTION: dict[str, tuple[str, ...]] = {"led": ("led",), "relay": ("relay",), "set_interval": ("interval",)}
