"""The HTTP API: routes, their OpenAPI description, and how errors become responses."""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Annotated, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.params import Body, Path, Query
from aws_lambda_powertools.metrics import MetricUnit

from iotbridge_api import bulk, dispatch, errors, guard, iot, waiting
from iotbridge_api.models import (
    MAX_WAIT_MS,
    BulkRequest,
    CommandList,
    CommandRequest,
    CommandView,
    DesiredRequest,
    DesiredResult,
    DeviceDetail,
    DeviceList,
    DeviceSummary,
    ErrorBody,
    Health,
    JobProgress,
    JobStarted,
)
from iotbridge_api.observability import logger, metrics
from iotbridge_contract import names
from iotbridge_contract.commands import PRESENCE_SHADOW

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

DEADLINE_MARGIN_MS = 1_000  # leave time to answer before Lambda's own timeout


class BridgeResolver(APIGatewayRestResolver):
    """Checks the raw request (size, media type) before Powertools parses its body."""

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        try:
            guard.check_request(event)
            self._check_query(event)
        except errors.ApiError as exc:
            return _raw_error(event, exc, self._cors)
        return super().resolve(event, context)

    def _check_query(self, event: dict[str, Any]) -> None:
        """Unknown query parameters are refused, as unknown body fields are (a typo must not pass silently)."""
        given = set(event.get("multiValueQueryStringParameters") or event.get("queryStringParameters") or {})
        if not given:
            return
        path, method = str(event.get("path") or ""), str(event.get("httpMethod") or "").upper()
        for route in self._static_routes + self._dynamic_routes:
            if route.method == method and route.rule.match(path):
                unknown = sorted(given - {f.alias for f in route.dependant.query_params})
                if unknown:
                    problems = [{"loc": ["query", name], "msg": "unknown query parameter", "type": "extra_forbidden"}
                                for name in unknown]  # fmt: skip
                    raise errors.ValidationFailed(f"unknown query parameter(s): {', '.join(unknown)}", details=problems)
                return


def _raw_error(event: dict[str, Any], exc: errors.ApiError, cors: CORSConfig | None) -> dict[str, Any]:
    headers = {"Content-Type": content_types.APPLICATION_JSON}
    if cors is not None:
        sent = {k.lower(): v for k, v in (event.get("headers") or {}).items()}.get("origin")
        origin = cors.allowed_origin(sent or "")
        if origin is not None:
            headers.update(cors.to_dict(origin))
    return {"statusCode": exc.status, "headers": headers, "body": json.dumps(exc.body()), "isBase64Encoded": False}


def _cors() -> CORSConfig | None:
    origin = os.environ.get("DASHBOARD_ORIGIN", "")
    if not origin:
        return None
    # Location must be exposed, or the dashboard cannot read where a 202's command lives.
    return CORSConfig(allow_origin=origin, allow_headers=["x-api-key", "content-type"], expose_headers=["Location"], max_age=600)


app = BridgeResolver(enable_validation=True, cors=_cors())


def _responses(*errs: type[errors.ApiError], ok: bool = True) -> dict[int, OpenAPIResponse]:
    """OpenAPI responses for the errors a route can answer (grouped by status), and its 200
    (given explicitly: a `responses` argument replaces Powertools' default one; it fills in the model)."""
    out: dict[int, Any] = {200: {"description": "Successful Response"}} if ok else {}
    for err in errs:
        entry = out.setdefault(err.status, {"description": "", "content": {"application/json": {"model": ErrorBody}}})
        entry["description"] = ", ".join(filter(None, [entry["description"], err.code]))
    return out


_COMMON = (errors.Throttled, errors.UpstreamError)
# A {thing} the route pattern cannot match (e.g. non-ASCII) is no route at all: 404 NOT_FOUND.
_THING = (errors.InvalidThingName, errors.RouteNotFound, *_COMMON)

ThingPath = Annotated[str, Path(description="Thing name: 1-128 of a-z A-Z 0-9 : _ -", max_length=1024)]


def _thing(value: str) -> str:
    try:
        return names.thing_name(value)
    except names.InvalidName as exc:
        raise errors.InvalidThingName(str(exc), details={"thing": value[:200]}) from None


