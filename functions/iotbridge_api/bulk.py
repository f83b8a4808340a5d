"""One command to many devices: a job.

The job id is the command id on every target device, so each device runs it at
most once and reports it in its own `commands` shadow like any other command.
The job record (action, targets) lives in named shadows of the registry thing
`iotbridge-jobs`: `job-{id}` holds the summary and `job-{id}-{n}` the target
names, in pages that fit AWS's 8 KB shadow limit. No database to run.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from iotbridge_api import errors, iot
from iotbridge_api.dispatch import now_ms
from iotbridge_contract import commands as contract
from iotbridge_contract import names
from iotbridge_contract.commands import COMMANDS_SHADOW, CommandState

JOBS_THING = "iotbridge-jobs"
PAGE_CHARS = 6_000  # target names per page shadow, comma-joined, well inside 8 KB
FANOUT_THREADS = 16
MAX_EXPLICIT_TARGETS = 1_000


def _job_shadow(job_id: str, page: int | None = None) -> str:
    return f"job-{job_id}" if page is None else f"job-{job_id}-{page}"


def _all_things(deadline: float) -> list[str]:
    things: list[str] = []
    token: str | None = None
    while True:
        page, token = iot.list_things(250, token)
        things.extend(t for t in page if t != JOBS_THING)
        if not token or time.monotonic() > deadline:
            return things


def _pages(things: list[str]) -> list[str]:
    pages, current = [], ""
    for thing in things:
        if current and len(current) + len(thing) + 1 > PAGE_CHARS:
            pages.append(current)
            current = ""
        current = f"{current},{thing}" if current else thing
    if current:
        pages.append(current)
    return pages


def start(*, action: str, params: dict[str, Any], things: list[str] | None, ttl_ms: int, deadline: float) -> dict[str, Any]:
    """Queue the command on every target; returns the job summary with what could not be queued."""
    if len(contract.compact(params)) > contract.MAX_PARAMS_BYTES:
        raise errors.PayloadTooLarge(f"params exceed {contract.MAX_PARAMS_BYTES} bytes as compact JSON")
    # Without one device's spec to check against, hold params to what any spec can accept:
    # flat, named like parameters, scalar values. Each device still checks its own spec.
    for name, value in params.items():
        if not names.ACTION_NAME_RE.fullmatch(name) or not isinstance(value, (str, int, float, bool)):
            raise errors.InvalidParams(f"{name!r}: params of a bulk command are flat name: scalar pairs")
    if things is not None:
        for thing in things:
            try:
                names.thing_name(thing)
            except names.InvalidName as exc:
                raise errors.InvalidThingName(str(exc), details={"thing": str(thing)[:200]}) from None
        targets = list(dict.fromkeys(things))
    else:
        targets = _all_things(deadline)
    job_id = uuid.uuid4().hex
    issued = now_ms()
    entry = contract.pending_entry(action, params, issued_at=issued, expires_at=issued + ttl_ms)
    pages = _pages(targets)
    for n, page in enumerate(pages):
        iot.update_shadow(JOBS_THING, {"state": {"reported": {"things": page}}}, _job_shadow(job_id, n))
    summary = {"action": action, "params": params, "createdAt": issued, "expiresAt": issued + ttl_ms,
               "targets": len(targets), "pages": len(pages)}  # fmt: skip
    iot.update_shadow(JOBS_THING, {"state": {"reported": summary}}, _job_shadow(job_id))

    def queue(thing: str) -> tuple[str, str | None]:
        if time.monotonic() > deadline:
            return thing, "NOT_SENT"
        try:
            iot.update_shadow(thing, {"state": {"desired": {job_id: entry}}, "clientToken": job_id}, COMMANDS_SHADOW)
        except errors.ApiError as exc:
            return thing, exc.code
        return thing, None

    with ThreadPoolExecutor(FANOUT_THREADS) as pool:
        failed = [{"thing": t, "code": code} for t, code in pool.map(queue, targets) if code]
    return {"jobId": job_id, **summary, "queued": len(targets) - len(failed), "notQueued": failed[:100]}


def progress(job_id: str, *, offset: int, limit: int) -> dict[str, Any]:
    if not names.COMMAND_ID_RE.fullmatch(job_id):
        raise errors.InvalidCommandId(f"invalid job id {job_id!r}")
    summary_doc = iot.get_shadow(JOBS_THING, _job_shadow(job_id))
    if summary_doc is None:
        raise errors.JobNotFound(f"no job {job_id}", details={"jobId": job_id})
    summary = summary_doc["state"]["reported"]
    targets: list[str] = []
    for n in range(int(summary.get("pages", 0))):
        page = iot.get_shadow(JOBS_THING, _job_shadow(job_id, n)) or {}
        targets.extend(filter(None, str(page.get("state", {}).get("reported", {}).get("things", "")).split(",")))

    def state_of(thing: str) -> dict[str, Any]:
        doc = iot.get_shadow(thing, COMMANDS_SHADOW) or {}
        state = doc.get("state", {})
        outcome = (state.get("reported") or {}).get(job_id)
        if isinstance(outcome, dict):
            return {"thing": thing, "state": outcome.get("state"), "result": outcome.get("result"), "error": outcome.get("error")}
        if job_id in (state.get("desired") or {}):
            return {"thing": thing, "state": "PENDING"}
        return {"thing": thing, "state": "UNKNOWN"}

    with ThreadPoolExecutor(FANOUT_THREADS) as pool:
        devices = list(pool.map(state_of, targets))
    counts: dict[str, int] = {}
    for device in devices:
        counts[device["state"]] = counts.get(device["state"], 0) + 1
    terminal = {s.value for s in CommandState if s.terminal}
    done = sum(n for state, n in counts.items() if state in terminal)
    window = devices[offset : offset + limit]
    return {
        "jobId": job_id, **{k: summary.get(k) for k in ("action", "createdAt", "expiresAt")},
        "targets": len(targets), "done": done, "complete": done == len(targets), "counts": counts,
        "devices": window, "nextOffset": offset + limit if offset + limit < len(devices) else None,
    }  # fmt: skip
