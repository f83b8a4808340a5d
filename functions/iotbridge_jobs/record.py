"""A job's record: named shadows of the registry things `iotbridge-jobs*`, and the door to them.

`iotbridge-jobs` / `job-{id}` (reported): action, params, createdAt, expiresAt, targets, pages; for an
id the caller chose, also `owner`/`claimedAt` (the request that records it) and `recorded` (False
until its pages are written), and `opened` (the plain write that created it, so it can be claimed).
`iotbridge-jobs-{k}` / `job-{id}-{n}` (reported), one per page of targets, spread over
SHARDS things: AWS allows a thing 20 shadow requests/s and 10 in flight, which one
thing holding a 10,000-device job's 20-odd pages would exceed on every POST and GET.
- `things`: the page's target names, comma-joined, and `command`: the pending entry as
  compact JSON (both written once, by the POST; the fan-out needs nothing else);
- `sent`: how far the fan-out got: absent (not taken yet), SENDING (an invocation
  holds the page until `until`), RETRYING (an attempt failed, Lambda retries it; or,
  `by: api`, the API could not hand the page to the fan-out, and a retry of the POST
  does), QUEUED (every target queued or refused), FAILED (given up, `error` says why);
- `failed`: targets refused, as "CODE:i,j;CODE2:k" (indexes into `things`);
- `tally` / `final`: device counts read by `GET /commands/jobs/{id}`; `final` once
  every device of a settled page is terminal, so that page is never read again.

A page stays under AWS's 8 KB shadow limit: at most PAGE_THINGS names in PAGE_CHARS,
whose failure indexes take at most ~2 KB more. Values are flat or strings: writing a
scalar replaces it, where a merged object could keep a stale key.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

from iotbridge_contract.names import JOBS_THING

T = TypeVar("T")

PAGE_CHARS = 3_500
PAGE_THINGS = 500
# Lambda runs an asynchronous event once and retries it twice (template: EventInvokeConfig).
MAX_ATTEMPTS = 3

SENDING, RETRYING, QUEUED, FAILED = "SENDING", "RETRYING", "QUEUED", "FAILED"
SETTLED = (QUEUED, FAILED)

_lock = threading.Lock()
_clients: dict[str, Any] = {}


def now_ms() -> int:
    return int(time.time() * 1000)


SHARDS = 8
SHARD_THINGS = frozenset(f"{JOBS_THING}-{k}" for k in range(SHARDS))
THROTTLE_TRIES = 4
THROTTLE_PAUSES_S = tuple(0.1 * 3**attempt for attempt in range(THROTTLE_TRIES - 1))  # 0.1, 0.3, 0.9

# The shadow client's timeouts, and what they bound: it makes one attempt per call (`total_max_attempts`;
# botocore's `max_attempts: 1` would be one retry), so a call lasts at most CALL_MS (connecting, then
# waiting for the answer). AWS IoT answers in tens of ms; short timeouts keep the margins the fan-out
# and the API's inline attempt must keep small (fanout.MARGIN_MS, bulk.HAND_OVER_MS).
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 1, 1
CALL_MS = (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) * 1000
# One `patient` call on a job record (e.g. a page's write): a throttled answer comes at once and is
# tried again after a pause, a call that hangs fails at its timeout and is not tried again.
RECORD_MS = CALL_MS + int(sum(THROTTLE_PAUSES_S) * 1000)


def summary_shadow(job_id: str) -> str:
    return f"job-{job_id}"


def page_shadow(job_id: str, page: int) -> str:
    return f"job-{job_id}-{page}"


def page_thing(job_id: str, page: int) -> str:
    """The thing holding a page's shadow; a job's pages, and small jobs, spread over the shards."""
    return f"{JOBS_THING}-{(zlib.crc32(job_id.encode()) + page) % SHARDS}"


def get_page(job_id: str, page: int) -> dict[str, Any] | None:
    return patient(get, page_thing(job_id, page), page_shadow(job_id, page))


def update_page(job_id: str, page: int, reported: dict[str, Any], *, version: int | None = None) -> None:
    document: dict[str, Any] = {"state": {"reported": reported}}
    if version is not None:
        document["version"] = version
    patient(update, page_thing(job_id, page), document, page_shadow(job_id, page))


def patient(call: Callable[..., T], *args: Any) -> T:
    """A call on a job record, tried again when AWS IoT throttles (many pages touched at once)."""
    for attempt in range(THROTTLE_TRIES):
        try:
            return call(*args)
        except ShadowError as exc:
            if exc.code != "THROTTLED" or attempt + 1 == THROTTLE_TRIES:
                raise
            time.sleep(THROTTLE_PAUSES_S[attempt])
    raise AssertionError("unreachable")


def split(things: list[str]) -> list[list[str]]:
    pages: list[list[str]] = []
    current: list[str] = []
    chars = 0
    for thing in things:
        if current and (len(current) >= PAGE_THINGS or chars + len(thing) + 1 > PAGE_CHARS):
            pages.append(current)
            current, chars = [], 0
        current.append(thing)
        chars += len(thing) + 1
    if current:
        pages.append(current)
    return pages


def page_things(reported: dict[str, Any]) -> list[str]:
    return [t for t in str(reported.get("things") or "").split(",") if t]


def encode_failed(failed: dict[int, str]) -> str | None:
    """{index: code} -> "CODE:i,j;CODE2:k" (None when nothing failed, which deletes the key)."""
    by_code: dict[str, list[int]] = {}
    for index, code in sorted(failed.items()):
        by_code.setdefault(code, []).append(index)
    return ";".join(f"{code}:{','.join(map(str, indexes))}" for code, indexes in by_code.items()) or None


def decode_failed(text: object) -> dict[int, str]:
    failed: dict[int, str] = {}
    for part in str(text or "").split(";"):
        code, _, indexes = part.partition(":")
        failed.update((int(i), code) for i in indexes.split(",") if i.isdigit())
    return failed


def sent_record(state: str, *, attempt: int, by: str, until: int | None = None, error: str | None = None,
                queued: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The whole `sent` object: every key written each time (None deletes), so no stale key survives a merge."""
    return {"state": state, "attempt": attempt, "by": by, "until": until, "error": error, "queued": queued, "at": now_ms()}


