"""API errors that carry their HTTP meaning: raise one anywhere, the app answers it.

Every error body is {"code", "message", "details"?}; the codes are stable and
listed in docs/protocol.md and the OpenAPI document.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


def _error(status: int, code: str) -> type[ApiError]:
    return type(code.title().replace("_", ""), (ApiError,), {"status": status, "code": code})


InvalidThingName = _error(400, "INVALID_THING_NAME")
InvalidCommandId = _error(400, "INVALID_COMMAND_ID")
InvalidShadowName = _error(400, "INVALID_SHADOW_NAME")
UnknownAction = _error(400, "UNKNOWN_ACTION")
InvalidParams = _error(400, "INVALID_PARAMS")
InvalidJson = _error(400, "INVALID_JSON")
InvalidDocument = _error(400, "INVALID_DOCUMENT")
InvalidQuery = _error(400, "INVALID_QUERY")
DeviceNotFound = _error(404, "DEVICE_NOT_FOUND")
CommandNotFound = _error(404, "COMMAND_NOT_FOUND")
JobNotFound = _error(404, "JOB_NOT_FOUND")
RouteNotFound = _error(404, "NOT_FOUND")
MethodNotAllowed = _error(405, "METHOD_NOT_ALLOWED")
DeviceOffline = _error(409, "DEVICE_OFFLINE")
IdConflict = _error(409, "ID_CONFLICT")
PayloadTooLarge = _error(413, "PAYLOAD_TOO_LARGE")
TooManyTargets = _error(413, "TOO_MANY_TARGETS")
UnsupportedMediaType = _error(415, "UNSUPPORTED_MEDIA_TYPE")
ValidationFailed = _error(422, "VALIDATION_ERROR")
TooManyPending = _error(429, "TOO_MANY_PENDING")
Throttled = _error(429, "THROTTLED")
UpstreamError = _error(502, "UPSTREAM_ERROR")

ALL_ERRORS: tuple[type[ApiError], ...] = (
    InvalidThingName, InvalidCommandId, InvalidShadowName, UnknownAction, InvalidParams, InvalidJson,
    InvalidDocument, InvalidQuery,
    DeviceNotFound, CommandNotFound, JobNotFound, RouteNotFound, MethodNotAllowed, DeviceOffline, IdConflict,
    PayloadTooLarge, TooManyTargets, UnsupportedMediaType, ValidationFailed, TooManyPending, Throttled, UpstreamError,
)  # fmt: skip
