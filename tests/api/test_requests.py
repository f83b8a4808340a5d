"""Client mistakes in the raw request get a 4xx JSON error, never a 5xx."""

from __future__ import annotations

import json

import pytest

from iotbridge_local.testclient import ApiClient
from tests.api.conftest import make_device


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"x" * (16 * 1024 + 1), "application/json", 413, "PAYLOAD_TOO_LARGE"),
        (b"--x\r\n", "multipart/form-data", 415, "UNSUPPORTED_MEDIA_TYPE"),  # no boundary: Powertools would raise
        (b"a=1", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
        (b"{not json", "application/json", 400, "INVALID_JSON"),
        (b"\xfeOu", "application/json", 400, "INVALID_JSON"),  # not UTF-8: arrives base64-encoded
        (b"[" * 5000, "application/json", 400, "INVALID_JSON"),  # deeper than Python's parser goes
        (b"[]", "application/json", 422, "VALIDATION_ERROR"),
        (b'{"action": "ping", "surprise": 1}', "application/json", 422, "VALIDATION_ERROR"),
    ],
)
def test_bad_bodies_are_client_errors(api: ApiClient, body: bytes, content_type: str, status: int, code: str) -> None:
    # GIVEN a device exists
    make_device("dev-1")
    # WHEN a malformed request arrives
    response = api.post("/devices/dev-1/commands", body=body, headers={"Content-Type": content_type})
    # THEN it is answered with its stable code, as JSON
    assert (response.status, response.json["code"]) == (status, code)
    assert response.json["message"]


@pytest.mark.parametrize(
    "params",
    [
        b'{"x": NaN}',
        b'{"x": -Infinity}',
        b'{"x": 1e400}',  # past a double: Python reads it as inf
        b'{"x": "\\udc00"}',  # an unpaired surrogate: not Unicode, and AWS IoT refuses it
        b'{"a": ' + b"[" * 984 + b"]" * 984 + b"}",  # parses, then overflows the stack of json.dumps
    ],
    ids=["nan", "infinity", "1e400", "lone-surrogate", "984-deep"],
)
@pytest.mark.parametrize("path", ["/devices/dev-1/commands", "/commands"], ids=["single", "bulk"])
def test_what_json_loads_takes_but_json_is_not_is_refused_before_anything_is_written(
    api: ApiClient, path: str, params: bytes
) -> None:
    # GIVEN a device, and a body with params that Python's json module reads but JSON (and AWS) does not
    make_device("dev-1")
    body = b'{"action": "ping", "id": "odd-1", "things": ["dev-1"], "params": ' + params + b"}"
    if path != "/commands":
        body = b'{"action": "ping", "id": "odd-1", "params": ' + params + b"}"
    # WHEN it is posted, as one command or as a bulk job
    response = api.post(path, body=body, headers={"Content-Type": "application/json"})
    # THEN it is a client error naming the body, not a 502 after a half-written job
    assert (response.status, response.json["code"]) == (400, "INVALID_JSON")
    # AND nothing was recorded under the id: the job does not exist
    assert api.get("/commands/jobs/odd-1").status == 404


def test_validation_errors_list_the_problems(api: ApiClient) -> None:
    make_device("dev-1")
    response = api.post("/devices/dev-1/commands", json={"action": 5, "timeoutMs": -1})
    assert response.status == 422
    fields = {tuple(p["loc"][-1:]) for p in response.json["details"]}
    assert {("action",), ("timeoutMs",)} <= fields
    assert all(p["msg"] for p in response.json["details"])


def test_unknown_route_and_wrong_method(api: ApiClient) -> None:
    assert api.get("/nope").json["code"] == "NOT_FOUND"
    wrong = api.request("DELETE", "/devices")
    assert (wrong.status, wrong.json["code"]) == (405, "METHOD_NOT_ALLOWED")


def test_health(api: ApiClient) -> None:
    assert api.get("/health").json == {"status": "ok"}


def test_device_views(api: ApiClient) -> None:
    # GIVEN two devices, one offline
    make_device("dev-1")
    make_device("dev-2", connected=False)
    # WHEN the dashboard lists them and opens one
    listing = api.get("/devices").json["devices"]
    detail = api.get("/devices/dev-1").json
    # THEN presence, state and actions are there
    assert {d["thing"]: d["connected"] for d in listing} == {"dev-1": True, "dev-2": False}
    assert detail["reported"]["led"] == "off" and "led" in detail["actions"]
    assert detail["shadow"]["version"] >= 1
    assert api.get("/devices/dev-1?shadow=presence").json["shadow"]["state"]["reported"]["connected"] is True
    assert api.get("/devices/dev-1?shadow=a%2Fb").json["code"] == "INVALID_SHADOW_NAME"
    assert api.get("/devices/ghost").status == 404


def test_patch_desired_sets_desired_and_reports_no_convergence_without_a_device(api: ApiClient) -> None:
    make_device("dev-1")
    response = api.patch("/devices/dev-1/desired", json={"state": {"led": "on"}, "waitMs": 100})
    assert response.status == 200
    body = response.json
    assert body["desired"] == {"led": "on"} and body["delta"] == {"led": "on"}
    assert body["converged"] is False


