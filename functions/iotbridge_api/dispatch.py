"""Submitting a command to a device and finding out what became of it.

The device's `commands` named shadow is the queue and the record (see
docs/protocol.md): desired.{id} is pending, reported.{id} is the outcome.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from iotbridge_api import errors, iot, waiting
from iotbridge_api.models import CommandRequest, CommandView
from iotbridge_api.observability import logger
from iotbridge_contract import actions as contract_actions
from iotbridge_contract import commands as contract
from iotbridge_contract.commands import COMMANDS_SHADOW, PRESENCE_SHADOW, CommandState

MAX_SUBMIT_ATTEMPTS = 8  # optimistic-lock retries when many callers race on one device
# A shadow read that failed (throttled, AWS IoT unreachable): after the command is queued, it ends the wait.
_READ_FAILED = (errors.Throttled, errors.UpstreamError)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Device:
    thing: str
    shadow: dict[str, Any]
    presence: dict[str, Any] | None

    @property
    def reported(self) -> dict[str, Any]:
        state = self.shadow.get("state", {})
        return state.get("reported", {}) if isinstance(state, dict) else {}

    @property
    def actions(self) -> dict[str, dict[str, str]]:
        advertised = self.reported.get("actions")
        return advertised if isinstance(advertised, dict) else {}

    @property
    def connected(self) -> bool:
        return bool(_reported(self.presence).get("connected", False))

    @property
    def last_seen(self) -> int | None:
        at = _reported(self.presence).get("at")
        return at if isinstance(at, int) else None


def _reported(doc: dict[str, Any] | None) -> dict[str, Any]:
    state = (doc or {}).get("state", {})
    return state.get("reported", {}) if isinstance(state, dict) else {}


def _desired(doc: dict[str, Any] | None) -> dict[str, Any]:
    state = (doc or {}).get("state", {})
    return state.get("desired", {}) if isinstance(state, dict) else {}


# Reads that do not depend on each other go out together: each is a round trip to AWS IoT.
_reads = ThreadPoolExecutor(max_workers=8, thread_name_prefix="shadow-read")


def read_together(thing: str, *shadows: str | None) -> list[dict[str, Any] | None]:
    # Each in a copy of this request's context: its cutoff holds in the pool's threads too.
    futures = [_reads.submit(contextvars.copy_context().run, iot.get_shadow, thing, shadow) for shadow in shadows]
    return [f.result() for f in futures]


def load_device(thing: str, *also: str, presence: bool = True) -> tuple[Device, list[dict[str, Any] | None]]:
    """The device (classic shadow + presence unless not wanted), and the named shadows in `also`, read at once."""
    if presence:
        shadow, presence_doc, *rest = read_together(thing, None, PRESENCE_SHADOW, *also)
    else:
        (shadow, *rest), presence_doc = read_together(thing, None, *also), None
    if shadow is None:
        raise errors.DeviceNotFound(f"no device has reported as {thing!r}", details={"thing": thing})
    return Device(thing, shadow, presence_doc), rest


def _ms(value: Any) -> int | None:
    """A timestamp as the API documents it (integer ms), whatever a device or tool wrote into the shadow."""
    number = contract.number_or_zero(value)
    return int(number) if number else None


def view(thing: str, cid: str, doc: dict[str, Any] | None, *, connected: bool) -> CommandView | None:
    """The command's current view from the commands shadow, or None if unknown."""
    outcome = _reported(doc).get(cid)
    if isinstance(outcome, dict):
        return CommandView(
            id=cid, thing=thing, action=str(outcome.get("action", "")), state=str(outcome.get("state")),
            result=outcome.get("result"), error=contract.outcome_error(outcome), doneAt=_ms(outcome.get("doneAt")),
        )  # fmt: skip
    pending = _desired(doc).get(cid)
    if isinstance(pending, dict):
        params = pending.get("params")
        return CommandView(
            id=cid, thing=thing, action=str(pending.get("action", "")),
            state=(CommandState.SENT if connected else CommandState.QUEUED).value,
            params=params if isinstance(params, dict) else None,
            issuedAt=_ms(pending.get("issuedAt")), expiresAt=_ms(pending.get("expiresAt")),
        )  # fmt: skip
    return None


