"""Queue a job's command on the devices of one page: desired.{jobId} in each `commands` shadow.

At most one sender works on a page at a time: it takes the page by writing
`sent: SENDING until <its deadline>` with the page shadow's version (a duplicate
delivery of the same event loses that race, or sees the live claim, and leaves).
The first attempt of a job whose id the API made up (a fresh uuid) writes each
device blindly: nobody else has that id. A job id the caller chose may be the id
of a command a device has pending or has run, and a later attempt (Lambda's
retry, or the fan-out after the API's inline try) may meet devices that already
have the job's command or have run it. Those read each device first and write
with its version (optimistic locking, as the single command path does): a device
that reported reported.{jobId} never gets it again, and another command under
that id is neither replaced nor taken for the job's (the device shows ID_CONFLICT).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from iotbridge_contract import commands as contract
from iotbridge_contract.commands import COMMANDS_SHADOW, PRESENCE_SHADOW
from iotbridge_jobs import record

THREADS = 16
DEVICE_TRIES = 5  # per device and attempt, for throttling / transient errors (one creates a commands shadow)
BACKOFF_S = (0.1, 0.3, 0.8)
CLAIM_TRIES = 20
# Stop starting device calls this long before the invocation's end: a call started just before
# may last its worst case, and then the page's record must still be written, saying how far it got.
MARGIN_MS = record.CALL_MS + record.RECORD_MS
# A claim (a read and a versioned write of the page), and the page's record after it should no device
# call fit: an attempt is started (and a lost claim tried again) only with this much time left.
START_MS = 3 * record.RECORD_MS


class Incomplete(Exception):
    """Some devices could not be reached this attempt; the page is RETRYING and another attempt must follow."""

    def __init__(self, message: str, outcome: PageOutcome) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass
class PageOutcome:
    job_id: str
    page: int
    state: str  # QUEUED, FAILED, RETRYING, or SKIPPED (another sender holds or finished the page)
    attempt: int = 0
    queued: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)  # {"thing", "code"}
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"jobId": self.job_id, "page": self.page, "state": self.state, "attempt": self.attempt,
                "queued": self.queued, "failed": len(self.failed), "error": self.error}  # fmt: skip


def _claim(job_id: str, page: int, *, by: str, until: int,
           remaining_ms: Callable[[], int]) -> tuple[int, dict[str, Any]] | PageOutcome:  # fmt: skip
    """Take the page for this sender: (attempt, page's reported state), or the reason to leave it alone."""
    for n in range(CLAIM_TRIES):
        if n and remaining_ms() < START_MS:
            break  # no time for another try, and what follows it
        doc = record.get_page(job_id, page)
        if doc is None:
            return PageOutcome(job_id, page, "SKIPPED", error="no such job page")
        sent = record.reported(doc).get("sent") or {}
        if sent.get("state") in record.SETTLED:
            return PageOutcome(job_id, page, "SKIPPED", attempt=int(sent.get("attempt") or 0), error="already done")
        if int(sent.get("attempt") or 0) >= record.MAX_ATTEMPTS and int(sent.get("until") or 0) <= record.now_ms():
            # The last attempt was cut off (a timeout): GET shows the page settled from then on,
            # with its unreached devices NOT_SENT, so nobody may send it after all.
            return PageOutcome(job_id, page, "SKIPPED", attempt=int(sent.get("attempt") or 0),
                               error="the last attempt was cut off")  # fmt: skip
        if sent.get("state") == record.SENDING and int(sent.get("until") or 0) > record.now_ms():
            if sent.get("by") == "api" and by != "api":
                # The API hands a page over only when it gave up on it (its own claim write may have
                # worked though its answer was lost): SKIPPED here would leave the page unsent for
                # good. Lambda retries the event later, after the API's claim has lapsed.
                raise record.ShadowError("CONFLICT", f"job {job_id} page {page}: the API's claim has not lapsed yet",
                                         retryable=True)  # fmt: skip
            return PageOutcome(job_id, page, "SKIPPED", attempt=int(sent.get("attempt") or 0),
                               error="another invocation is sending this page")  # fmt: skip
        attempt = int(sent.get("attempt") or 0) + 1
        claim = {"sent": record.sent_record(record.SENDING, attempt=attempt, by=by, until=until)}
        try:
            record.update_page(job_id, page, claim, version=doc["version"])
        except record.Conflict:
            continue  # someone else moved first: look again
        return attempt, record.reported(doc)
    # GETs write counts on the page too: never give the page up for that, let Lambda try again later.
    raise record.ShadowError("CONFLICT", f"job {job_id} page {page} kept changing while being claimed",
                             retryable=True)  # or time ran out: Lambda retries the event (the API hands it over)


def _queue_one(thing: str, job_id: str, entry: dict[str, Any], *, out_of_time: Callable[[], bool]) -> str | None:
    """None when the device has the command (now or already); else an error code (retryable or not).

    Read, then a versioned write: a device never gets the job twice, nor an 11th pending command
    (ESP32 firmware reads its pending set into a buffer fixed at boot; 12 overflow it at 48 KB).
    A device without a commands shadow gets one first (contract.QUEUE_OPENED).
    """
    last = "UPSTREAM_ERROR"
    for attempt in range(DEVICE_TRIES):
        if out_of_time():
            return "OUT_OF_TIME"
        try:
            doc = record.get(thing, COMMANDS_SHADOW)
            desired, reported = record.desired(doc), record.reported(doc)
            known = reported.get(job_id) or desired.get(job_id)
            if known is not None:  # already ran it, or already has it: never twice
                # ... unless the id is another command's (a caller's job id a single command used too)
                return None if contract.is_same_command(known, entry["action"], entry["params"]) else "ID_CONFLICT"
            if out_of_time():  # the read took its time: the write is a second call
                return "OUT_OF_TIME"
            if doc is None:  # the device's first command: its commands shadow is created, then read again
                record.update(thing, contract.QUEUE_OPENED, COMMANDS_SHADOW)
                continue
            now = record.now_ms()
            # Entries that expired long ago end, EXPIRED or UNKNOWN, by whether the device has been
            # connected since (the contract's unanswered): its presence is read for those alone.
            presence = None
            if contract.needs_presence(desired, now):
                presence = record.reported(record.get(thing, PRESENCE_SHADOW)) or None
                if out_of_time():  # every call is checked first: MARGIN_MS holds one call and the page's record
                    return "OUT_OF_TIME"
            if contract.live_pending(desired, now, presence) >= contract.MAX_PENDING:
                return "TOO_MANY_PENDING"
            update = {"state": contract.queue_state(desired, reported, job_id, entry, now, presence), "clientToken": job_id,
                      "version": doc["version"]}  # fmt: skip
            record.update(thing, update, COMMANDS_SHADOW)
            return None
        except record.Conflict:
            last = "CONFLICT"  # the device (or another writer) wrote meanwhile: read again, after a moment
            time.sleep(random.uniform(0, BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)]))
        except record.ShadowError as exc:
            if not exc.retryable:
                return exc.code
            last = exc.code
            time.sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
    return last


