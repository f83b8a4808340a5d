"""The device side of the command protocol, with no sockets (docs/protocol.md).

Given the shadow documents a device receives, `CommandCore` decides which
commands to run, which to answer without running (EXPIRED, REJECTED, or an id
already done), and builds the `commands` shadow updates that report outcomes.
The Pi agent and the fleet simulator both drive this one class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iotbridge_contract import names
from iotbridge_contract.actions import ParamError, check_params, check_value
from iotbridge_contract.commands import HISTORY, CommandState, is_expired, number_or_zero, outcome_entry, prune_history
from iotbridge_pi.executed_log import ExecutedLog, LogEntry

logger = logging.getLogger("iotbridge_pi.protocol")

INTERRUPTED = "interrupted: the device restarted while it was running; not run again"
# An outcome update not acknowledged (update/accepted with our clientToken) after
# this long is presumed lost: a delta still listing its ids is answered again.
IN_FLIGHT_S = 10.0


def wall_ms() -> int:
    return int(time.time() * 1000)


class ServiceClock:
    """The shadow service's clock, as last seen in a document's `timestamp`.

    Expiry is judged by the service's clock, not the device's: a device without
    NTP (or an ESP32 without RTC) still decides the same way the API does.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._base_ms: int | None = None
        self._seen_at = 0.0

    def observe(self, document: dict[str, Any], *, fresh: bool = True) -> None:
        """Learn the time from a document. Only a `fresh` one (the answer to our own request)
        may set the clock first: a delta can have waited in the broker's queue for the
        device's persistent session, and its old timestamp would make expired commands
        look current. The clock never runs backwards (outcomes are ordered by `doneAt`), and
        only a fresh document may hold it back: one more than a second (the rounding below)
        behind it makes it stand still until the service's time catches up. A monotonic clock
        that runs fast (a crystal without NTP: 20 ppm gains 1.7 s a day; one that never waited
        would in months expire every command on arrival) is followed through the agent's
        periodic gets; a backlog of deltas that waited in the broker cannot hold it back."""
        ts = document.get("timestamp")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            return
        if self._base_ms is None and not fresh:
            return
        # `timestamp` is whole seconds (as on AWS): the service's time is somewhere in
        # [ts, ts + 1 s). Take the end, so a command is never started after it expired
        # (at worst it expires up to a second early).
        seen_ms = int(ts * 1000) + (999 if isinstance(ts, int) else 0)
        current = self.now_ms()
        if current is None or seen_ms > current:
            self._base_ms, self._seen_at = seen_ms, self._monotonic()
        elif fresh and current - seen_ms > 1000:  # stand still (from now) for the excess
            self._base_ms = current
            self._seen_at = self._monotonic() + (current - seen_ms - 1000) / 1000

    def now_ms(self) -> int | None:
        """The service's time now (seconds resolution), or None before any document."""
        if self._base_ms is None:
            return None
        return self._base_ms + max(0, int((self._monotonic() - self._seen_at) * 1000))


EARLY_DELTAS = 16  # held before the clock is known; each lists the whole pending set (at most 10)


@dataclass(frozen=True)
class Command:
    id: str
    action: str
    params: dict[str, Any]
    expires_at: int | None


@dataclass
class Plan:
    """What to do about one shadow message."""

    run: list[Command] = field(default_factory=list)  # start these, in issue order
    report: dict[str, dict[str, Any]] = field(default_factory=dict)  # outcomes to report now, nothing runs


