"""The HTTP API: its routes, with what each takes, answers and may fail with (the OpenAPI document is written from them)."""

from __future__ import annotations

import os
import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from iotbridge_api import dispatch, errors, iot, waiting
from iotbridge_api.models import (
    MAX_WAIT_MS,
    BulkRequest,
    CommandList,
    CommandPath,
    CommandRequest,
    CommandView,
    DesiredRequest,
    DesiredResult,
    DeviceDetail,
    DeviceList,
    DeviceQuery,
    DevicesQuery,
    DeviceSummary,
    Health,
    JobPath,
    JobProgress,
    JobQuery,
    JobStarted,
    ThingPath,
)
from iotbridge_api.observability import logger, metrics
from iotbridge_api.router import Cors, Response, Router
from iotbridge_contract import commands as contract
from iotbridge_contract import names
from iotbridge_contract.commands import PRESENCE_SHADOW

DEADLINE_MARGIN_MS = 1_000  # leave time to answer before Lambda's own timeout
# API Gateway's 29 s run from the request's arrival: a cold start's init (~1 s) comes out of them
# too. The answer is ready this much earlier, so a 202 always makes it back.
GATEWAY_MARGIN_MS = 2_000


def _cors() -> Cors | None:
    origin = os.environ.get("DASHBOARD_ORIGIN", "")
    if not origin:
        return None
    # Location must be exposed, or the dashboard cannot read where a 202's command lives.
    return Cors(origin=origin, allow_headers=_ALLOW_HEADERS, expose_headers=("Location",), max_age=600)


# What the dashboard sends (x-api-key, content-type), with the headers API Gateway clients commonly add.
_ALLOW_HEADERS = ("Authorization", "Content-Type", "X-Amz-Date", "X-Amz-Security-Token", "X-Api-Key", "content-type", "x-api-key")

app = Router(cors=_cors())

_COMMON = (errors.Throttled, errors.UpstreamError)
# A {thing} the route pattern cannot match (e.g. one with a `/`) is no route at all: 404 NOT_FOUND.
_THING = (errors.InvalidThingName, errors.RouteNotFound, *_COMMON)


def _thing(value: str) -> str:
    try:
        return names.device_name(value)
    except names.InvalidName as exc:
        raise errors.InvalidThingName(str(exc), details={"thing": value[:200]}) from None


def _url_path(route_path: str) -> str:
    event = app.current_event
    return event.url_path(route_path) if event is not None else route_path


def _cutoff() -> float:
    """When the answer must be ready (monotonic): API Gateway's 29 s or Lambda's remaining time, less margins.

    The gateway's 29 s are counted from `requestContext.requestTimeEpoch`, the request's arrival:
    a cold start, or a Lambda timeout set longer than 29 s, must not eat the margin. An epoch
    more than 29 s old (a sample event, replayed) says nothing about this request and is ignored.
    """
    budget = MAX_WAIT_MS - GATEWAY_MARGIN_MS
    event = app.current_event
    arrived = ((event.raw.get("requestContext") or {}).get("requestTimeEpoch") if event is not None else None)
    if isinstance(arrived, int) and not isinstance(arrived, bool):
        waited = int(time.time() * 1000) - arrived
        if 0 <= waited <= MAX_WAIT_MS:
            budget = min(budget, MAX_WAIT_MS - waited - GATEWAY_MARGIN_MS)
    context = app.lambda_context
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        budget = min(budget, context.get_remaining_time_in_millis() - DEADLINE_MARGIN_MS)
    return time.monotonic() + max(budget, 0) / 1000


@app.on_request
def _start_clock() -> None:
    iot.set_cutoff(_cutoff())


def _deadline(wait_ms: int, *, reads_after: int = 0) -> float:
    """When a wait of `wait_ms` must stop (monotonic): a read started then, and `reads_after` more, still end in time."""
    latest = (iot.cutoff() or _cutoff()) - (1 + reads_after) * iot.CALL_MAX_S
    return min(time.monotonic() + wait_ms / 1000, latest)