def submit(thing: str, request: CommandRequest, *, deadline: float) -> tuple[CommandView, bool]:
    """Queue the command (once) and wait for its outcome until `deadline` (monotonic).

    Returns the view and whether it is terminal. Presence is read only when it matters:
    for `ifOffline: fail`, and to tell SENT from QUEUED when the wait runs out.
    """
    started = time.monotonic()
    check_online = request.ifOffline == "fail"
    device, (commands_doc,) = load_device(thing, COMMANDS_SHADOW, presence=check_online)
    cid = request.id or contract.new_id()
    # A retry of a known id gets that command, whatever changed since (the device went offline,
    # stopped advertising the action): it was accepted once, and a 4xx now would say it was not.
    current = _existing(thing, cid, request, commands_doc) if request.id else None
    since = None
    if current is None:
        _check_acceptable(device, request, check_online=check_online)
        current = _enqueue(thing, cid, request, commands_doc)
        since = time.monotonic()
    queued = current if current.state not in _TERMINAL else None  # pending: its params and times, for the outcome
    # From here on the command is in the device's queue: a read that fails (throttled, AWS IoT
    # unreachable) ends the wait with what is known, never with an error that hides the id.
    if current.state not in _TERMINAL:
        with contextlib.suppress(*_READ_FAILED):
            current = wait_for_outcome(thing, cid, deadline=deadline, since=since, request=request, last=current)
    if current.state in _TERMINAL:
        if queued is not None:
            # An outcome keeps no params nor times; this call saw them pending, so it knows them.
            current.params, current.issuedAt, current.expiresAt = queued.params, queued.issuedAt, queued.expiresAt
        current.latencyMs = round((time.monotonic() - started) * 1000, 3)
        with contextlib.suppress(*_READ_FAILED):  # the outcome stands without it
            after = iot.get_shadow(thing)
            current.reported = {k: v for k, v in _reported(after).items() if k != "actions"}
    elif not check_online:  # still pending: whether it was delivered depends on the device being connected
        with contextlib.suppress(*_READ_FAILED):  # else SENT: it is in the queue
            presence = iot.get_shadow(thing, PRESENCE_SHADOW)
            current.state = (CommandState.SENT if _reported(presence).get("connected") else CommandState.QUEUED).value
    return current, current.state in _TERMINAL


_TERMINAL = {s.value for s in CommandState if s.terminal}


def _check_acceptable(device: Device, request: CommandRequest, *, check_online: bool) -> None:
    """Refuse a new command the device cannot take: unknown action, bad params, offline with ifOffline=fail."""
    known = device.actions
    if request.action not in known:
        raise errors.UnknownAction(
            f"{device.thing} does not advertise the action {request.action!r}", details={"known": sorted(known)}
        )
    try:
        contract_actions.check_params(known[request.action], request.params)
    except contract_actions.ParamError as exc:
        raise errors.InvalidParams(str(exc), details={"spec": known[request.action]}) from exc
    if len(contract.compact(request.params)) > contract.MAX_PARAMS_BYTES:
        raise errors.PayloadTooLarge(f"params exceed {contract.MAX_PARAMS_BYTES} bytes as compact JSON")
    if check_online and not device.connected:
        raise errors.DeviceOffline(f"{device.thing} is offline", details={"thing": device.thing, "lastSeen": device.last_seen})


def _existing(thing: str, cid: str, request: CommandRequest, doc: dict[str, Any] | None) -> CommandView | None:
    """The command `cid` if the shadow has it (done or pending) with this action and params; None if unknown."""
    outcome = _reported(doc).get(cid)
    if isinstance(outcome, dict):
        _check_same(cid, request, outcome)
        return view(thing, cid, doc, connected=True)  # already done: the retry gets the same outcome
    pending = _desired(doc).get(cid)
    if isinstance(pending, dict):
        if not contract.is_same_command(pending, request.action, request.params):
            raise errors.IdConflict(f"command {cid} exists with other action or params", details={"id": cid})
        current = view(thing, cid, doc, connected=True)
        if current is not None and doc is not None and contract.expired_long_ago(pending, now_ms()):
            return _end_if_unanswered(thing, cid, doc, current)
        return current  # already queued: join the wait
    return None


