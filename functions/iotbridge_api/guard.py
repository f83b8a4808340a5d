"""Checks on the raw request, before the router matches a route or reads the body.

Size and media type are refused here, on the event, with their own codes (413, 415),
so no parser ever sees a body it was not meant for.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from iotbridge_api import errors

MAX_BODY_BYTES = 16 * 1024
# What any route may answer for its raw body, before the route's own checks (OpenAPI lists them on every route).
ERRORS: tuple[type[errors.ApiError], ...] = (errors.InvalidJson, errors.PayloadTooLarge, errors.UnsupportedMediaType)


def _header(event: dict[str, Any], name: str) -> str | None:
    for key, value in (event.get("headers") or {}).items():
        if key.lower() == name:
            return str(value)
    return None


def check_request(event: dict[str, Any]) -> None:
    """Raise an ApiError for a path or body we must not hand to the router or the parser."""
    path = str(event.get("path") or "")
    # No route has a control character in it; refusing them here also keeps `/devices/sim-1%0A`
    # from ever reaching sim-1 through a pattern that tolerates a trailing newline.
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise errors.RouteNotFound("no route for a path with control characters")
    body = event.get("body")
    if body is None or body == "":
        return
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=True)
            raw.decode("utf-8")  # JSON is UTF-8; other bytes are no JSON body
        except (binascii.Error, ValueError):
            raise errors.InvalidJson("the body is not UTF-8 JSON") from None
        size = len(raw)
    else:
        size = len(body.encode("utf-8", "surrogatepass"))
    if size > MAX_BODY_BYTES:
        raise errors.PayloadTooLarge(f"the body is {size} bytes; at most {MAX_BODY_BYTES} are accepted")
    content_type = (_header(event, "content-type") or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise errors.UnsupportedMediaType(f"send JSON (Content-Type: application/json), not {content_type!r}")