def _deadline(wait_ms: int) -> float:
    """min(caller's wait, Lambda's remaining time less a margin, API Gateway's 29 s), as monotonic time."""
    budget = min(wait_ms, MAX_WAIT_MS)
    context = app.lambda_context
    if context is not None and hasattr(context, "get_remaining_time_in_millis"):
        budget = min(budget, context.get_remaining_time_in_millis() - DEADLINE_MARGIN_MS)
    return time.monotonic() + max(budget, 0) / 1000


@app.exception_handler(errors.ApiError)
def _api_error(exc: errors.ApiError) -> Response:
    if exc.status >= 500:
        logger.warning("upstream failure", extra={"code": exc.code, "error": exc.message})
    return Response(status_code=exc.status, content_type=content_types.APPLICATION_JSON, body=exc.body())


@app.exception_handler(RequestValidationError)
def _validation_error(exc: RequestValidationError) -> Response:
    problems = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in exc.errors()
    ]
    if any(p["type"] == "json_invalid" for p in problems):
        return _api_error(errors.InvalidJson("the body is not valid JSON"))
    return _api_error(errors.ValidationFailed("the request does not match the schema", details=problems))


@app.not_found
def _not_found(exc: NotFoundError) -> Response:
    path = app.current_event.path
    if any(route.rule.match(path) for route in app._static_routes + app._dynamic_routes):
        return _api_error(errors.MethodNotAllowed(f"{app.current_event.http_method} is not allowed on {path}"))
    return _api_error(errors.RouteNotFound(f"no route {path}"))


@app.get("/health", summary="Liveness", tags=["health"])
def health() -> Health:
    return Health(status="ok")


def _summary(device: dispatch.Device) -> dict[str, Any]:
    reported = {k: v for k, v in device.reported.items() if k != "actions"}
    return {"thing": device.thing, "connected": device.connected, "lastSeen": device.last_seen,
            "reported": reported, "actions": device.actions}  # fmt: skip


@app.get("/devices", summary="Known devices with presence and last reported state", tags=["devices"],
         responses=_responses(errors.InvalidQuery, *_COMMON))  # fmt: skip
def list_devices(
    limit: Annotated[int, Query(ge=1, le=100)] = 50,
    nextToken: Annotated[str | None, Query(max_length=2048)] = None,
) -> DeviceList:
    things, token = iot.list_things(limit, nextToken)
    devices = []
    for thing in things:
        shadow, presence = dispatch.read_together(thing, None, PRESENCE_SHADOW)
        devices.append(DeviceSummary(**_summary(dispatch.Device(thing, shadow or {}, presence))))
    return DeviceList(devices=devices, nextToken=token)


@app.get("/devices/<thing>", summary="A device's shadow and presence", tags=["devices"],
         responses=_responses(errors.DeviceNotFound, errors.InvalidShadowName, *_THING))  # fmt: skip
def get_device(
    thing: ThingPath,
    shadow: Annotated[str | None, Query(description="A named shadow instead of the classic one", max_length=256)] = None,
) -> DeviceDetail:
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
           tags=["devices"], responses=_responses(errors.InvalidDocument, *_THING))  # fmt: skip
def patch_desired(thing: ThingPath, body: Annotated[DesiredRequest, Body()]) -> DesiredResult:
    name = _thing(thing)
    deadline = _deadline(body.waitMs)
    iot.update_shadow(name, {"state": {"desired": body.state}})
    waiting.note_request(name)
    keys = [k for k, v in body.state.items() if v is not None]

    def converged(doc: dict[str, Any] | None) -> dict[str, Any] | None:
        delta = ((doc or {}).get("state") or {}).get("delta") or {}
        return doc if doc is not None and not any(k in delta for k in keys) else None

    doc = waiting.poll_until(name, None, converged, deadline) if body.waitMs else None
    done = doc is not None
    doc = doc or iot.get_shadow(name) or {}
    state = doc.get("state") or {}
    return DesiredResult(thing=name, converged=done or not keys, version=doc.get("version"),
                         desired=state.get("desired") or {}, reported=state.get("reported") or {},
                         delta=state.get("delta") or {})  # fmt: skip