def _check_same(cid: str, request: CommandRequest, outcome: Any) -> None:
    """Raise IdConflict if `outcome` (of command `cid`) is of another action or params than `request`."""
    if isinstance(outcome, dict) and not contract.is_same_command(outcome, request.action, request.params):
        raise errors.IdConflict(f"command {cid} exists with other action or params", details={"id": cid})


def _enqueue(thing: str, cid: str, request: CommandRequest, doc: dict[str, Any] | None) -> CommandView:
    """Add desired.{cid} once. Returns the command's view: as it already was (a retry), or as written.

    Entries that ended without their device's word (contract.unanswered: expired long ago for a
    device that never came back, or unanswered long after by one that may have started them) are
    recorded EXPIRED or UNKNOWN in the same write, so they neither block the queue nor read as
    pending; entries that are no command object (written around the API) are removed.
    """
    for attempt in range(MAX_SUBMIT_ATTEMPTS):
        if attempt:
            doc = iot.get_shadow(thing, COMMANDS_SHADOW)  # someone changed it since: read again
        existing = _existing(thing, cid, request, doc)
        if existing is not None:
            return existing
        if doc is None:  # a device's first command: its commands shadow is created, then read again
            try:
                iot.update_shadow(thing, contract.QUEUE_OPENED, COMMANDS_SHADOW)
            finally:
                waiting.note_request(thing, COMMANDS_SHADOW)
            continue
        desired, issued = _desired(doc), now_ms()
        presence = _presence_if_needed(thing, desired, issued)
        if contract.live_pending(desired, issued, presence) >= contract.MAX_PENDING:
            raise errors.TooManyPending(
                f"{thing} already has {len(desired)} pending commands (at most {contract.MAX_PENDING})"
            )
        entry = contract.pending_entry(request.action, request.params, issued_at=issued, expires_at=issued + request.ttlMs)
        update: dict[str, Any] = {
            "state": contract.queue_state(desired, _reported(doc), cid, entry, issued, presence), "clientToken": cid,
            "version": doc["version"],  # optimistic lock: nobody else took this id or a place meanwhile
        }  # fmt: skip
        try:
            iot.update_shadow(thing, update, COMMANDS_SHADOW)
        except iot.VersionConflict:
            continue
        except _READ_FAILED as exc:
            # A write that timed out may still land: the id is what lets the caller retry without a second run.
            maybe = "" if isinstance(exc, errors.Throttled) else "; the command may be queued"
            raise type(exc)(f"{exc.message}{maybe}: retry with its id {cid}", details={"thing": thing, "id": cid}) from exc
        finally:
            waiting.note_request(thing, COMMANDS_SHADOW)
        written = view(thing, cid, {"state": {"desired": {cid: entry}}}, connected=True)
        assert written is not None  # a pending entry always has a view
        return written
    raise errors.Throttled(f"too many concurrent commands for {thing}; retry")


def wait_for_outcome(
    thing: str, cid: str, *, deadline: float, since: float | None = None, request: CommandRequest | None = None,
    last: CommandView | None = None,
) -> CommandView:
    """The command's view once terminal, or the last one seen (else `last`) when `deadline` passes (SENT if pending).

    With `request`, this id pending or done with other action or params is a conflict (a writer
    around the API, or an entry a device or a bulk job wrote meanwhile).
    """
    seen: list[CommandView | None] = [None]

    def done(doc: dict[str, Any] | None) -> bool:
        if request is not None:
            _check_same(cid, request, _reported(doc).get(cid) or _desired(doc).get(cid))
        seen[0] = view(thing, cid, doc, connected=True)
        return seen[0] is not None and seen[0].state in _TERMINAL

    waiting.poll_until(thing, COMMANDS_SHADOW, done, deadline, since=since)
    if seen[0] is None and last is None:  # deadline hit before the first read
        seen[0] = view(thing, cid, iot.get_shadow(thing, COMMANDS_SHADOW), connected=True)
    result = seen[0] or last
    if result is None:
        raise errors.UpstreamError(f"command {cid} vanished from {thing}'s shadow")
    return result