RETRYABLE_CODES = {"OUT_OF_TIME", "THROTTLED", "UPSTREAM_ERROR", "CONFLICT"}


def run_page(job_id: str, page: int, *, by: str, remaining_ms: Callable[[], int]) -> PageOutcome:
    """Queue the job on one page of its targets. Raises Incomplete when another attempt must follow."""
    claimed = _claim(job_id, page, by=by, until=record.now_ms() + remaining_ms(), remaining_ms=remaining_ms)
    if isinstance(claimed, PageOutcome):
        return claimed
    attempt, page_state = claimed
    try:
        return _send(job_id, page, attempt, page_state, by=by, remaining_ms=remaining_ms)
    except Incomplete:
        raise
    except Exception as exc:  # the claim must not outlive this attempt: record the failure, then let Lambda retry
        state = record.RETRYING if attempt < record.MAX_ATTEMPTS else record.FAILED
        sent = record.sent_record(state, attempt=attempt, by=by, error=f"attempt {attempt} failed: {type(exc).__name__}")
        with contextlib.suppress(record.ShadowError):  # else the claim lapses at its `until`
            record.update_page(job_id, page, {"sent": sent})
        raise


def _send(job_id: str, page: int, attempt: int, page_state: dict[str, Any], *, by: str,
          remaining_ms: Callable[[], int]) -> PageOutcome:  # fmt: skip
    things = record.page_things(page_state)
    entry = json.loads(page_state["command"])
    if record.now_ms() >= int(entry["expiresAt"]):
        # What earlier attempts found stands (an ID_CONFLICT stays one); devices they could
        # not reach (throttled, out of time) now failed for good because the job expired.
        before = page_state.get("sent") or {}
        error = "EXPIRED: the job expired before this page was sent"
        if before.get("state"):
            error = f"EXPIRED: the job expired before attempt {attempt} could reach every device"
        failed = {i: "EXPIRED" if code in RETRYABLE_CODES else code
                  for i, code in record.decode_failed(page_state.get("failed")).items()}  # fmt: skip
        queued = int(before.get("queued") or 0)
        sent = record.sent_record(record.FAILED, attempt=attempt, by=by, error=error, queued=queued)
        record.update_page(job_id, page, {"sent": sent, "failed": record.encode_failed(failed)})
        return PageOutcome(job_id, page, record.FAILED, attempt=attempt, queued=queued, error=error,
                           failed=[{"thing": things[i], "code": code} for i, code in failed.items()])  # fmt: skip

    def out_of_time() -> bool:
        return remaining_ms() < MARGIN_MS

    with ThreadPoolExecutor(THREADS) as pool:
        codes = list(pool.map(lambda t: _queue_one(t, job_id, entry, out_of_time=out_of_time), things))
    failed = {i: code for i, code in enumerate(codes) if code}
    retryable = {i: code for i, code in failed.items() if code in RETRYABLE_CODES}
    queued = len(things) - len(failed)
    outcome = PageOutcome(job_id, page, record.QUEUED, attempt=attempt, queued=queued,
                          failed=[{"thing": things[i], "code": code} for i, code in failed.items()])  # fmt: skip
    if retryable:
        outcome.error = f"{len(retryable)} of {len(things)} not reached ({', '.join(sorted(set(retryable.values())))})"
        outcome.state = record.RETRYING if attempt < record.MAX_ATTEMPTS else record.FAILED
    sent = record.sent_record(outcome.state, attempt=attempt, by=by, error=outcome.error, queued=queued)
    record.update_page(job_id, page, {"sent": sent, "failed": record.encode_failed(failed)})
    if outcome.state == record.RETRYING:
        raise Incomplete(f"job {job_id} page {page}: {outcome.error}; attempt {attempt} of {record.MAX_ATTEMPTS}", outcome)
    return outcome