class CommandCore:
    """One device's view of its `commands` shadow.

    `actions` is the advertisement (`{action: {param: spec}}`), the authority
    for REJECTED. `clock_ms` stamps `doneAt`; by default the service's clock
    (so `doneAt` compares with `issuedAt`), the device's own until a document is seen.
    """

    def __init__(
        self,
        log: ExecutedLog,
        actions: dict[str, dict[str, str]],
        *,
        clock_ms: Callable[[], int] | None = None,
        service_clock: ServiceClock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.actions = actions
        self.service_clock = service_clock or ServiceClock()
        self.clock_ms = clock_ms or (lambda: self.service_clock.now_ms() or wall_ms())
        self._claimed: set[str] = set()  # handed out to run in this process, not yet finished
        self._reported: dict[str, dict[str, Any]] = {}  # mirror of the shadow's reported outcomes
        # Outcomes decided but not yet sent, and sent ones not yet acknowledged. Until
        # the shadow applies an outcome, deltas keep listing its id; answering each of
        # those again would flood the shadow with duplicate updates.
        self._unsent: dict[str, dict[str, Any]] = {}
        self._in_flight: dict[str, tuple[float, set[str]]] = {}  # clientToken -> (sent at, ids)
        self._monotonic = monotonic
        self._tokens = 0
        self._early: list[dict[str, Any]] = []  # deltas that came before the clock (on_delta)

    # -- reading shadow messages -------------------------------------------------

    def on_get_accepted(self, document: dict[str, Any]) -> Plan:
        """`…/name/commands/get/accepted`: the full document after a (re)connect."""
        self.service_clock.observe(document)
        state = document.get("state") or {}
        reported = state.get("reported") or {}
        self._reported = {k: v for k, v in reported.items() if isinstance(v, dict) and "state" in v}
        # desired is the queue itself; it is more robust than delta, which for an
        # id that also has an outcome holds only the fields that differ.
        pending = state.get("desired") or {}
        version = document.get("version")
        plan = self._with_early(self._plan(pending), version if isinstance(version, int) else None)
        plan.report.update(self._corrections(plan))
        return plan

    def on_get_rejected(self, document: dict[str, Any]) -> Plan:
        """A 404 means no shadow yet: nothing pending, no history (and every early delta is newer)."""
        self.service_clock.observe(document)
        if document.get("code") != 404:
            return Plan()
        self._reported = {}
        return self._with_early(Plan(), None)

    def on_delta(self, document: dict[str, Any]) -> Plan:
        """`…/name/commands/update/delta`: commands added (or re-added) to desired."""
        self.service_clock.observe(document, fresh=False)
        if self.service_clock.now_ms() is None:
            # No trusted clock yet (a delta may have waited in the broker for days). AWS orders
            # nothing across topics, so this connection's get may already have been answered
            # without these commands: kept, and judged by the get's clock if newer than its document.
            self._early = [*self._early[-(EARLY_DELTAS - 1):], document]
            return Plan()
        return self._plan(document.get("state") or {})

    @property
    def has_early(self) -> bool:
        return bool(self._early)

    def _with_early(self, plan: Plan, version: int | None) -> Plan:
        """`plan`, and what the deltas held for the clock (on_delta) add, once it is known: those
        newer than the document of `version` (None: none existed, all are newer)."""
        if self.service_clock.now_ms() is None:
            return plan
        early, self._early = self._early, []
        for doc in early:
            later = doc.get("version")
            if version is not None and not (isinstance(later, int) and later > version):
                continue  # the document read already holds what it said
            more = self._plan(doc.get("state") or {})
            plan.run.extend(more.run)
            plan.report.update(more.report)
        return plan

    def _plan(self, pending: dict[str, Any]) -> Plan:
        plan = Plan()

        def issued(item: tuple[str, Any]) -> float:
            # Anyone with write access may put anything here: an order that cannot fail, or one
            # bad entry would stop every command (its own verdict comes from _judge).
            return number_or_zero(item[1].get("issuedAt") if isinstance(item[1], dict) else None)

        now_ms = self.service_clock.now_ms()
        settling = self._settling()
        for command_id, entry in sorted(pending.items(), key=issued):
            if entry is None or command_id in self._claimed or command_id in settling:
                continue
            done = self._already_done(command_id)
            if done is not None:
                plan.report[command_id] = done
                continue
            verdict = self._judge(command_id, entry, now_ms)
            if isinstance(verdict, Command):
                self._claimed.add(command_id)
                plan.run.append(verdict)
            else:
                action = entry.get("action") if isinstance(entry, dict) else None
                self._log_finished(command_id, str(action), verdict)
                plan.report[command_id] = verdict
        return plan

    def _already_done(self, command_id: str) -> dict[str, Any] | None:
        logged = self.log.get(command_id)
        if logged is not None:
            return self._logged_outcome(command_id, logged)
        # Not in our log (it was lost, or rotated out) but the shadow holds its outcome.
        return self._reported.get(command_id)

    def _logged_outcome(self, command_id: str, logged: LogEntry) -> dict[str, Any]:
        if logged.outcome is not None:
            return logged.outcome
        # Started before a crash or reboot and no outcome on disk: it ran, or may have.
        # The outcome line is not synced, so the shadow can know more than the log
        # (reported, then the power went); otherwise it is answered, never run again.
        known = self._reported.get(command_id)
        if known is None or known.get("state") == CommandState.UNKNOWN:  # the API's, not a device's word
            known = outcome_entry(CommandState.FAILED, logged.action, done_at=self.clock_ms(), error=INTERRUPTED)
        self._log_finished(command_id, logged.action, known)
        return known

    def _corrections(self, plan: Plan) -> dict[str, dict[str, Any]]:
        """Our outcomes of commands the API recorded UNKNOWN: it stopped waiting for them while
        we were away (contract.GIVE_UP_MS). The device's word replaces it."""
        busy = self._claimed | self._settling() | set(plan.report)
        found = {}
        for command_id, known in self._reported.items():
            logged = self.log.get(command_id)
            if known.get("state") == CommandState.UNKNOWN and command_id not in busy and logged is not None:
                found[command_id] = self._logged_outcome(command_id, logged)
        return found

    def _judge(self, command_id: str, entry: Any, now_ms: int | None) -> Command | dict[str, Any]:
        asked = entry.get("params") if isinstance(entry, dict) else None
        asked = asked if isinstance(asked, dict) else None

        def reject(action: str, why: str) -> dict[str, Any]:
            return outcome_entry(CommandState.REJECTED, action, done_at=self.clock_ms(), error=why, params=asked)

        if not isinstance(entry, dict) or not isinstance(entry.get("action"), str):
            return reject("unknown", "malformed command: expected an object with an action")
        action = entry["action"]
        try:
            names.command_id(command_id)
        except names.InvalidName as exc:
            return reject(action, str(exc))
        if action not in self.actions:
            return reject(action, f"unknown action {action!r}; known: {', '.join(sorted(self.actions))}")
        params = entry.get("params", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return reject(action, "params must be an object")
        try:
            check_params(self.actions[action], params)
        except ParamError as exc:
            return reject(action, str(exc))
        expires_at = entry.get("expiresAt")
        expires = expires_at if isinstance(expires_at, int) and not isinstance(expires_at, bool) else None
        if now_ms is not None and is_expired(entry, now_ms):
            return outcome_entry(CommandState.EXPIRED, action, done_at=self.clock_ms(), params=params)
        return Command(command_id, action, params, expires)

    # -- running -------------------------------------------------------------

    def begin(self, command: Command) -> dict[str, Any] | None:
        """Call right before the handler starts. Returns an outcome instead when it must not
        run: EXPIRED if it ran out of time while it waited behind others, FAILED if it could
        not be recorded as started (run unrecorded, a restart could run it again)."""
        now_ms = self.service_clock.now_ms()
        if command.expires_at is not None and now_ms is not None and now_ms > command.expires_at:
            return self.finish(command, CommandState.EXPIRED)
        try:
            self.log.started(command.id, command.action)  # durable before anything happens
        except OSError as exc:  # disk full, read-only SD card: nothing ran, and the caller hears why
            logger.error("command %s not run: the executed log cannot be written: %s", command.id, exc)
            self._claimed.discard(command.id)
            return outcome_entry(CommandState.FAILED, command.action, done_at=self.clock_ms(), params=command.params,
                                 error=f"not run: the device cannot record commands ({exc.strerror or exc})")  # fmt: skip
        return None

    def finish(self, command: Command, state: CommandState, *, result: Any = None, error: str | None = None) -> dict[str, Any]:
        done_at = self.clock_ms()
        try:
            outcome = outcome_entry(state, command.action, done_at=done_at, result=result, error=error, params=command.params)
        except (TypeError, ValueError) as exc:  # a handler's result that JSON cannot carry (a datetime, bytes, a set)
            outcome = outcome_entry(CommandState.FAILED, command.action, done_at=done_at, params=command.params,
                                    error=f"the handler's result is not JSON: {exc}")  # fmt: skip
        self._log_finished(command.id, command.action, outcome)
        self._claimed.discard(command.id)
        return outcome

    def _log_finished(self, command_id: str, action: str, outcome: dict[str, Any]) -> None:
        try:
            self.log.finished(command_id, action, outcome)
        except OSError as exc:  # report it anyway: a restart answers a logged start INTERRUPTED, never re-runs it
            logger.error("outcome of %s not logged: %s", command_id, exc)

    # -- writing -------------------------------------------------------------

    # -- sending outcomes ------------------------------------------------------

    def _settling(self) -> set[str]:
        """Ids whose outcome is waiting to be sent or to be acknowledged."""
        now = self._monotonic()
        for token in [t for t, (sent, _) in self._in_flight.items() if now - sent > IN_FLIGHT_S]:
            del self._in_flight[token]
        ids = set(self._unsent)
        for _, in_flight in self._in_flight.values():
            ids |= in_flight
        return ids

    def queue_report(self, outcomes: dict[str, dict[str, Any]]) -> None:
        """Outcomes to send with the next `take_update`."""
        self._unsent.update(outcomes)

    @property
    def has_unsent(self) -> bool:
        return bool(self._unsent)

    def take_update(self) -> dict[str, Any] | None:
        """The next outcome update to publish (at most HISTORY outcomes, oldest first), or None."""
        if not self._unsent:
            return None
        ordered = sorted(self._unsent.items(), key=lambda kv: number_or_zero(kv[1].get("doneAt")))  # may be anything
        batch = dict(ordered[:HISTORY])
        for command_id in batch:
            del self._unsent[command_id]
        self._tokens += 1
        token = f"out.{self._tokens}"  # the shadow echoes it back; the "." keeps it apart from any command id (the API's token)
        self._in_flight[token] = (self._monotonic(), set(batch))
        return {**self.report_update(batch), "clientToken": token}

    def on_update_answered(self, document: dict[str, Any]) -> bool:
        """`update/accepted` or `update/rejected` of the commands shadow; True if it answers one of ours."""
        token = document.get("clientToken")
        return isinstance(token, str) and self._in_flight.pop(token, None) is not None

    def release(self, command_id: str) -> None:
        """A command handed out to run and not started: the next document that lists it may hand it out again."""
        self._claimed.discard(command_id)

    def disconnected(self) -> None:
        """Nothing in flight survives a connection: the next get re-reports from the log."""
        self._unsent.clear()
        self._in_flight.clear()

    def report_update(self, outcomes: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The `commands` shadow update for these outcomes: each reported and
        removed from desired in the same update, plus the oldest history nulled."""
        # The new outcomes always stay; the oldest of the others make room for them.
        others = {k: v for k, v in self._reported.items() if k not in outcomes}
        pruned = prune_history(others, keep=max(0, HISTORY - len(outcomes)))
        for k in pruned:
            self._reported.pop(k, None)
        self._reported.update(outcomes)
        return {"state": {"desired": dict.fromkeys(outcomes), "reported": {**outcomes, **pruned}}}


def desired_changes(delta: dict[str, Any], specs: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split a classic shadow delta into the known keys to apply and the refused ones (with why)."""
    apply: dict[str, Any] = {}
    refused: dict[str, str] = {}
    for key, value in delta.items():
        spec = specs.get(key)
        if spec is None:
            refused[key] = "not a state this device has"
            continue
        try:
            check_value(key, spec, value)
        except ParamError as exc:
            refused[key] = str(exc)
            continue
        apply[key] = value
    return apply, refused
