"""Request and response bodies. Strict: a boolean is not an integer, unknown fields are errors."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from iotbridge_contract import commands as contract

MAX_WAIT_MS = 29_000  # API Gateway's integration timeout


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ErrorBody(BaseModel):
    """Every error the API answers."""

    code: str = Field(description="Stable machine-readable code, see docs/protocol.md")
    message: str = Field(description="What went wrong, for a person")
    details: Any = Field(default=None, description="Structured context (known actions, validation problems, …)")


class CommandRequest(Strict):
    action: str = Field(min_length=1, max_length=32, description="An action the device advertises")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters, checked against the device's spec")
    id: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$",
        description="Caller-chosen id; a retry with the same id never runs the command twice",
    )  # fmt: skip
    timeoutMs: int = Field(default=10_000, ge=0, le=MAX_WAIT_MS, description="How long to wait for the answer")
    ttlMs: int = Field(
        default=contract.DEFAULT_TTL_MS, ge=1_000, le=contract.MAX_TTL_MS,
        description="After this, a device that has not started the command never will (EXPIRED)",
    )  # fmt: skip
    ifOffline: Literal["fail", "queue"] = Field(
        default="queue", description="Device offline: fail now with 409, or queue until ttlMs"
    )


class CommandView(BaseModel):
    id: str
    thing: str
    action: str
    state: str = Field(description="QUEUED | SENT | SUCCEEDED | FAILED | REJECTED | TIMED_OUT | EXPIRED")
    params: dict[str, Any] | None = None
    result: Any = None
    error: str | None = None
    issuedAt: int | None = None
    expiresAt: int | None = None
    doneAt: int | None = None
    latencyMs: float | None = Field(default=None, description="Submit to outcome, as measured by the API")
    reported: dict[str, Any] | None = Field(
        default=None, description="The device's reported state after the command (with a terminal answer to POST)"
    )


class CommandList(BaseModel):
    thing: str
    commands: list[CommandView]


class DesiredRequest(Strict):
    state: dict[str, Any] = Field(description="Keys to set in desired; null removes a key")
    waitMs: int = Field(default=0, ge=0, le=MAX_WAIT_MS, description="Wait until reported converges")


class DesiredResult(BaseModel):
    thing: str
    converged: bool
    version: int | None = None
    desired: dict[str, Any] = Field(default_factory=dict)
    reported: dict[str, Any] = Field(default_factory=dict)
    delta: dict[str, Any] = Field(default_factory=dict)


class DeviceSummary(BaseModel):
    thing: str
    connected: bool
    lastSeen: int | None = Field(default=None, description="ms since epoch of the last presence event")
    reported: dict[str, Any] = Field(default_factory=dict)
    actions: dict[str, dict[str, str]] = Field(default_factory=dict)


class DeviceList(BaseModel):
    devices: list[DeviceSummary]
    nextToken: str | None = None


class DeviceDetail(DeviceSummary):
    shadowName: str | None = None
    shadow: dict[str, Any] = Field(description="The shadow document: state (desired/reported/delta), metadata, version")


class Health(BaseModel):
    status: Literal["ok"]


class BulkRequest(Strict):
    action: str = Field(min_length=1, max_length=32, description="The action to run on every target")
    params: dict[str, Any] = Field(default_factory=dict)
    things: list[str] | None = Field(default=None, min_length=1, max_length=1000, description="Targets; or all=true")
    all: bool = Field(default=False, description="Every registered device")
    ttlMs: int = Field(default=contract.DEFAULT_TTL_MS, ge=1_000, le=contract.MAX_TTL_MS)


class JobStarted(BaseModel):
    jobId: str
    action: str
    targets: int
    queued: int
    createdAt: int
    expiresAt: int
    notQueued: list[dict[str, Any]] = Field(default_factory=list, description="Targets the command could not be queued on")


class JobProgress(BaseModel):
    jobId: str
    action: str | None = None
    createdAt: int | None = None
    expiresAt: int | None = None
    targets: int
    done: int
    complete: bool
    counts: dict[str, int] = Field(description="Devices per state (SUCCEEDED, PENDING, …)")
    devices: list[dict[str, Any]] = Field(description="Per-device state, one window of them")
    nextOffset: int | None = None
