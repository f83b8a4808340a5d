"""Request and response bodies, and the path and query parameters of each route.

Requests are strict: a boolean is not an integer, unknown fields are errors. Each class is the one
definition of its shape: the router validates with it, the OpenAPI document is written from it.
"""

from __future__ import annotations

from typing import Any, Literal

from iotbridge_api.schema import Model, field
from iotbridge_contract import commands as contract

MAX_WAIT_MS = 29_000  # API Gateway's integration timeout
MAX_JOB_ID = 48  # a caller's job id; `job-{id}` names its record's shadow (AWS: at most 64 characters)


class ErrorBody(Model):
    """Every error the API answers."""

    code: str = field(description="Stable machine-readable code, see docs/protocol.md")
    message: str = field(description="What went wrong, for a person")
    details: Any = field(default=None, description="Structured context (known actions, validation problems, …)")


class CommandRequest(Model, strict=True):
    action: str = field(min_length=1, max_length=32, description="An action the device advertises")
    params: dict[str, Any] = field(default_factory=dict, description="Parameters, checked against the device's spec")
    id: str | None = field(
        default=None, min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$",
        description="Caller-chosen id; a retry with the same id never runs the command twice",
    )  # fmt: skip
    timeoutMs: int = field(default=10_000, ge=0, le=MAX_WAIT_MS, description="How long to wait for the answer")
    ttlMs: int = field(
        default=contract.DEFAULT_TTL_MS, ge=1_000, le=contract.MAX_TTL_MS,
        description="After this, a device that has not started the command never will (EXPIRED)",
    )  # fmt: skip
    ifOffline: Literal["fail", "queue"] = field(
        default="queue", description="Device offline: fail now with 409, or queue until ttlMs"
    )


class CommandView(Model):
    id: str = field(description="The caller's id, or one the API made: 26 characters, a-z and 2-7")
    thing: str
    action: str
    state: str = field(description="QUEUED | SENT | SUCCEEDED | FAILED | REJECTED | TIMED_OUT | EXPIRED | UNKNOWN")
    params: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    issuedAt: int | None = None
    expiresAt: int | None = None
    doneAt: int | None = None
    latencyMs: float | None = field(default=None, description="Submit to outcome, as measured by the API")
    reported: dict[str, Any] | None = field(
        default=None, description="The device's reported state after the command (with a terminal answer to POST)"
    )


class CommandList(Model):
    thing: str
    commands: list[CommandView]


class DesiredRequest(Model, strict=True):
    state: dict[str, Any] = field(description="Keys to set in desired; null removes a key")
    waitMs: int = field(default=0, ge=0, le=MAX_WAIT_MS, description="Wait until reported converges")


class DesiredResult(Model):
    thing: str
    converged: bool
    version: int | None = None
    desired: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, Any] = field(default_factory=dict)
    delta: dict[str, Any] = field(default_factory=dict)


class DeviceSummary(Model):
    thing: str
    connected: bool
    lastSeen: int | None = field(default=None, description="ms since epoch of the last presence event")
    reported: dict[str, Any] = field(default_factory=dict)
    actions: dict[str, dict[str, str]] = field(default_factory=dict)


class DeviceList(Model):
    devices: list[DeviceSummary]
    nextToken: str | None = None


class DeviceDetail(DeviceSummary):
    shadowName: str | None = None
    shadow: dict[str, Any] = field(description="The shadow document: state (desired/reported/delta), metadata, version")


class Health(Model):
    status: Literal["ok"]


class BulkRequest(Model, strict=True):
    action: str = field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]{0,31}$",
                        description="The action to run on every target (a lowercase identifier, as devices name them)")
    id: str | None = field(
        default=None, min_length=1, max_length=MAX_JOB_ID, pattern=r"^[a-zA-Z0-9_-]+$",
        description=("Caller-chosen job id (the command id on every device). A retry with the same id, action, params, "
                     "targets and ttlMs starts nothing new; with any of them different it is ID_CONFLICT. A target "
                     "that already has another command under this id keeps it and is not sent the job (ID_CONFLICT)"),
    )  # fmt: skip
    params: dict[str, Any] = field(default_factory=dict)
    things: list[str] | None = field(default=None, min_length=1, max_length=1000, description="Targets; or all=true")
    all: bool = field(default=False, description="Every registered device")
    ttlMs: int = field(default=contract.DEFAULT_TTL_MS, ge=1_000, le=contract.MAX_TTL_MS)


class JobStarted(Model):
    jobId: str
    action: str
    targets: int
    queued: int
    createdAt: int
    expiresAt: int
    notQueued: list[dict[str, Any]] = field(default_factory=list, description="Targets the command could not be queued on")


class JobProgress(Model):
    jobId: str
    action: str | None = None
    createdAt: int | None = None
    expiresAt: int | None = None
    targets: int
    done: int
    complete: bool
    counts: dict[str, int] = field(description="Devices per state (SUCCEEDED, PENDING, …)")
    devices: list[dict[str, Any]] = field(description="Per-device state, one window of them")
    nextOffset: int | None = None


# ---- path and query parameters (the router hands their fields to the handler by name) ----
# Path values are capped generously here; the handler checks the real rules (names.thing_name, ...)
# to answer with its specific error code.


class ThingPath(Model, strict=True):
    thing: str = field(max_length=1024, description="Thing name: 1-128 of a-z A-Z 0-9 : _ -")


class CommandPath(ThingPath, strict=True):
    command_id: str = field(max_length=1024)


class JobPath(Model, strict=True):
    job_id: str = field(max_length=1024)


class Query(Model, strict=True):
    """Query strings are text: "5" is an integer there (bodies stay strict)."""

    __coerce__ = True


class DevicesQuery(Query):
    limit: int = field(default=50, ge=1, le=100)
    nextToken: str | None = field(default=None, max_length=2048)


class DeviceQuery(Query):
    shadow: str | None = field(default=None, max_length=256, description="A named shadow instead of the classic one")


class JobQuery(Query):
    offset: int = field(default=0, ge=0)
    limit: int = field(default=500, ge=1, le=1000)
