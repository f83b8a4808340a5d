"""One command to many devices: a job.

The job id is the command id on every target device, so each device runs it at
most once and reports it in its own `commands` shadow like any other command.
The job record (action, targets in pages, how far each page got) lives in named
shadows of the registry thing `iotbridge-jobs` (see iotbridge_jobs.record). No
database to run.

POST writes the record and answers 202 at once: a small job (one page of at most
INLINE_TARGETS) is queued inside the request, like a single command; a larger one
by the fan-out function, one asynchronous invocation per page. `queued` in the
answer counts what was queued before it; `notQueued` lists what is known to have
failed by then. GET reads the page records, the requested window's devices, and
refreshes the counts of the pages whose counts those devices contradict, then of
at most REFRESH_DEVICES more devices per call (the stalest pages first); a page
whose devices are all done keeps its final counts.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from iotbridge_api import errors, iot
from iotbridge_api.models import MAX_JOB_ID
from iotbridge_contract import commands as contract
from iotbridge_contract import names
from iotbridge_contract.commands import COMMANDS_SHADOW, PRESENCE_SHADOW, CommandState
from iotbridge_jobs import fanout, record
from iotbridge_jobs.record import JOBS_THING

MAX_EXPLICIT_TARGETS = 1_000
LIST_PAGE = 250  # things per ListThings call (AWS's maximum)
RECORD_MARGIN_S = 5.0  # of the request's time, kept after listing `all` for writing the job's record
INLINE_TARGETS = 50  # queued inside the POST: about as long as one page invocation's cold start
THREADS = 16
REFRESH_DEVICES = 500  # device shadows read per GET to refresh counts, beyond the window
# The Lambda client's timeouts; it makes one attempt per call (_hand_over tries again, within the
# request's time), so one Invoke call lasts at most INVOKE_MS. An asynchronous invoke answers in tens of ms.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 1, 2
INVOKE_MS = (CONNECT_TIMEOUT_S + READ_TIMEOUT_S) * 1000
INVOKE_BACKOFF_S = (0.2, 0.6)  # before the second and third try
# What a page's hand-over may still need: an invoke, then reading and writing the page's record if it
# failed. The inline attempt stops that much earlier than the request's deadline (and fanout.MARGIN_MS
# before that again, for its last device call and its own record write).
HAND_OVER_MS = INVOKE_MS + 2 * record.RECORD_MS
NOT_SENT, PENDING, SENDING = "NOT_SENT", "PENDING", "SENDING"
UNKNOWN = CommandState.UNKNOWN.value  # a device's UNKNOWN outcome; in a job, also "queued, then gone"
# Done for good, whenever counted. UNKNOWN is done only once its page settled (_Page.done): in a job it
# also means "queued, then gone", which a sender still at work may not have finished with.
TERMINAL = frozenset(s.value for s in CommandState if s.terminal) - {UNKNOWN}
# A job with a caller's id is claimed before its pages are written (_claim). A claim whose request
# has surely ended (the API function's 29 s timeout, and a margin for clocks) is taken over by a retry.
CLAIM_LAPSE_MS = 35_000
CLAIM_TRIES = 6
JOIN_POLL_S = 0.2  # how often a retry looks whether the request it joined has recorded the job
JOIN_WAIT_S = 3.0  # and for how long (recording takes well under a second), before it answers 429
_STARTED = ("action", "params", "createdAt", "expiresAt", "targets", "pages")  # of the summary, in POST's answer

_lock = threading.Lock()
_lambda_client: list[Any] = []


def _lambda() -> Any:
    if not _lambda_client:
        with _lock:
            if not _lambda_client:
                import boto3
                from botocore.config import Config

                cfg = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                             retries={"total_max_attempts": 1, "mode": "standard"})
                _lambda_client.append(boto3.client("lambda", config=cfg))
    return _lambda_client[0]


class _NotInvoked(RuntimeError):
    """The fan-out was certainly not invoked (nothing to invoke)."""


def _start_fanout(job_id: str, page: int) -> None:
    """One asynchronous invocation of the fan-out function for one page (Lambda keeps and retries the event)."""
    function = os.environ.get("JOBS_FUNCTION_NAME")
    if not function:
        raise _NotInvoked("JOBS_FUNCTION_NAME is not set: no fan-out function to invoke")
    payload = json.dumps({"jobId": job_id, "page": page}).encode()
    answer = _lambda().invoke(FunctionName=function, InvocationType="Event", Payload=payload)
    answer["Payload"].read()  # empty, but unread it keeps the connection out of the pool: a new one per page
    if answer.get("StatusCode") != 202:
        raise RuntimeError(f"Lambda answered {answer.get('StatusCode')} to an asynchronous invoke")


def _surely_not_invoked(exc: Exception) -> bool:
    """Whether Lambda certainly did not take the event: it refused it (an error answer, not a 5xx), or no
    connection was made. After a read timeout, a dropped connection or a 5xx it may have taken it."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

    if isinstance(exc, ClientError):
        metadata: dict[str, Any] = dict(exc.response.get("ResponseMetadata") or {})
        status = metadata.get("HTTPStatusCode")
        return isinstance(status, int) and status < 500
    return isinstance(exc, (_NotInvoked, ConnectTimeoutError, EndpointConnectionError))


