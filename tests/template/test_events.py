"""events/*.json: sample API Gateway REST proxy events and IoT lifecycle events.

Used by tests and by `sam local invoke -e events/NAME.json ApiFunction`; their
shape must be what API Gateway (REST API, Lambda proxy integration, payload 1.0)
and the presence topic rule really deliver.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iotbridge_contract import names

EVENTS = Path(__file__).resolve().parents[2] / "events"
PRESENCE = sorted(EVENTS.glob("presence-*.json"))
JOBS = sorted(EVENTS.glob("jobs-*.json"))
API = sorted(set(EVENTS.glob("*.json")) - set(PRESENCE) - set(JOBS))

PROXY_KEYS = {
    "resource", "path", "httpMethod", "headers", "multiValueHeaders", "queryStringParameters",
    "multiValueQueryStringParameters", "pathParameters", "stageVariables", "requestContext", "body",
    "isBase64Encoded",
}
CONTEXT_KEYS = {"resourcePath", "httpMethod", "path", "stage", "requestId", "identity", "accountId", "apiId", "requestTimeEpoch"}


def _load(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_the_samples_the_brief_names_exist() -> None:
    # GIVEN the events folder  THEN the samples tests and `sam local invoke` use are there
    present = {p.name for p in EVENTS.glob("*.json")}
    assert {"post-command.json", "get-device.json", "bad-thing-name.json", "presence-connected.json"} <= present
    assert "jobs-fanout-page.json" in present


@pytest.mark.parametrize("path", API, ids=[p.stem for p in API])
def test_api_event_has_the_rest_proxy_shape(path: Path) -> None:
    # GIVEN a sample API event
    event = _load(path)
    ctx = event["requestContext"]
    # THEN it has every top-level and requestContext field of the REST proxy format
    assert set(event) == PROXY_KEYS
    assert set(ctx) >= CONTEXT_KEYS
    # AND it came through the template's one route, the greedy proxy
    assert event["resource"] == ctx["resourcePath"] == "/{proxy+}"
    assert event["pathParameters"] == {"proxy": event["path"].lstrip("/")}
    # AND method and paths agree: requestContext.path carries the stage, path does not
    assert event["httpMethod"] == ctx["httpMethod"]
    assert ctx["path"] == f"/{ctx['stage']}{event['path']}"
    # AND it passed API Gateway's key check, so the key is in the header and the identity
    assert event["headers"]["x-api-key"] == ctx["identity"]["apiKey"]
    assert ctx["requestId"]
    # AND single- and multi-value views agree
    assert event["multiValueHeaders"] == {k: [v] for k, v in event["headers"].items()}
    query = event["queryStringParameters"]
    assert event["multiValueQueryStringParameters"] == ({k: [v] for k, v in query.items()} if query else None)
    # AND a body is a string (API Gateway never parses it), sized as the header says
    if event["body"] is None:
        assert event["httpMethod"] in ("GET", "DELETE")
    else:
        assert isinstance(event["body"], str) and event["isBase64Encoded"] is False
        assert int(event["headers"]["content-length"]) == len(event["body"].encode())


@pytest.mark.parametrize("path", API, ids=[p.stem for p in API])
def test_api_event_bodies_and_names_are_valid_unless_the_sample_says_otherwise(path: Path) -> None:
    # GIVEN a sample API event whose file name says whether it is meant to be wrong
    event = _load(path)
    segments = event["path"].strip("/").split("/")
    # THEN a body parses as JSON except in the invalid-json sample
    if event["body"] is not None:
        if "invalid-json" in path.stem:
            with pytest.raises(json.JSONDecodeError):
                json.loads(event["body"])
        else:
            json.loads(event["body"])
    # AND a thing name in the path is valid except in the bad-thing-name sample
    if segments[0] == "devices" and len(segments) > 1:
        if path.stem == "bad-thing-name":
            with pytest.raises(names.InvalidName):
                names.thing_name(segments[1])
        else:
            names.thing_name(segments[1])
    if len(segments) == 4 and segments[2] == "commands":
        names.command_id(segments[3])


@pytest.mark.parametrize("path", PRESENCE, ids=[p.stem for p in PRESENCE])
def test_presence_event_has_the_lifecycle_event_shape(path: Path) -> None:
    # GIVEN a sample lifecycle event, as the topic rule's `SELECT *` passes it
    event = _load(path)
    # THEN it has AWS's fields: a client id that is a thing name, a millisecond timestamp, a version
    assert event["eventType"] == path.stem.removeprefix("presence-")
    names.thing_name(event["clientId"])
    assert isinstance(event["timestamp"], int) and event["timestamp"] > 10**12
    assert isinstance(event["versionNumber"], int)
    assert event["sessionIdentifier"] and event["principalIdentifier"]
    # AND a disconnect says why; a connect carries the client's address
    if event["eventType"] == "disconnected":
        assert event["disconnectReason"]
        assert isinstance(event["clientInitiatedDisconnect"], bool)
    else:
        assert event["ipAddress"]


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_jobs_event_is_what_the_api_sends_the_fan_out_function(path: Path) -> None:
    # GIVEN a sample fan-out event, as bulk.start() invokes the function with it
    event = _load(path)
    # THEN it names one page of one job, nothing else
    assert set(event) == {"jobId", "page"}
    names.command_id(event["jobId"])
    assert isinstance(event["page"], int) and event["page"] >= 0