def test_patch_desired_deeper_than_aws_takes_is_a_clear_400_and_one_level_less_is_set(api: ApiClient) -> None:
    # GIVEN a device
    make_device("dev-1")
    # WHEN desired with six levels of keys is asked for (AWS's shadow takes five)
    deep = api.patch("/devices/dev-1/desired", json={"state": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}})
    # THEN it is refused, saying why, and five levels are set
    assert (deep.status, deep.json["code"]) == (400, "INVALID_DOCUMENT") and "levels" in deep.json["message"]
    ok = api.patch("/devices/dev-1/desired", json={"state": {"a": {"b": {"c": {"d": {"e": 1}}}}}})
    assert ok.status == 200 and ok.json["desired"]["a"] == {"b": {"c": {"d": {"e": 1}}}}


def test_patch_desired_says_converged_when_the_device_already_reports_the_value(api: ApiClient) -> None:
    # GIVEN a device that reports led: off
    make_device("dev-1")
    # WHEN led: off is asked for, without waiting
    body = api.patch("/devices/dev-1/desired", json={"state": {"led": "off"}}).json
    # THEN the answer says it is converged, as its empty delta shows (the dashboard shows nothing pending)
    assert (body["delta"], body["converged"]) == ({}, True)


def test_a_huge_query_integer_on_any_route_is_a_validation_error(api: ApiClient) -> None:
    assert api.get("/commands/jobs/j1?offset=" + "1" * 5000).json["code"] == "VALIDATION_ERROR"


def test_unknown_query_parameters_are_refused_like_unknown_body_fields(api: ApiClient) -> None:
    make_device("dev-1")
    response = api.get("/devices?limt=5")
    assert response.status == 422 and response.json["code"] == "VALIDATION_ERROR"
    assert response.json["details"][0]["loc"] == ["query", "limt"]
    assert api.get("/devices?limit=5").status == 200


@pytest.mark.parametrize(
    ("query", "status", "problem"),
    [
        ("limit=5", 200, None),
        ("limit=+5", 200, None),  # query strings are text: an integer written as text is an integer
        ("limit=abc", 422, "int_parsing"),
        ("limit=1.5", 422, "int_parsing"),
        ("limit=0", 422, "greater_than_equal"),
        ("limit=101", 422, "less_than_equal"),
        ("limit=5&limit=6", 422, "int_type"),  # one value, not a list
        ("nextToken=" + "x" * 2049, 422, "string_too_long"),
        ("limit=" + "1" * 5000, 422, "int_parsing"),  # past Python's int() digit limit: refused, not a crash
    ],
)
def test_query_values_are_checked_against_the_documented_limits(
    api: ApiClient, query: str, status: int, problem: str | None
) -> None:
    # GIVEN a device WHEN the list is asked for with a query value THEN it is accepted, or refused saying why
    make_device("dev-1")
    response = api.get(f"/devices?{query}")
    assert response.status == status, response.body
    if problem is not None:
        assert [(p["loc"][0], p["type"]) for p in response.json["details"]] == [("query", problem)]


def test_a_command_id_with_a_line_break_is_refused(api: ApiClient) -> None:
    # GIVEN a device WHEN a command id ends in a newline (it would end up in the Location header)
    make_device("dev-1")
    response = api.post("/devices/dev-1/commands", json={"action": "ping", "id": "abc\n", "timeoutMs": 0})
    # THEN it is a validation error on the id, and no Location is answered
    assert (response.status, response.json["details"][0]["loc"]) == (422, ["body", "id"])
    assert "Location" not in response.headers


def test_json_with_a_suffix_media_type_is_json(api: ApiClient) -> None:
    make_device("dev-1")
    response = api.post("/devices/dev-1/commands", body=b'{"action": "ping", "timeoutMs": 0}',
                        headers={"Content-Type": "application/merge-patch+json"})  # fmt: skip
    assert response.status == 202, response.body


def test_head_and_a_trailing_slash(api: ApiClient) -> None:
    assert api.request("HEAD", "/devices").status == 405
    assert api.get("/health/").json == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/devices/dev-1/commands", '{"action": "ping", "params": {"a": ' + "[" * 900 + "1" + "]" * 900 + "}}"),
        ("PATCH", "/devices/dev-1/desired", '{"state": ' + '{"a": ' * 900 + "1" + "}" * 900 + "}"),
    ],
)
def test_deeply_nested_documents_are_client_errors(api: ApiClient, method: str, path: str, body: str) -> None:
    # GIVEN a device exists
    make_device("dev-1")
    # WHEN a body parses but nests far deeper than a shadow may (AWS: 6 levels)
    response = api.request(method, path, body=body.encode(), headers={"Content-Type": "application/json"})
    # THEN it is a client error with a stable code, never a 5xx
    assert 400 <= response.status < 500, response.json
    assert response.json["code"] and response.json["message"]


def test_a_thing_name_with_an_encoded_character_is_found_as_a_rest_api_passes_it(api: ApiClient) -> None:
    # GIVEN a device named `room:1` (`:` is allowed in thing names)
    from iotbridge_api.handler import lambda_handler
    from iotbridge_local.apigw.event import LambdaContext, build_event

    make_device("room:1")
    # WHEN it is addressed as clients encode it, `/devices/room%3A1`, and the event's path is
    # percent-encoded, as a REST API passes it (an HTTP API would decode it)
    event = build_event("GET", "/devices/room%3A1", api_key="k")
    event["path"] = "/devices/room%3A1"
    answer = lambda_handler(event, LambdaContext(timeout_s=10))
    # THEN it is that device, not a refused name
    assert (answer["statusCode"], json.loads(answer["body"])["thing"]) == (200, "room:1"), answer["body"]