def _left_ms(deadline: float) -> int:
    return int((deadline - time.monotonic()) * 1000)


def _all_things(deadline: float) -> list[str]:
    """Every registered device, or TooManyTargets when the registry cannot be listed in time.

    A job to part of "all" would look like a job to all: refuse instead (past ~60,000 things
    at AWS's ListThings rate), and leave room after the listing to write the job's record.
    """
    things: list[str] = []
    token: str | None = None
    while True:
        page, token = iot.list_things(LIST_PAGE, token)
        things.extend(t for t in page if not names.is_jobs_thing(t))  # as every route refuses them
        # Room left for the job's record, and then for handing its pages to the fan-out (a job
        # recorded without that time would sit unsent until it expires).
        if time.monotonic() > deadline - RECORD_MARGIN_S - HAND_OVER_MS / 1000:
            raise errors.TooManyTargets(
                f"`all: true`: the registry could not be listed within one request ({len(things)} things so far); "
                f"send the targets as `things` lists of at most {MAX_EXPLICIT_TARGETS}", details={"listed": len(things)})
        if not token:
            return things


def _check(params: dict[str, Any], things: list[str] | None) -> None:
    if len(contract.compact(params)) > contract.MAX_PARAMS_BYTES:
        raise errors.PayloadTooLarge(f"params exceed {contract.MAX_PARAMS_BYTES} bytes as compact JSON")
    # Without one device's spec to check against, hold params to what any spec can accept:
    # flat, named like parameters, scalar values. Each device still checks its own spec.
    for name, value in params.items():
        if not names.ACTION_NAME_RE.fullmatch(name) or not isinstance(value, (str, int, float, bool)):
            raise errors.InvalidParams(f"{name!r}: params of a bulk command are flat name: scalar pairs")
    for thing in things or []:
        try:
            names.device_name(thing)
        except names.InvalidName as exc:
            raise errors.InvalidThingName(str(exc), details={"thing": str(thing)[:200]}) from None


def _targets_digest(things: list[str] | None) -> str:
    """What a retry must repeat to be the same job: the same targets in order, or `all`."""
    if things is None:
        return "all"  # the registry as listed by the first POST; a retry does not list it again
    return hashlib.sha256("\n".join(dict.fromkeys(things)).encode()).hexdigest()[:24]


def _recorded(job_id: str, request: dict[str, Any], deadline: float) -> dict[str, Any] | None:
    """The job `job_id` as recorded (the same request, else a conflict), or None when no live request has it.

    A job another request with the same body is still recording (a caller's retry while its first
    request runs) is waited for a moment, then followed like any recorded job; if it takes longer,
    the caller is told to retry (429), never handed a job nobody has recorded. A recording whose
    request ended first (its claim lapsed, or it let go after an error) sent nothing: no job.
    """
    give_up = time.monotonic() + JOIN_WAIT_S
    while True:
        summary = _summary(job_id)
        if not summary.get("action"):  # none, or only opened by a request about to claim it
            return None
        unrecorded = summary.get("recorded") is False
        if unrecorded and _lapsed(summary):
            return None
        _same_job(job_id, summary, request)
        if not unrecorded:
            known = _answer_of(job_id, summary)
            known["notQueued"] = _resume(job_id, int(summary.get("pages") or 0), deadline)
            return known
        if time.monotonic() > give_up or _left_ms(deadline) < HAND_OVER_MS + JOIN_POLL_S * 1000:
            raise errors.Throttled(f"job {job_id} is being recorded by another request with the same body; "
                                   "retry in a few seconds", details={"id": job_id})  # fmt: skip
        time.sleep(JOIN_POLL_S)