@app.on_error
def _log_error(exc: errors.ApiError) -> None:
    if exc.status >= 500:
        logger.warning("upstream failure", extra={"code": exc.code, "error": exc.message})


@app.get("/health", summary="Liveness", tags=["health"], response=Health)
def health() -> Health:
    return Health(status="ok")


def _summary(device: dispatch.Device) -> dict[str, Any]:
    reported = {k: v for k, v in device.reported.items() if k != "actions"}
    return {"thing": device.thing, "connected": device.connected, "lastSeen": device.last_seen,
            "reported": reported, "actions": device.actions}  # fmt: skip


@app.get("/devices", summary="Known devices with presence and last reported state", tags=["devices"],
         query=DevicesQuery, response=DeviceList, errors=(errors.InvalidQuery, *_COMMON))  # fmt: skip
def list_devices(limit: int, nextToken: str | None) -> DeviceList:
    things, token = iot.list_things(limit, nextToken)
    devices = []
    for thing in things:
        shadow, presence = dispatch.read_together(thing, None, PRESENCE_SHADOW)
        devices.append(DeviceSummary(**_summary(dispatch.Device(thing, shadow or {}, presence))))
    return DeviceList(devices=devices, nextToken=token)


@app.get("/devices/<thing>", summary="A device's shadow and presence", tags=["devices"], path=ThingPath, query=DeviceQuery,
         response=DeviceDetail, errors=(errors.DeviceNotFound, errors.InvalidShadowName, *_THING))  # fmt: skip
def get_device(thing: str, shadow: str | None) -> DeviceDetail:
    device, _ = dispatch.load_device(_thing(thing))
    doc = device.shadow
    if shadow is not None:
        try:
            names.shadow_name(shadow)
        except names.InvalidName as exc:
            raise errors.InvalidShadowName(str(exc)) from None
        named = iot.get_shadow(device.thing, shadow)
        if named is None:
            raise errors.DeviceNotFound(f"{device.thing} has no shadow named {shadow!r}")
        doc = named
    return DeviceDetail(**_summary(device), shadowName=shadow, shadow=doc)


@app.patch("/devices/<thing>/desired", summary="Change desired state; optionally wait until reported converges",
           tags=["devices"], path=ThingPath, body=DesiredRequest, response=DesiredResult,
           errors=(errors.InvalidDocument, errors.PayloadTooLarge, *_THING))  # fmt: skip
