"""The presence function: an AWS IoT lifecycle event in, the thing's `presence` shadow out.

Invoked by the topic rule on `$aws/events/presence/+/+` (AWS), or by
`iotbridge_local.rules` (local stack) with the same event. Lifecycle events
may arrive late, twice or out of order (AWS says so), so an event is written
only when it is newer than the one the shadow holds (`_is_newer`: by versionNumber,
then connected < disconnected, for events within a minute of each other; by
timestamp for events farther apart); the write carries the
shadow version it read, and a conflict means someone wrote meanwhile: read
again and decide again.

The shadow's reported state (docs/protocol.md): `connected`, `at` (event
timestamp, ms), `clientId`, `reason` (disconnectReason; absent while
connected), and `versionNumber` (the event's, kept for ordering).
"""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.exceptions import ClientError

from iotbridge_contract import names

SHADOW = "presence"
MAX_ATTEMPTS = 5

# One client per container; boto3 takes the endpoint from AWS_ENDPOINT_URL_IOT_DATA_PLANE when set.
iot_data = boto3.client("iot-data")


# Events closer in time than this are ordered by version number. AWS increments it with
# every connection of a client id, so it orders a session's events against the next
# session's even when the clocks say otherwise: a silently dead link's DUPLICATE_CLIENTID
# disconnect is stamped a few ms *after* the new session's connect. Farther apart, the
# timestamp decides, so a count that started over (a client id unused for long) cannot
# pin a thing offline.
SAME_TIME_MS = 60_000


def _key(state: dict[str, Any]) -> tuple[int, int, int]:
    # Within one version (session), disconnect follows connect, also in the same millisecond.
    return (int(state.get("versionNumber", 0)), 0 if state.get("connected") else 1, int(state.get("at", 0)))


def _is_newer(new: dict[str, Any], stored: dict[str, Any]) -> bool:
    if "at" not in stored:
        return True  # no event stored yet (the shadow was just created)
    gap = int(new.get("at", 0)) - int(stored.get("at", 0))
    if abs(gap) > SAME_TIME_MS:
        return gap > 0
    return _key(new) > _key(stored)


def reported_state(event: dict[str, Any]) -> dict[str, Any] | None:
    """The presence document an event stands for; None when it concerns no thing."""
    event_type = event.get("eventType")
    if event_type not in ("connected", "disconnected"):
        return None
    try:
        thing = names.thing_name(event.get("clientId"))
        at = int(event["timestamp"])
        version = int(event.get("versionNumber", 0))
    except (names.InvalidName, KeyError, TypeError, ValueError):
        return None
    connected = event_type == "connected"
    return {
        "connected": connected,
        "at": at,
        "clientId": thing,
        "reason": None if connected else str(event.get("disconnectReason", "UNKNOWN")),
        "versionNumber": version,
    }


def _read(thing: str) -> tuple[dict[str, Any] | None, int | None]:
    try:
        response = iot_data.get_thing_shadow(thingName=thing, shadowName=SHADOW)
    except ClientError as e:
        if e.response["Error"]["Code"] == "ResourceNotFoundException":
            return None, None
        raise
    doc = json.loads(response["payload"].read())
    return doc.get("state", {}).get("reported"), doc.get("version")


def _write(thing: str, update: dict[str, Any]) -> None:
    answer = iot_data.update_thing_shadow(thingName=thing, shadowName=SHADOW, payload=json.dumps(update).encode())
    answer["payload"].read()  # unread, it keeps the connection from being reused: a new one per event


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    new = reported_state(event)
    if new is None:
        return {"written": False, "why": "not a lifecycle event of a thing"}
    thing = new["clientId"]
    for _ in range(MAX_ATTEMPTS):
        try:
            current, version = _read(thing)
            if version is None:
                # No shadow yet: a write without a version could replace a newer event another
                # invocation stores meanwhile. Create it with a key no event has (updates merge,
                # so this overwrites nothing), then decide against what is there, version-checked.
                _write(thing, {"state": {"reported": {"tracked": True}}})
                current, version = _read(thing)
            if current is not None and not _is_newer(new, current):
                return {"written": False, "why": "an event as new or newer is stored", "thing": thing}
            update: dict[str, Any] = {"state": {"reported": new}}
            if version is not None:
                update["version"] = version
            _write(thing, update)
        except ClientError as e:
            code = e.response["Error"]["Code"]
            if code == "ConflictException":
                continue  # written meanwhile: compare against that write
            if code == "ResourceNotFoundException":
                return {"written": False, "why": "no such thing", "thing": thing}
            raise
        return {"written": True, "thing": thing, "connected": new["connected"]}
    raise RuntimeError(f"presence of {thing!r}: {MAX_ATTEMPTS} version conflicts in a row")