def _claim(job_id: str, summary: dict[str, Any], request: dict[str, Any], deadline: float, owner: str) -> dict[str, Any] | None:
    """Make this request the one that records the job with the caller's id: None when it is, else the job
    as another request records it (the same body; a different one is a conflict).

    Two requests with one id may both find no job: each writing its pages and summary would leave
    a job mixed of both, and both callers told 202. The summary is claimed with a versioned write
    (created first by a plain one, since a versioned write needs an existing shadow), so exactly one
    request records the pages; the others see its claim.
    """
    claim = {**summary, "recorded": False, "owner": owner, "claimedAt": record.now_ms()}
    shadow = record.summary_shadow(job_id)
    for _ in range(CLAIM_TRIES):
        doc = _shadow_call(record.patient, record.get, JOBS_THING, shadow)
        held = record.reported(doc)
        if held.get("action") and not (held.get("recorded") is False and _lapsed(held)):
            known = _recorded(job_id, request, deadline)
            if known is not None:
                return known
            continue  # its claim lapsed meanwhile
        if doc is None:
            opened = {"state": {"reported": {"opened": record.now_ms()}}}
            _shadow_call(record.patient, record.update, JOBS_THING, opened, shadow)
            continue
        try:
            record.patient(record.update, JOBS_THING, {"state": {"reported": claim}, "version": doc["version"]}, shadow)
            return None
        except record.Conflict:
            continue  # another request wrote it meanwhile: look again
        except record.ShadowError as exc:
            _let_go(job_id, claim["owner"])  # the write may have landed (a timeout)
            raise _api_error(exc) from exc
    raise errors.Throttled(f"job {job_id} is being written by other requests at the same time; retry",
                           details={"id": job_id})  # fmt: skip


def _let_go(job_id: str, owner: str) -> None:
    """Give up this request's claim after an error (nothing is sent before the job is recorded), so
    that the caller's retry, with any body, records the job at once instead of after CLAIM_LAPSE_MS.
    Only a claim that is still this request's: another's must keep it (written with the version read)."""
    shadow = record.summary_shadow(job_id)
    with contextlib.suppress(record.ShadowError, KeyError):
        doc = record.get(JOBS_THING, shadow)
        if doc is not None and record.reported(doc).get("owner") == owner:
            record.update(JOBS_THING, {"state": {"reported": {"claimedAt": 0}}, "version": doc["version"]}, shadow)


def _summary(job_id: str) -> dict[str, Any]:
    return record.reported(_shadow_call(record.patient, record.get, JOBS_THING, record.summary_shadow(job_id)))


def _lapsed(summary: dict[str, Any]) -> bool:
    """Whether a claim's request has surely ended (the API function's timeout is over)."""
    return record.now_ms() - int(summary.get("claimedAt") or 0) > CLAIM_LAPSE_MS


def _same_job(job_id: str, summary: dict[str, Any], request: dict[str, Any]) -> None:
    """IdConflict unless `request` is the one recorded as job `job_id`."""
    # Jobs recorded before targets and ttl were kept are checked on what they have.
    # Compared as JSON, as a single command's retry is: `true`, `1` and `1.0` are three params.
    differs = sorted(k for k, v in request.items()
                     if (k in summary or k in ("action", "params")) and contract.compact(summary.get(k)) != contract.compact(v))
    if differs:
        # Named as the request names them: the record keeps a digest of the targets, not the list.
        differs = sorted("things" if k == "targetsDigest" else k for k in differs)
        message = f"job {job_id} exists with other {', '.join(differs)}"
        raise errors.IdConflict(message, details={"id": job_id, "differs": differs})