def patch_desired(thing: str, body: DesiredRequest) -> DesiredResult:
    name = _thing(thing)
    if contract.key_levels(body.state) > contract.MAX_STATE_LEVELS:
        raise errors.InvalidDocument(f"desired nests deeper than AWS IoT's {contract.MAX_STATE_LEVELS} levels of keys")
    deadline = _deadline(body.waitMs, reads_after=1)
    iot.update_shadow(name, {"state": {"desired": body.state}})
    waiting.note_request(name)
    keys = [k for k, v in body.state.items() if v is not None]

    def converged(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        delta = ((doc or {}).get("state") or {}).get("delta") or {}
        return doc if doc and not any(k in delta for k in keys) else None

    doc = waiting.poll_until(name, None, converged, deadline) if body.waitMs else None
    doc = doc or iot.get_shadow(name) or {}  # read after the update: it may show convergence (already reported)
    state = doc.get("state") or {}
    return DesiredResult(thing=name, converged=converged(doc) is not None, version=doc.get("version"),
                         desired=state.get("desired") or {}, reported=state.get("reported") or {},
                         delta=state.get("delta") or {})  # fmt: skip


@app.post(
    "/devices/<thing>/commands",
    summary="Send a command and wait for the device's answer",
    description="200 with the outcome when the device answered in time; 202 with the id, its current state and a "
    "Location when the wait ran out. A retry with the same id never runs the command twice.",
    tags=["commands"],
    path=ThingPath,
    body=CommandRequest,
    responses={200: (CommandView, "The command reached a terminal state"), 202: (CommandView, "The wait ran out; poll Location")},
    errors=(errors.UnknownAction, errors.InvalidParams, errors.InvalidJson, errors.DeviceNotFound, errors.DeviceOffline,
            errors.IdConflict, errors.PayloadTooLarge, errors.UnsupportedMediaType, errors.TooManyPending,
            errors.InvalidDocument, *_THING),
)  # fmt: skip
def post_command(thing: str, body: CommandRequest) -> Response:
    name = _thing(thing)
    if body.id is not None:
        logger.set_correlation_id(body.id)
    started = time.perf_counter()
    # After the wait: one more read (the outcome's new state, or presence for SENT/QUEUED).
    current, terminal = dispatch.submit(name, body, deadline=_deadline(body.timeoutMs, reads_after=1))
    logger.set_correlation_id(current.id)
    metrics.add_metric(name="CommandWaitMs", unit=MetricUnit.Milliseconds, value=(time.perf_counter() - started) * 1000)
    metrics.add_metric(name=f"Command{current.state.title().replace('_', '')}", unit=MetricUnit.Count, value=1)
    logger.info("command", extra={"thing": name, "action": body.action, "state": current.state})
    headers = {} if terminal else {"Location": _url_path(f"/devices/{name}/commands/{current.id}")}
    return Response(200 if terminal else 202, current, headers)


@app.get("/devices/<thing>/commands/<command_id>", summary="One command's state and outcome", tags=["commands"],
         path=CommandPath, response=CommandView, errors=(errors.InvalidCommandId, errors.CommandNotFound, *_THING))  # fmt: skip
def get_command(thing: str, command_id: str) -> CommandView:
    name = _thing(thing)
    try:
        cid = names.command_id(command_id)
    except names.InvalidName as exc:
        raise errors.InvalidCommandId(str(exc)) from None
    logger.set_correlation_id(cid)
    return dispatch.lookup(name, cid)


@app.get("/devices/<thing>/commands", summary="Pending and recent commands, newest first", tags=["commands"],
         path=ThingPath, response=CommandList, errors=_THING)  # fmt: skip
def list_commands(thing: str) -> CommandList:
    name = _thing(thing)
    return CommandList(thing=name, commands=dispatch.history(name))


# The bulk routes import `bulk` on their first request: it brings the job fan-out with it, which a
# cold start for any other route does not need (as boto3 waits for the first AWS call).


@app.post("/commands", summary="One command to many devices (a list, or all): a job", tags=["jobs"], body=BulkRequest,
          responses={202: (JobStarted, "Queued on the targets; follow GET /commands/jobs/{id}")},
          errors=(errors.InvalidThingName, errors.InvalidParams, errors.PayloadTooLarge, errors.TooManyTargets,
                  errors.IdConflict, *_COMMON))  # fmt: skip
def post_bulk(body: BulkRequest) -> Response:
    if (body.things is None) == (not body.all):
        problem = {"loc": ["body"], "msg": "give either things or all: true", "type": "value_error"}
        raise errors.ValidationFailed("give either `things` or `all: true`", details=[problem])
    from iotbridge_api import bulk

    started = bulk.start(action=body.action, params=body.params, things=body.things, ttl_ms=body.ttlMs,
                         deadline=iot.cutoff() or _cutoff(), job_id=body.id)  # fmt: skip
    logger.info("bulk command", extra={"jobId": started["jobId"], "targets": started["targets"]})
    return Response(202, JobStarted(**started), {"Location": _url_path(f"/commands/jobs/{started['jobId']}")})


@app.get("/commands/jobs/<job_id>", summary="Per-device progress of a bulk command", tags=["jobs"], path=JobPath,
         query=JobQuery, response=JobProgress,
         errors=(errors.InvalidCommandId, errors.JobNotFound, errors.RouteNotFound, *_COMMON))  # fmt: skip
def get_job(job_id: str, offset: int, limit: int) -> JobProgress:
    from iotbridge_api import bulk

    return JobProgress(**bulk.progress(job_id, offset=offset, limit=limit))
