"""The API's only door to AWS IoT: shadows through `iot-data`, the registry through `iot`.

Clients are created once per execution environment, on first use, so a cold
start that never needs one does not pay for it. botocore reads the endpoint from
AWS_ENDPOINT_URL_IOT_DATA_PLANE / AWS_ENDPOINT_URL_IOT: the local stack changes
those, and nothing here knows whether it runs on AWS.
"""

from __future__ import annotations

import json
import random
import threading
import time
from contextvars import ContextVar
from typing import Any

from iotbridge_api import errors
from iotbridge_contract.commands import COMMANDS_SHADOW

CONNECT_TIMEOUT_S = 1
READ_TIMEOUT_S = 2
# The longest one call can take: one attempt, no SDK retry (botocore's `max_attempts: 1` is one
# retry). The API's loops retry reads; a caller retries a command with its id.
CALL_MAX_S = CONNECT_TIMEOUT_S + READ_TIMEOUT_S
MIN_CALL_S = 0.1  # a call with less time than this left is not started

_lock = threading.Lock()
_clients: dict[str, Any] = {}
# When this request's answer must be ready (monotonic), or None: no call outlasts it.
_answer_by: ContextVar[float | None] = ContextVar("answer_by", default=None)


def set_cutoff(cutoff: float | None) -> None:
    """From now on in this request (and the reads it starts together), no call outlasts `cutoff`."""
    _answer_by.set(cutoff)


def cutoff() -> float | None:
    return _answer_by.get()


def seconds_left() -> float | None:
    """Time left for a call before the answer is due; None when no request set a cutoff."""
    answer_by = _answer_by.get()
    return None if answer_by is None else answer_by - time.monotonic()


def time_for_call() -> bool:
    left = seconds_left()
    return left is None or left >= MIN_CALL_S


def _check_time() -> None:
    # A call that outlasts API Gateway's 29 s turns the whole answer into a 504 that names no
    # command id. Shadow calls are cut to the time left (iotbridge_dataplane); with too little
    # left, none starts, and the answer says what is known.
    if not time_for_call():
        raise errors.UpstreamError("no time left in this request for another call to AWS IoT")


def _client(service: str) -> Any:
    client = _clients.get(service)
    if client is None:
        with _lock:
            client = _clients.get(service)
            if client is None:
                import boto3
                import botocore
                from botocore.config import Config

                # Short timeouts and no SDK retries: the API owns its wait budget. A fixed user agent:
                # botocore otherwise rebuilds it on every request, ~20% of a shadow call's CPU (measured).
                cfg = Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                             retries={"total_max_attempts": 1, "mode": "standard"},
                             user_agent=f"iotbridge-api botocore/{botocore.__version__}")  # fmt: skip
                client = boto3.client(service, config=cfg)  # type: ignore[call-overload]
                if service == "iot-data":  # shadow calls: signed and sent without boto3's cost (iotbridge_dataplane)
                    from iotbridge_dataplane import shadow_client

                    client = shadow_client(client, connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                                           budget=seconds_left)  # fmt: skip
                _clients[service] = client
    return client


class VersionConflict(Exception):
    """The shadow changed since we read it (HTTP 409 from the shadow service)."""


def _upstream(exc: Exception) -> errors.ApiError:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("ThrottlingException", "TooManyRequestsException", "LimitExceededException"):
            return errors.Throttled("AWS IoT is throttling requests for this device; retry later")
        return errors.UpstreamError(f"AWS IoT answered {code or 'an error'}")
    return errors.UpstreamError(f"AWS IoT is unreachable ({type(exc).__name__})")


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return response.get("Error", {}).get("Code", "") if isinstance(response, dict) else ""


def get_shadow(thing: str, shadow: str | None = None) -> dict[str, Any] | None:
    """The shadow document, or None when it does not exist.

    A read that broke (connection, timeout, AWS IoT 5xx) is tried once more, time permitting:
    reading twice is harmless, and the SDK's own retry is off (see CALL_MAX_S).
    """
    kwargs: dict[str, Any] = {"thingName": thing}
    if shadow:
        kwargs["shadowName"] = shadow
    for attempt in (1, 2):
        _check_time()
        try:
            payload = _client("iot-data").get_thing_shadow(**kwargs)["payload"].read()
            break
        except Exception as exc:
            if _error_code(exc) == "ResourceNotFoundException":
                return None
            if attempt == 2 or not _broke(exc) or not time_for_call():
                raise _upstream(exc) from exc
            time.sleep(random.uniform(0.01, 0.05))  # jitter
    result: dict[str, Any] = json.loads(payload)
    return result


def _broke(exc: Exception) -> bool:
    """A failure another try may not meet: no answer, or AWS IoT's own (5xx); not a refusal or a throttle."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return True
    return int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0) >= 500


def update_shadow(thing: str, document: dict[str, Any], shadow: str | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"thingName": thing, "payload": json.dumps(document, separators=(",", ":")).encode()}
    if shadow:
        kwargs["shadowName"] = shadow
    _check_time()
    try:
        payload = _client("iot-data").update_thing_shadow(**kwargs)["payload"].read()
    except Exception as exc:
        code = _error_code(exc)
        if code == "ConflictException":
            raise VersionConflict from exc
        if code == "InvalidRequestException":  # the document we built from the caller's input
            message = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
            raise errors.InvalidDocument(f"AWS IoT refused the shadow document: {message}") from exc
        if code == "RequestEntityTooLargeException":
            if shadow == COMMANDS_SHADOW:
                raise errors.TooManyPending("the device's command shadow is full (8 KB); wait for pending commands") from exc
            raise errors.PayloadTooLarge("the shadow would exceed AWS IoT's 8 KB (desired + reported)") from exc
        raise _upstream(exc) from exc
    result: dict[str, Any] = json.loads(payload)
    return result


def list_things(limit: int, next_token: str | None) -> tuple[list[str], str | None]:
    kwargs: dict[str, Any] = {"maxResults": limit}
    if next_token:
        kwargs["nextToken"] = next_token
    _check_time()
    try:
        page = _client("iot").list_things(**kwargs)
    except Exception as exc:
        if _error_code(exc) == "InvalidRequestException" and next_token:
            raise errors.InvalidQuery("nextToken is not one this API gave out") from exc
        raise _upstream(exc) from exc
    return [t["thingName"] for t in page.get("things", [])], page.get("nextToken")