def _answer_of(job_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {"jobId": job_id, **{k: summary.get(k) for k in _STARTED}, "queued": 0, "notQueued": []}


def _shadow_call(call: Any, *args: Any) -> Any:
    try:
        return call(*args)
    except record.ShadowError as exc:
        raise _api_error(exc) from exc


def _api_error(exc: record.ShadowError) -> errors.ApiError:
    return (errors.Throttled if exc.code == "THROTTLED" else errors.UpstreamError)(str(exc))


def start(*, action: str, params: dict[str, Any], things: list[str] | None, ttl_ms: int, deadline: float,
          job_id: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Record the job and start queueing it; returns the job summary with what is queued and failed so far.

    With a caller's `job_id` that is already recorded, nothing new starts: a retry (its first
    answer was lost) gets the job as recorded, and follows its progress like the first caller.
    If the first request ended before it handed every page to the fan-out (a timeout, a crash),
    the retry hands over the pages nobody is working on.
    """
    _check(params, things)
    request = {"action": action, "params": params, "targetsDigest": _targets_digest(things), "ttlMs": ttl_ms}
    chosen = job_id is not None
    if job_id is not None:
        known = _recorded(job_id, request, deadline)
        if known is not None:
            return known
    targets = list(dict.fromkeys(things)) if things is not None else _all_things(deadline)
    job_id = job_id or contract.new_id()
    issued = record.now_ms()
    pages = record.split(targets)
    summary = {**request, "createdAt": issued, "expiresAt": issued + ttl_ms, "targets": len(targets), "pages": len(pages)}
    owner = contract.new_id()  # this request, in the claim of a job with a caller's id
    if chosen:  # another request may hold the same id: only one records it (an id the API made is new)
        known = _claim(job_id, summary, request, deadline, owner)
        if known is not None:
            return known
        summary["recorded"] = True
    command = contract.compact(contract.pending_entry(action, params, issued_at=issued, expires_at=issued + ttl_ms))
    page_records = [{"things": ",".join(page), "command": command} for page in pages]
    try:
        with ThreadPoolExecutor(THREADS) as pool:  # the pages first: a summary means the whole record is there
            list(pool.map(lambda n: _shadow_call(record.update_page, job_id, n, page_records[n]), range(len(pages))))
        _shadow_call(record.patient, record.update, JOBS_THING, {"state": {"reported": summary}}, record.summary_shadow(job_id))
    except Exception:
        if chosen:
            _let_go(job_id, owner)
        raise

    queued, not_queued, held = 0, [], frozenset[int]()
    # Each page to hand to the fan-out, with its devices this request knows are not queued (None: unknown).
    unsent: dict[int, list[str] | None] = dict(enumerate(pages))
    inline_ms = lambda: _left_ms(deadline) - HAND_OVER_MS  # noqa: E731  # the rest is the hand-over's
    if len(pages) == 1 and len(targets) <= INLINE_TARGETS and inline_ms() >= fanout.START_MS:
        held = frozenset({0})  # a claim on it by the API is this request's
        try:
            outcome = fanout.run_page(job_id, 0, by="api", remaining_ms=inline_ms)
        except fanout.Incomplete as exc:
            outcome = exc.outcome  # what did not make it goes to the fan-out function, as a retry
        except record.ShadowError:
            outcome = None  # the page's own record said how far it got; the fan-out takes it from there
        if outcome is None:
            unsent = {0: None}  # some devices may have it: none is reported unsent
        elif outcome.state != record.RETRYING:
            unsent = {}
        else:
            unsent = {0: [f["thing"] for f in outcome.failed if f["code"] in fanout.RETRYABLE_CODES]}
        if outcome is not None:
            queued = outcome.queued
            not_queued = [f for f in outcome.failed if f["code"] not in fanout.RETRYABLE_CODES]

    not_queued += _hand_over(job_id, unsent, deadline, held=held)
    return {"jobId": job_id, **{k: summary[k] for k in _STARTED}, "queued": queued, "notQueued": not_queued[:100]}


def _hand_over(job_id: str, pages: dict[int, list[str] | None], deadline: float,
               *, held: frozenset[int] = frozenset()) -> list[dict[str, Any]]:  # fmt: skip
    """Invoke the fan-out for each page; returns the devices known not to have the command where it failed.

    `pages` maps each page to its devices not queued so far (None: not known). The job is
    recorded by now: nothing here may fail the request, or the caller would retry (with a new
    id, if it chose none) and its devices could get the command twice. A page that could not
    be handed over stays open (RETRYING by the API): a retry of the same request hands it over
    (`_resume`), else it settles at the job's expiry. Its devices are reported NOT_SENT only when
    Lambda certainly did not take the event, and no sender has taken the page since: after a
    timeout, the fan-out may be queueing them, and a caller who sent them the command again
    (under another id) would have it run twice.
    """

    def hand(page: int) -> list[dict[str, Any]]:
        error, unsure = "", False
        for pause in (0.0, *INVOKE_BACKOFF_S):  # each try only with time for it and what follows a failure
            if _left_ms(deadline) - pause * 1000 < HAND_OVER_MS:
                error = error or "the fan-out could not be started: the request ran out of time"
                break
            time.sleep(pause)
            try:
                _start_fanout(job_id, page)
                return []
            except Exception as exc:
                error = f"the fan-out could not be started: {type(exc).__name__}: {str(exc)[:200]}"
                unsure = unsure or not _surely_not_invoked(exc)
        ours = _keep_open(job_id, page, error, deadline, held=page in held)
        things = pages[page]
        if unsure or not ours or things is None:
            return []
        return [{"thing": t, "code": NOT_SENT, "error": error} for t in things]

    not_queued: list[dict[str, Any]] = []
    with ThreadPoolExecutor(min(THREADS, max(1, len(pages)))) as pool:
        for failed in pool.map(hand, pages):
            not_queued += failed
    return not_queued[:100]


def _keep_open(job_id: str, page: int, error: str, deadline: float, *, held: bool = False) -> bool:
    """Record why the page was not handed over, leaving it open (RETRYING by the API) for a retry of the request.

    Only while the page is untaken or the API's: written with the version read, so that a
    fan-out which got the event after all (the invoke timed out) and took the page meanwhile
    keeps its record. `attempt` and `queued` are kept: the devices an earlier attempt queued
    stay queued. False when a sender other than the API has the page (or it is done), or another
    request's inline attempt holds it (`held`: this request's own attempt did): a retry that joins a
    job while its first request is queueing the page must leave it, and report none of it unsent.
    """
    for _ in range(3):
        if _left_ms(deadline) < 2 * record.RECORD_MS:
            return True  # not recorded: the page stays as it was, untaken or the API's, and open
        try:
            doc = record.get_page(job_id, page)
            sent = record.reported(doc).get("sent") or {}
            if doc is None:
                return True
            if sent.get("state") and (sent.get("by") != "api" or sent.get("state") in record.SETTLED):
                return False
            if sent.get("state") == record.SENDING and int(sent.get("until") or 0) > record.now_ms() and not held:
                return False
            kept = record.sent_record(record.RETRYING, attempt=int(sent.get("attempt") or 0), by="api",
                                      error=error, queued=_int_or_none(sent.get("queued")))  # fmt: skip
            record.update_page(job_id, page, {"sent": kept}, version=doc["version"])
            return True
        except record.Conflict:
            continue  # the page changed meanwhile: look again
        except record.ShadowError:
            return True  # not recorded: as above
    return True


def _resume(job_id: str, page_count: int, deadline: float) -> list[dict[str, Any]]:
    """Hand the fan-out the pages of a recorded job that no sender has, or will, come back to.

    Those are pages never taken (the first request ended before invoking their fan-out) and
    pages the API took inline whose claim lapsed or that it left RETRYING (it may have ended
    before invoking the fan-out for them, or failed to). A page the fan-out already has is left
    alone; an extra invocation would be harmless anyway (the claim lets one sender work on a page).
    """
    now = record.now_ms()
    docs = _read_pages(job_id, page_count)
    orphans: dict[int, list[str] | None] = {}
    for page, doc in enumerate(docs):
        reported = record.reported(doc)
        sent = reported.get("sent") or {}
        state, by = sent.get("state"), sent.get("by")
        live = state == record.SENDING and int(sent.get("until") or 0) > now
        if not state or (by == "api" and state not in record.SETTLED and not live):
            orphans[page] = _unsent(reported)
    return _hand_over(job_id, orphans, deadline) if orphans else []


def _unsent(reported: dict[str, Any]) -> list[str] | None:
    """A page's devices known not to be queued: all before any attempt, those an attempt could not reach
    after it (`failed`, as it recorded them), else not known (an attempt that ended without its record)."""
    things = record.page_things(reported)
    sent = reported.get("sent") or {}
    if not sent.get("state") or int(sent.get("attempt") or 0) == 0:
        return things
    if sent.get("state") == record.RETRYING and _int_or_none(sent.get("queued")) is not None:
        failed = record.decode_failed(reported.get("failed"))
        return [things[i] for i, code in sorted(failed.items()) if code in fanout.RETRYABLE_CODES and i < len(things)]
    return None


def _read_pages(job_id: str, page_count: int) -> list[dict[str, Any] | None]:
    with ThreadPoolExecutor(min(THREADS, max(1, page_count))) as pool:
        return list(pool.map(lambda n: _shadow_call(record.get_page, job_id, n), range(page_count)))


# -- progress ------------------------------------------------------------------------------


class _Page:
    """One page's record as GET sees it, and what its devices' states mean."""

    def __init__(self, number: int, first: int, reported: dict[str, Any], now: int, *, expires_at: int | None) -> None:
        self.number, self.first, self.now = number, first, now
        self.things = record.page_things(reported)
        self.command = _command_of(reported.get("command"))
        self.sent: dict[str, Any] = reported.get("sent") or {}
        self.failed = record.decode_failed(reported.get("failed"))
        self.tally = _counts_of(reported.get("tally"))
        self.final = _counts_of(reported.get("final"))
        self.tally_at = int((reported.get("tally") or {}).get("at") or 0)
        self.sent_at = int(self.sent.get("at") or 0)
        state = self.sent.get("state")
        lapsed = state == record.SENDING and int(self.sent.get("until") or 0) < now
        attempt = int(self.sent.get("attempt") or 0)
        # Settled: no sender will touch the page again. The last attempt's lapsed claim was cut
        # off (timeout); an earlier attempt's, or the API's, is followed by a fan-out (retry).
        # Once the job is past its expiry nobody sends (the fan-out refuses an expired job): a
        # page whose events Lambda dropped, or whose API claim lapsed, is settled then.
        over = expires_at is not None and now > expires_at + contract.EXPIRY_GRACE_MS
        self.live = live = state == record.SENDING and not lapsed
        cut_off = lapsed and attempt >= record.MAX_ATTEMPTS
        self.settled = state in record.SETTLED or cut_off or (over and not live)
        # From when on no sender can change the page's devices: device counts taken before may
        # miss what a sender wrote after them. A settled record is written after its sender's last
        # device call; a lapsed claim's sender may write devices until its `until` (its Lambda
        # timeout); after the job's expiry (and its grace, for clocks) no new attempt sends.
        until = int(self.sent.get("until") or 0)
        if state in record.SETTLED:
            self.quiet_at = self.sent_at
        elif cut_off:
            self.quiet_at = max(self.sent_at, until)
        else:
            self.quiet_at = max(self.sent_at, until, (expires_at or 0) + contract.EXPIRY_GRACE_MS)
        self.error = self.sent.get("error") or (f"attempt {attempt} was cut off" if lapsed else None)
        if self.error is None and over and not state:
            self.error = "EXPIRED: the job expired before this page was sent"
        self.taken = bool(state)  # some sender has worked on it: its devices may hold the command
        self.open_unknown: set[int] = set()  # devices counted UNKNOWN that may yet report (state_of): no final counts
        # The fan-out left it for Lambda to retry (the API's own attempt is retried only by a retry of the POST).
        self.retried = state == record.RETRYING and self.sent.get("by") != "api" and not self.settled

    def state_of(self, index: int, read: tuple[dict[str, Any] | None, dict[str, Any] | None], job_id: str) -> dict[str, Any]:
        """A device's state in the job from `read`: its commands shadow, and its presence when needed (_read_device)."""
        doc, presence = read
        thing = self.things[index]
        outcome = record.reported(doc).get(job_id)
        if isinstance(outcome, dict) and self._is_ours(outcome):
            if outcome.get("state") == UNKNOWN:  # recorded by the API (a GET, a new command): a device may correct it
                self.open_unknown.add(index)
            return {"thing": thing, "state": outcome.get("state"), "result": outcome.get("result"),
                    "error": contract.outcome_error(outcome)}  # fmt: skip
        pending = record.desired(doc)
        if job_id in pending and self._is_ours(pending[job_id]):
            # Expired long ago, still pending, and its device not connected since: it never ran (EXPIRED).
            # One that was may have started it, and reports the outcome when back; unanswered GIVE_UP_MS
            # after that, it is UNKNOWN (contract.unanswered), so a job with a device that died completes.
            ended = contract.unanswered(pending[job_id], self.now, presence)
            if ended is not None:
                if ended is CommandState.UNKNOWN:  # still in its queue: the device may yet report (no final counts)
                    self.open_unknown.add(index)
                return {"thing": thing, "state": ended.value, "error": contract.UNANSWERED_ERRORS[ended]}
            return {"thing": thing, "state": PENDING}
        if index in self.failed:
            code = self.failed[index]
            if code in fanout.RETRYABLE_CODES and self.retried:  # Lambda's next attempt at the page tries it again
                return {"thing": thing, "state": SENDING, "error": code}
            return {"thing": thing, "state": NOT_SENT, "error": code}
        if self.sent.get("state") == record.QUEUED or int(self.sent.get("queued") or 0) > 0:
            # Queued (the attempt that wrote `failed` did not list it), then gone: a device keeps
            # its last outcomes only.
            return {"thing": thing, "state": UNKNOWN}
        if self.live:  # a sender holds the page: it may queue the device yet
            return {"thing": thing, "state": SENDING}
        return {"thing": thing, "state": NOT_SENT, "error": self.error}

    def _is_ours(self, entry: Any) -> bool:
        """Whether the device's command under the job id is the job's, not another command a caller gave that id."""
        return self.command is None or contract.is_same_command(entry, self.command["action"], self.command["params"])

    def unread(self, index: int) -> dict[str, Any]:
        """A device whose shadow needs no read: its page was never taken. Until the job expires, its
        page is on its way to the fan-out (Lambda has the event, or a retry of the POST hands it over)."""
        if not self.settled:
            return {"thing": self.things[index], "state": SENDING}
        return {"thing": self.things[index], "state": NOT_SENT, "error": self.error}

    def done(self, counts: dict[str, int], *, taken_at: int | None = None) -> int:
        """How many of `counts` are done for good.

        UNKNOWN (queued, and now neither pending nor answered: its outcome left the device's
        history) and NOT_SENT never change again once the page settled, if they were counted
        after its last sender could write a device (`quiet_at`; `taken_at`, when the counts are
        not fresh): counted while the page was still retrying, or while its last attempt was
        still sending (a claim that lapsed later), a NOT_SENT device may have the command by now.
        Fresh counts of a settled page are read after that.
        """
        final = (NOT_SENT, UNKNOWN) if self.settled and (taken_at is None or taken_at >= self.quiet_at) else ()
        return sum(n for state, n in counts.items() if state in TERMINAL or state in final)

    def kept(self) -> tuple[dict[str, int], int | None]:
        """The page's counts without reading a device, and when they were taken (None: as good as now)."""
        if self.final is not None:
            return self.final, None
        if self.tally is not None:
            return self.tally, self.tally_at
        # An untaken page's devices are as counted; a taken one's are guessed from its record, so
        # none of them is done for good (taken before its record was written) until they are read.
        return self.assumed_counts(), None if not self.taken else 0

    def assumed_counts(self) -> dict[str, int]:
        """Counts without reading a device, as `state_of` would tell an unread device: not yet taken,
        or as its senders left it (QUEUED: queued by an attempt, outcome not read)."""
        if not self.taken:
            return {NOT_SENT if self.settled else SENDING: len(self.things)}
        counts = {NOT_SENT: len(self.failed)} if self.failed else {}
        rest = len(self.things) - len(self.failed)
        if rest:
            if self.sent.get("state") == record.QUEUED or int(self.sent.get("queued") or 0) > 0:
                state = "QUEUED"
            else:  # being sent, or nobody queued a device: the claim lapsed, or the hand-over failed
                state = SENDING if self.live else NOT_SENT
            counts[state] = counts.get(state, 0) + rest
        return counts