# -- shadows -------------------------------------------------------------------------------


class ShadowError(Exception):
    """A shadow call failed; `code` is the API's error code, `retryable` whether another try may succeed."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.code, self.retryable = code, retryable


class Conflict(ShadowError):
    """The shadow's version moved since it was read (HTTP 409)."""

    def __init__(self) -> None:
        super().__init__("CONFLICT", "version conflict", retryable=True)


_PERMANENT = {
    "RequestEntityTooLargeException": "TOO_MANY_PENDING",  # the device's 8 KB commands shadow is full
    "InvalidRequestException": "INVALID_DOCUMENT",
    "ResourceNotFoundException": "DEVICE_NOT_FOUND",
    "UnauthorizedException": "UPSTREAM_ERROR",
}
_THROTTLED = ("ThrottlingException", "TooManyRequestsException", "LimitExceededException")


def _client() -> Any:
    client = _clients.get("iot-data")
    if client is None:
        with _lock:
            client = _clients.get("iot-data")
            if client is None:
                import boto3
                import botocore
                from botocore.config import Config

                # Short timeouts, no SDK retries: the fan-out retries itself, within its own time. A fixed
                # user agent: botocore otherwise rebuilds it on every request (~20% of a call's CPU, as in the API).
                cfg = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                             retries={"total_max_attempts": 1, "mode": "standard"},
                             max_pool_connections=32, user_agent=f"iotbridge-jobs botocore/{botocore.__version__}")  # fmt: skip
                from iotbridge_dataplane import shadow_client

                # Its shadow calls signed and sent without boto3's cost: two per device of a job.
                sdk = boto3.client("iot-data", config=cfg)
                client = _clients["iot-data"] = shadow_client(sdk, connect_timeout=CONNECT_TIMEOUT_S,
                                                              read_timeout=READ_TIMEOUT_S, max_connections=32)  # fmt: skip
    return client


def _error(exc: Exception) -> ShadowError:
    response = getattr(exc, "response", None)
    code = response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""
    if code == "ConflictException":
        return Conflict()
    if code in _THROTTLED:
        return ShadowError("THROTTLED", f"AWS IoT throttled the request ({code})", retryable=True)
    if code in _PERMANENT:
        return ShadowError(_PERMANENT[code], f"AWS IoT refused the request ({code})", retryable=False)
    return ShadowError("UPSTREAM_ERROR", f"AWS IoT answered {code or type(exc).__name__}", retryable=True)


def get(thing: str, shadow: str) -> dict[str, Any] | None:
    """The named shadow's document, or None when it does not exist."""
    try:
        payload = _client().get_thing_shadow(thingName=thing, shadowName=shadow)["payload"].read()
    except Exception as exc:
        error = _error(exc)
        if error.code == "DEVICE_NOT_FOUND":
            return None
        raise error from exc
    doc: dict[str, Any] = json.loads(payload)
    return doc


def update(thing: str, document: dict[str, Any], shadow: str) -> None:
    payload = json.dumps(document, separators=(",", ":")).encode()
    try:
        # Read the answer even though nothing here needs it: an unread body keeps its connection
        # out of the pool, and the next call opens (on AWS: TLS-handshakes) a new one.
        _client().update_thing_shadow(thingName=thing, shadowName=shadow, payload=payload)["payload"].read()
    except Exception as exc:
        raise _error(exc) from exc


def reported(doc: dict[str, Any] | None) -> dict[str, Any]:
    state = (doc or {}).get("state")
    section = state.get("reported") if isinstance(state, dict) else None
    return section if isinstance(section, dict) else {}


def desired(doc: dict[str, Any] | None) -> dict[str, Any]:
    state = (doc or {}).get("state")
    section = state.get("desired") if isinstance(state, dict) else None
    return section if isinstance(section, dict) else {}
