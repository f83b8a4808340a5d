"""Commands as they live in a device's `commands` named shadow.

desired.{id}  = a pending command, written by the API (the queue)
reported.{id} = its outcome, written by the device in the same update that
                sets desired.{id} to null (so a command is never both)
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
from typing import Any

COMMANDS_SHADOW = "commands"
PRESENCE_SHADOW = "presence"

# Budget inside AWS's 8 KB (desired + reported) shadow document.
MAX_PENDING = 10  # also AWS's in-flight shadow requests per thing
HISTORY = 16  # outcomes a device keeps in reported; older ones are nulled
MAX_PARAMS_BYTES = 512  # compact JSON of params
MAX_RESULT_BYTES = 256  # compact JSON of a result
MAX_ERROR_CHARS = 160
DEFAULT_TTL_MS = 60_000
MAX_TTL_MS = 7 * 24 * 3600 * 1000
EXPIRY_GRACE_MS = 30_000  # > the longest a handler may run: after this a pending, expired command never ran
# A command its device may have started, still unanswered this long after it expired (and its grace),
# is recorded UNKNOWN: a device that died for good must not hold a place in its queue, or a job, forever.
GIVE_UP_MS = 3_600_000
# AWS IoT: levels of keys in a shadow's desired or reported section (its limits page: 5, its
# example {"one": {"two": {"three": {"four": {"five": {}}}}}}; the 400's text, counting the
# section itself, says "maximum is 6"). An array's items count as a level too, to be safe.
MAX_STATE_LEVELS = 5

# The write that creates a device's commands shadow, before its first command is queued. Commands
# are queued only by versioned writes (the pending limit and an id's params are checked against
# the version read), and a versioned write needs an existing shadow: writes without one from
# requests at once would all pass the limit, and two entries of one id would merge (objects merge).
# Nothing reads this key: outcomes are objects, and the ESP32's history keeps integer `doneAt`s only;
# no command or job id can be it (":" is no id character).
QUEUE_OPENED = {"state": {"reported": {"queue:opened": True}}}


class CommandState(enum.StrEnum):
    QUEUED = "QUEUED"  # in desired; the device was offline when asked
    SENT = "SENT"  # in desired; the device is online and has not answered yet
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"  # the handler ran and raised
    REJECTED = "REJECTED"  # unknown action or bad params: nothing ran
    TIMED_OUT = "TIMED_OUT"  # the handler ran past its own deadline
    EXPIRED = "EXPIRED"  # its time-to-live ran out before it could start
    # The device may have started it and never reported (GIVE_UP_MS after it expired); recorded by the
    # API. The one terminal state that may change: a device that reports the outcome later replaces it.
    UNKNOWN = "UNKNOWN"

    @property
    def terminal(self) -> bool:
        return self not in (CommandState.QUEUED, CommandState.SENT)


def new_id() -> str:
    """A fresh command or job id: 26 characters of base32 (a-z, 2-7), 128 random bits.

    Not uuid4().hex's 32: a device holds the id of every command it has pending or
    reported (an ESP32, as 64-byte strings instead of 80), and a commands shadow
    repeats each id in its state and metadata, inside AWS's 8 KB.
    """
    return base64.b32encode(os.urandom(16)).decode("ascii").rstrip("=").lower()


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def key_levels(value: Any) -> int:
    """Keys (or array items) on the longest path down from `value`: a scalar, {} and [] are 0,
    {"a": 1} and {"a": {}} are 1. Without recursion: a body may nest 900 deep."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, level = todo.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            deepest = max(deepest, level + 1)
            todo.append((child, level + 1))
    return deepest


def pending_entry(action: str, params: dict[str, Any], *, issued_at: int, expires_at: int) -> dict[str, Any]:
    return {"action": action, "params": params, "issuedAt": issued_at, "expiresAt": expires_at}


def params_digest(params: Any) -> str:
    """12 hex chars that tell two commands' params apart without keeping them in the outcome."""
    return hashlib.sha256(compact(params if params is not None else {}).encode()).hexdigest()[:12]


def is_same_command(entry: Any, action: str, params: dict[str, Any]) -> bool:
    """Whether a pending entry or an outcome under some id is this command (the same action and params).

    Outcomes keep only a digest of their params; one without it (older devices) is checked by action.
    """
    if not isinstance(entry, dict) or entry.get("action") != action:
        return False
    if "params" in entry:  # as JSON, like the digest: true is not 1, 5.0 is not 5
        return compact(entry["params"]) == compact(params)
    digest = entry.get("paramsDigest")
    return not digest or digest == params_digest(params)