def _command_of(text: Any) -> dict[str, Any] | None:
    try:
        command = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return command if isinstance(command, dict) and "action" in command and "params" in command else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _counts_of(value: Any) -> dict[str, int] | None:
    if not isinstance(value, dict) or not isinstance(value.get("counts"), str):
        return None
    try:
        counts = json.loads(value["counts"])
    except ValueError:
        return None
    return {str(k): int(v) for k, v in counts.items()} if isinstance(counts, dict) else None


def _count(states: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for device in states:
        counts[str(device["state"])] = counts.get(str(device["state"]), 0) + 1
    return counts


def progress(job_id: str, *, offset: int, limit: int) -> dict[str, Any]:
    if not names.COMMAND_ID_RE.fullmatch(job_id):
        raise errors.InvalidCommandId(f"invalid job id {job_id!r}")
    if len(job_id) > MAX_JOB_ID:  # no job has one (its record's shadow name would pass AWS's 64)
        raise errors.JobNotFound(f"no job {job_id}", details={"jobId": job_id})
    summary = _summary(job_id)
    if not summary.get("action"):  # none, or opened by a request that had not claimed it yet
        raise errors.JobNotFound(f"no job {job_id}", details={"jobId": job_id})
    if summary.get("recorded") is False:  # claimed, its pages not all written: nothing is sent yet
        if _lapsed(summary):
            message = f"no job {job_id}: the request that started recording it ended first, and nothing was sent"
            raise errors.JobNotFound(message, details={"jobId": job_id})
        targets = int(summary.get("targets") or 0)
        return {"jobId": job_id, **{k: summary.get(k) for k in ("action", "createdAt", "expiresAt")},
                "targets": targets, "done": 0, "complete": targets == 0, "counts": {SENDING: targets} if targets else {},
                "devices": [], "nextOffset": None}  # fmt: skip
    now = record.now_ms()
    docs = _read_pages(job_id, int(summary.get("pages", 0)))
    with ThreadPoolExecutor(THREADS) as pool:
        pages: list[_Page] = []
        first = 0
        for n, doc in enumerate(docs):
            pages.append(_Page(n, first, record.reported(doc), now, expires_at=_int_or_none(summary.get("expiresAt"))))
            first += len(pages[-1].things)
        total = first

        # The window's devices first (those of pages some sender took; the others are unsent).
        window = range(offset, min(offset + limit, total))
        locate = _locator(pages)
        listed = {(page.number, index) for page, index in map(locate, window) if page.taken}
        states = _read_states(pool, pages, sorted(listed), job_id)
        shown: dict[int, list[dict[str, Any]]] = {}
        for (number, _), device in sorted(states.items()):
            shown.setdefault(number, []).append(device)

        # Which pages get their counts refreshed: first those whose kept counts the window's devices
        # contradict (more devices in a state than the page's counts hold: they changed since), so
        # that the answer's counts agree with its devices; then the stalest, taken and not final,
        # within the budget of device reads beyond the window.
        # A final page is never counted again: a device may since have forgotten the job's outcome
        # (its history moved on), and a recount would turn its result into UNKNOWN for good.
        refresh: list[_Page] = [p for p in pages if p.number in shown and p.final is None
                                and not _agrees(p.kept()[0], shown[p.number])]  # fmt: skip
        budget = REFRESH_DEVICES - sum(len(p.things) - len(shown[p.number]) for p in refresh)
        for page in sorted((p for p in pages if p.taken and p.final is None and p not in refresh), key=lambda p: p.tally_at):
            cost = len(page.things) - len(shown.get(page.number, ()))
            if refresh and cost > budget:
                break
            refresh.append(page)
            budget -= cost
        more = sorted({(p.number, i) for p in refresh for i in range(len(p.things))} - listed)
        states.update(_read_states(pool, pages, more, job_id))

        counts: dict[str, int] = {}
        done = 0
        for page in pages:
            if page in refresh:
                page_counts, taken_at = _count([states[(page.number, i)] for i in range(len(page.things))]), None
                _save_tally(job_id, page, page_counts, now)
            else:
                page_counts, taken_at = page.kept()
            done += page.done(page_counts, taken_at=taken_at)
            for state, n in page_counts.items():
                counts[state] = counts.get(state, 0) + n
    devices = []
    for position in window:
        page, index = locate(position)
        devices.append(states.get((page.number, index)) or page.unread(index))
    return {
        "jobId": job_id, **{k: summary.get(k) for k in ("action", "createdAt", "expiresAt")},
        "targets": total, "done": done, "complete": done == total, "counts": counts,
        "devices": devices, "nextOffset": offset + limit if offset + limit < total else None,
    }  # fmt: skip


def _read_states(pool: ThreadPoolExecutor, pages: list[_Page], keys: list[tuple[int, int]],
                 job_id: str) -> dict[tuple[int, int], dict[str, Any]]:  # fmt: skip
    """The states of the devices at `keys` (page number, index in the page), each read from its shadow."""
    read = pool.map(lambda key: _shadow_call(_read_device, pages[key[0]].things[key[1]], job_id, pages[key[0]].now), keys)
    return {key: pages[key[0]].state_of(key[1], both, job_id) for key, both in zip(keys, read, strict=True)}


def _read_device(thing: str, job_id: str, now: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A device's commands shadow, and its presence (reported) if the job's entry there expired long
    ago (contract.unanswered needs it; rare, so a GET reads no more as a rule)."""
    doc = _read_twice(thing, COMMANDS_SHADOW)
    if not contract.expired_long_ago(record.desired(doc).get(job_id), now):
        return doc, None
    return doc, record.reported(_read_twice(thing, PRESENCE_SHADOW)) or None


def _read_twice(thing: str, shadow: str) -> dict[str, Any] | None:
    """One shadow, tried twice: the client makes one short attempt per call, and one slow or failed
    read of the hundreds a GET makes must not fail the whole GET."""
    try:
        return record.get(thing, shadow)
    except record.ShadowError as exc:
        if not exc.retryable:
            raise
        time.sleep(0.05)
        return record.get(thing, shadow)


def _agrees(counts: dict[str, int], listed: list[dict[str, Any]]) -> bool:
    """Whether a page's counts may hold its devices listed (read now): no more of them in a state than counted."""
    return all(n <= counts.get(state, 0) for state, n in _count(listed).items())


def _locator(pages: list[_Page]) -> Any:
    starts = [p.first for p in pages]

    def locate(position: int) -> tuple[_Page, int]:
        page = pages[bisect.bisect_right(starts, position) - 1]
        return page, position - page.first

    return locate


def _save_tally(job_id: str, page: _Page, counts: dict[str, int], now: int) -> None:
    """Keep the counts on the page; once settled and all terminal, as final: never read again."""
    value = {"counts": json.dumps(counts, separators=(",", ":"), sort_keys=True), "at": now}
    update: dict[str, Any] = {"tally": value}
    # Not final while a device counted UNKNOWN still has the job pending: if it comes back, it reports.
    if page.settled and page.done(counts) == len(page.things) and not page.open_unknown:
        update["final"] = value
    with contextlib.suppress(record.ShadowError):  # only a cache: the next GET reads again
        record.update_page(job_id, page.number, update)