@app.post(
    "/devices/<thing>/commands",
    summary="Send a command and wait for the device's answer",
    description="200 with the outcome when the device answered in time; 202 with the id, its current state and a "
    "Location when the wait ran out. A retry with the same id never runs the command twice.",
    tags=["commands"],
    responses={
        200: {"description": "The command reached a terminal state", "content": {"application/json": {"model": CommandView}}},
        202: {"description": "The wait ran out; poll Location", "content": {"application/json": {"model": CommandView}}},
        **_responses(errors.UnknownAction, errors.InvalidParams, errors.InvalidJson, errors.DeviceNotFound,
                     errors.DeviceOffline, errors.IdConflict, errors.PayloadTooLarge, errors.UnsupportedMediaType,
                     errors.TooManyPending, errors.InvalidDocument, *_THING, ok=False),
    },
)  # fmt: skip
def post_command(thing: ThingPath, body: Annotated[CommandRequest, Body()]) -> Response[CommandView]:
    name = _thing(thing)
    if body.id is not None:
        logger.set_correlation_id(body.id)
    started = time.perf_counter()
    current, terminal = dispatch.submit(name, body, deadline=_deadline(body.timeoutMs))
    logger.set_correlation_id(current.id)
    metrics.add_metric(name="CommandWaitMs", unit=MetricUnit.Milliseconds, value=(time.perf_counter() - started) * 1000)
    metrics.add_metric(name=f"Command{current.state.title().replace('_', '')}", unit=MetricUnit.Count, value=1)
    logger.info("command", extra={"thing": name, "action": body.action, "state": current.state})
    headers = {} if terminal else {"Location": f"/devices/{name}/commands/{current.id}"}
    return Response(status_code=200 if terminal else 202, content_type=content_types.APPLICATION_JSON,
                    body=current, headers=headers)  # fmt: skip


@app.get("/devices/<thing>/commands/<command_id>", summary="One command's state and outcome", tags=["commands"],
         responses=_responses(errors.InvalidCommandId, errors.CommandNotFound, *_THING))  # fmt: skip
def get_command(thing: ThingPath, command_id: Annotated[str, Path(max_length=1024)]) -> CommandView:
    name = _thing(thing)
    try:
        cid = names.command_id(command_id)
    except names.InvalidName as exc:
        raise errors.InvalidCommandId(str(exc)) from None
    logger.set_correlation_id(cid)
    return dispatch.lookup(name, cid)


@app.get("/devices/<thing>/commands", summary="Pending and recent commands, newest first", tags=["commands"],
         responses=_responses(*_THING))  # fmt: skip
def list_commands(thing: ThingPath) -> CommandList:
    name = _thing(thing)
    return CommandList(thing=name, commands=dispatch.history(name))


_BULK_ERRORS = _responses(errors.InvalidThingName, errors.InvalidParams, errors.PayloadTooLarge, *_COMMON, ok=False)


@app.post("/commands", summary="One command to many devices (a list, or all): a job", tags=["jobs"],
          responses={202: {"description": "Queued on the targets; follow GET /commands/jobs/{id}",
                           "content": {"application/json": {"model": JobStarted}}}, **_BULK_ERRORS})  # fmt: skip
def post_bulk(body: Annotated[BulkRequest, Body()]) -> Response[JobStarted]:
    if (body.things is None) == (not body.all):
        problem = {"loc": ["body"], "msg": "give either things or all: true", "type": "value_error"}
        raise errors.ValidationFailed("give either `things` or `all: true`", details=[problem])
    started = bulk.start(action=body.action, params=body.params, things=body.things, ttl_ms=body.ttlMs,
                         deadline=_deadline(MAX_WAIT_MS))  # fmt: skip
    logger.info("bulk command", extra={"jobId": started["jobId"], "targets": started["targets"]})
    return Response(status_code=202, content_type=content_types.APPLICATION_JSON, body=JobStarted(**started),
                    headers={"Location": f"/commands/jobs/{started['jobId']}"})  # fmt: skip


@app.get("/commands/jobs/<job_id>", summary="Per-device progress of a bulk command", tags=["jobs"],
         responses=_responses(errors.InvalidCommandId, errors.JobNotFound, errors.RouteNotFound, *_COMMON))  # fmt: skip
def get_job(
    job_id: Annotated[str, Path(max_length=1024)],
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JobProgress:
    return JobProgress(**bulk.progress(job_id, offset=offset, limit=limit))