def outcome_entry(
    state: CommandState, action: str, *, done_at: int, result: Any = None, error: str | None = None,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A reported outcome. Keys with no value are left out: null deletes in a shadow.

    With `params`, the outcome carries their digest, so a retry of the id with other params
    is recognised as a conflict even after the command finished.
    """
    if not state.terminal:
        raise ValueError(f"{state} is not a terminal state")
    entry: dict[str, Any] = {"state": state.value, "action": action, "doneAt": done_at}
    if params is not None:
        entry["paramsDigest"] = params_digest(params)
    if result is not None:
        # reported.{id}.result: two levels under reported, so AWS's limit leaves the rest to it.
        if len(compact(result)) > MAX_RESULT_BYTES or key_levels(result) > MAX_STATE_LEVELS - 2:
            result = {"truncated": True}
        entry["result"] = result
    if error:
        entry["error"] = error[:MAX_ERROR_CHARS]
    return entry


def is_expired(entry: dict[str, Any], now_ms: int) -> bool:
    expires_at = entry.get("expiresAt")
    return isinstance(expires_at, int) and now_ms > expires_at


def expired_long_ago(entry: Any, now_ms: int) -> bool:
    """A pending entry that expired more than EXPIRY_GRACE_MS ago: no device will start it now."""
    expires_at = entry.get("expiresAt") if isinstance(entry, dict) else None
    return isinstance(expires_at, int) and now_ms > expires_at + EXPIRY_GRACE_MS


def may_have_started(entry: Any, presence: dict[str, Any] | None, now_ms: int) -> bool:
    """Whether a device may have started this pending entry and not reported it yet: it has been
    connected since the entry was issued (`presence`: the presence shadow's reported state; None:
    the device never connected). A device that started a command and then lost its connection
    reports the outcome when it is back, after an outage of any length. One connected since after
    the entry expired, for longer than EXPIRY_GRACE_MS, has read its queue on that connection and
    answered whatever it had started: still pending, the entry is one it never took."""
    if not presence:
        return False
    at = presence.get("at")
    issued, expires = (entry.get("issuedAt"), entry.get("expiresAt")) if isinstance(entry, dict) else (None, None)
    if not (isinstance(at, int) and isinstance(issued, int)):
        return True  # cannot tell: it may have
    if presence.get("connected"):
        return not (isinstance(expires, int) and at > expires and now_ms - at > EXPIRY_GRACE_MS)
    return at >= issued


def needs_presence(desired: dict[str, Any], now_ms: int) -> bool:
    """Whether judging `desired` (unanswered) needs the device's presence: only entries that expired long ago do."""
    return any(expired_long_ago(entry, now_ms) for entry in desired.values())


def unanswered(entry: Any, now_ms: int, presence: dict[str, Any] | None) -> CommandState | None:
    """How a pending entry ends without its device's word, or None while the device may still answer it.

    EXPIRED: it expired long ago, and its device has not been connected since it was issued (it
    never took it, and never will). UNKNOWN: its device may have started it (may_have_started) and
    has not answered GIVE_UP_MS after that; a device that died for good never will.
    """
    if not expired_long_ago(entry, now_ms):
        return None
    if not may_have_started(entry, presence, now_ms):
        return CommandState.EXPIRED
    return CommandState.UNKNOWN if now_ms > entry["expiresAt"] + EXPIRY_GRACE_MS + GIVE_UP_MS else None


def live_pending(desired: dict[str, Any], now_ms: int, presence: dict[str, Any] | None) -> int:
    """Entries that hold a place in the queue (MAX_PENDING): commands a device may still answer; anything else is junk."""
    return sum(1 for entry in desired.values() if isinstance(entry, dict) and unanswered(entry, now_ms, presence) is None)


def number_or_zero(value: Any) -> float:
    """A timestamp for ordering: what a shadow holds may be anything (a string, null, a bool)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def prune_history(reported: dict[str, Any], keep: int = HISTORY) -> dict[str, None]:
    """The reported ids to null so that at most `keep` outcomes remain (oldest go first)."""
    outcomes = [(number_or_zero(v.get("doneAt")), k) for k, v in reported.items() if isinstance(v, dict)]
    outcomes.sort()
    excess = len(outcomes) - keep
    return {k: None for _, k in outcomes[:excess]} if excess > 0 else {}


UNANSWERED_ERRORS = {
    CommandState.EXPIRED: "expired before the device took it",
    CommandState.UNKNOWN: "the device may have run it and never reported; if it does, its outcome replaces this",
}


def unanswered_outcome(state: CommandState, entry: Any, now_ms: int) -> dict[str, Any]:
    """The outcome recorded for a pending entry that ended without its device's word (`unanswered`).

    With its params' digest, so a retry of the id with other params is still a conflict. UNKNOWN
    is stored without its `error` (outcome_error supplies it): a device's later outcome replaces
    it by merging, and a key the device's outcome lacks would stay behind.
    """
    action = entry.get("action", "") if isinstance(entry, dict) else ""
    params = entry.get("params") if isinstance(entry, dict) else None
    error = None if state is CommandState.UNKNOWN else UNANSWERED_ERRORS[state]
    return outcome_entry(state, str(action), done_at=now_ms, error=error, params=params if isinstance(params, dict) else None)


def outcome_error(outcome: dict[str, Any]) -> str | None:
    """An outcome's `error` as told to a caller: UNKNOWN's explanation is not stored (unanswered_outcome)."""
    error = outcome.get("error")
    if error is None and outcome.get("state") == CommandState.UNKNOWN:
        return UNANSWERED_ERRORS[CommandState.UNKNOWN]
    return None if error is None else str(error)


def queue_state(desired: dict[str, Any], reported: dict[str, Any], cid: str, entry: dict[str, Any],
                now_ms: int, presence: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The `state` of the commands-shadow update that queues `entry` as `cid`, tidying the queue in the same write.

    Entries that ended without their device's word (`unanswered`: EXPIRED or UNKNOWN) are
    recorded so, the oldest outcomes going as a device prunes them, so the document stays
    within what a small device can read; entries that are no command are removed. The caller
    checks `live_pending` first, and writes with the version it read.
    """
    junk = [k for k, e in desired.items() if not isinstance(e, dict) and k != cid]
    ended = {k: unanswered_outcome(st, e, now_ms) for k, e in desired.items() if (st := unanswered(e, now_ms, presence))}
    state: dict[str, Any] = {"desired": {cid: entry, **dict.fromkeys(junk), **dict.fromkeys(ended)}}
    if ended:
        state["reported"] = {**prune_history({**reported, **ended}), **ended}
    return state