def lookup(thing: str, cid: str) -> CommandView:
    doc, presence = read_together(thing, COMMANDS_SHADOW, PRESENCE_SHADOW)
    current = view(thing, cid, doc, connected=bool(_reported(presence).get("connected")))
    if current is None:
        raise errors.CommandNotFound(
            f"{thing} has no command {cid} (devices keep their last {contract.HISTORY} outcomes)",
            details={"thing": thing, "id": cid},
        )
    if current.state not in _TERMINAL and doc is not None:
        return _end_if_unanswered(thing, cid, doc, current, presence=_reported(presence) or None)
    return current


_UNREAD: dict[str, Any] = {}  # presence not read yet (None is a device that never connected)


def _presence_if_needed(thing: str, desired: dict[str, Any], now: int) -> dict[str, Any] | None:
    """The device's presence (reported) when judging `desired` needs it: only for entries that
    expired long ago (contract.unanswered), so a command's usual path reads no more."""
    return _presence_of(thing) if contract.needs_presence(desired, now) else None


def _presence_of(thing: str) -> dict[str, Any] | None:
    """The presence shadow's reported state; None for a device that never connected."""
    return _reported(iot.get_shadow(thing, PRESENCE_SHADOW)) or None


def _end_if_unanswered(thing: str, cid: str, doc: dict[str, Any], current: CommandView,
                       presence: dict[str, Any] | None = _UNREAD) -> CommandView:  # fmt: skip
    """A command still pending long after it expired, recorded as it ended (contract.unanswered):
    EXPIRED if its device never took it; UNKNOWN if the device may have started it and has not
    answered for GIVE_UP_MS since. Until then it stays pending: a device that lost its connection
    mid-command reports the outcome when it is back."""
    if current.expiresAt is None or now_ms() <= current.expiresAt + contract.EXPIRY_GRACE_MS:
        return current
    if presence is _UNREAD:
        try:
            presence = _presence_of(thing)
        except _READ_FAILED:
            return current  # a command that was queued is never answered with a read's error: pending, as it may be
    now = now_ms()
    ended = contract.unanswered(_desired(doc).get(cid), now, presence)
    if ended is None:
        return current
    outcome = contract.unanswered_outcome(ended, _desired(doc).get(cid), now)
    # The oldest outcomes go, as in every write of an outcome: the shadow stays within 8 KB.
    reported = {**contract.prune_history({**_reported(doc), cid: outcome}), cid: outcome}
    update = {"state": {"desired": {cid: None}, "reported": reported}, "version": doc["version"]}
    try:
        iot.update_shadow(thing, update, COMMANDS_SHADOW)
    except iot.VersionConflict:
        return lookup(thing, cid)  # the device moved first: its word stands
    except errors.ApiError as exc:
        # Recording it is housekeeping; the answer is true either way (it ended, as said, without
        # the device's word). A read must not fail on it, nor answer a write's error codes; the
        # next read tries again.
        logger.warning("unanswered command not recorded", extra={"thing": thing, "id": cid, "code": exc.code})
    return CommandView(id=cid, thing=thing, action=current.action, state=ended.value,
                       error=contract.outcome_error(outcome), doneAt=outcome["doneAt"])  # fmt: skip


def history(thing: str) -> list[CommandView]:
    doc, presence = read_together(thing, COMMANDS_SHADOW, PRESENCE_SHADOW)
    connected = bool(_reported(presence).get("connected"))
    ids = list(_desired(doc)) + list(_reported(doc))
    views = [v for cid in dict.fromkeys(ids) if (v := view(thing, cid, doc, connected=connected))]
    now = now_ms()
    for v in views:  # what a GET of the command would record
        entry = {"expiresAt": v.expiresAt, "issuedAt": v.issuedAt}
        if v.state not in _TERMINAL and (ended := contract.unanswered(entry, now, _reported(presence) or None)):
            v.state, v.error = ended.value, contract.UNANSWERED_ERRORS[ended]
    # newest first: pending by issue time, done by completion time
    views.sort(key=lambda v: -(v.doneAt or v.issuedAt or 0))
    return views
