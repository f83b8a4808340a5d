"""The router on its own: which route answers, what a browser on the dashboard's origin is told,
and how bad requests become the API's JSON errors. A tiny app of its own, no AWS behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from iotbridge_api import errors
from iotbridge_api.router import Cors, Response, Router
from iotbridge_api.schema import Model, field
from iotbridge_local.apigw.event import LambdaContext, build_event

ORIGIN = "https://dash.example"


class ItemPath(Model, strict=True):
    item: str = field(max_length=8)


class ItemQuery(Model, strict=True):
    __coerce__ = True
    limit: int = field(default=5, ge=1, le=10)


class Note(Model, strict=True):
    text: str = field(min_length=1)


class Item(Model):
    item: str
    limit: int


app = Router(cors=Cors(ORIGIN, allow_headers=("x-api-key", "content-type"), expose_headers=("Location",), max_age=600))
calls: list[dict[str, Any]] = []


@app.get("/items/<item>", path=ItemPath, query=ItemQuery, response=Item)
def get_item(item: str, limit: int) -> Item:
    calls.append({"item": item, "limit": limit})
    if item == "gone":
        raise errors.DeviceNotFound("no such item", details={"item": item})
    if item == "boom":
        raise RuntimeError("a bug, not a client error")
    return Item(item=item, limit=limit)


@app.post("/items/<item>/notes", path=ItemPath, body=Note, responses={202: (Note, "queued")})
def post_note(item: str, body: Note) -> Response:
    return Response(202, body, {"Location": f"/items/{item}/notes/1"})


Answer = tuple[int, dict[str, str], Any]


def call(method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
    sent = {"Content-Type": "application/json"} if body is not None else {}
    event = build_event(method, path, headers={**sent, **(headers or {})}, body=body)
    result = app.resolve(event, LambdaContext(timeout_s=3))
    return result["statusCode"], result["headers"], json.loads(result["body"]) if result["body"] else None


def test_a_route_gets_its_validated_parameters_and_its_answer_is_json() -> None:
    # GIVEN a route with a path and a query parameter WHEN it is called (query values are text on the wire)
    status, headers, body = call("GET", "/items/abc?limit=7")
    # THEN the handler got them typed, and its model comes back as a JSON object
    assert (status, body) == (200, {"item": "abc", "limit": 7})
    assert headers["Content-Type"] == "application/json"
    # AND a trailing slash addresses the same route, with the documented default
    assert call("GET", "/items/abc/")[2] == {"item": "abc", "limit": 5}


def test_a_path_that_no_route_has_is_404_and_a_method_a_route_lacks_is_405() -> None:
    assert call("GET", "/nothing")[2]["code"] == "NOT_FOUND"
    # a parameter takes one whole segment: an empty one or one with a `/` in it matches nothing
    assert call("GET", "/items//notes")[0] == 404
    assert call("GET", "/items/a%2Fb")[0] == 404
    status, _, body = call("DELETE", "/items/abc")
    assert (status, body["code"]) == (405, "METHOD_NOT_ALLOWED")


def test_a_base_path_mapping_is_told_from_the_proxy_part_not_guessed_from_the_path() -> None:
    def at(path: str, proxy: str | None) -> Answer:
        event = build_event("GET", path)
        event["pathParameters"] = {"proxy": proxy} if proxy is not None else None
        result = app.resolve(event, LambdaContext(timeout_s=3))
        return result["statusCode"], result["headers"], json.loads(result["body"])

    # GIVEN requests through a custom domain whose base path is /api/v1 (left in `path`, not in the proxy part)
    # THEN the route after it answers, with the item decoded as without a base path
    assert at("/api/v1/items/abc", "items/abc")[2] == {"item": "abc", "limit": 5}
    assert at("/api/v1/items/a%3Ab", "items/a:b")[2] == {"item": "a:b", "limit": 5}
    assert at("/api/v1/items/abc/", "items/abc")[2]["item"] == "abc"  # a trailing slash in one only
    assert at("/api/v1/items/abc", "items/abc/")[2]["item"] == "abc"
    # AND an item that looks like a route is an item: the base path comes from the proxy part, not a guess
    assert at("/items/items", "items/items")[2]["item"] == "items"
    # AND without a proxy part, or one that is not the end of the path, nothing is taken off
    assert at("/api/v1/items/abc", None)[0] == 404
    assert at("/api/v1/items/abc", "items/xyz")[0] == 404
    # AND an encoded / in the path is still one segment of a bad name, not a base path
    assert at("/api/v1/items/a%2Fb", "items/a/b")[0] == 404


def test_problems_in_path_query_and_body_are_reported_together() -> None:
    # GIVEN a request wrong in its path, its query and its body WHEN it arrives
    status, _, body = call("POST", "/items/far-too-long/notes", body=b'{"text": ""}')
    # THEN one 422 lists them all, each with where (loc), why (msg) and a stable type
    assert (status, body["code"]) == (422, "VALIDATION_ERROR")
    assert [(p["loc"], p["type"]) for p in body["details"]] == [(["path", "item"], "string_too_long"),
                                                              (["body", "text"], "string_too_short")]  # fmt: skip
    status, _, body = call("GET", "/items/abc?limit=0&limit=2")
    assert (status, body["details"][0]["loc"]) == (422, ["query", "limit"])


def test_unknown_query_parameters_and_a_missing_body_are_refused_before_the_handler_runs() -> None:
    calls.clear()
    status, _, body = call("GET", "/items/abc?limt=2")
    unknown = {"loc": ["query", "limt"], "msg": "unknown query parameter", "type": "extra_forbidden"}
    assert (status, body["details"]) == (422, [unknown])
    status, _, body = call("POST", "/items/abc/notes")
    assert (status, body["details"][0]["loc"], body["details"][0]["type"]) == (422, ["body"], "missing")
    assert call("POST", "/items/abc/notes", body=b"{nope")[2]["code"] == "INVALID_JSON"
    assert calls == []


def test_a_json_media_type_with_parameters_or_a_json_suffix_is_json() -> None:
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        status, _, _ = call("POST", "/items/abc/notes", body=b'{"text": "hi"}', headers={"Content-Type": content_type})
        assert status == 202, content_type


def test_an_api_error_is_its_json_error_and_a_bug_is_not_hidden() -> None:
    status, _, body = call("GET", "/items/gone")
    assert (status, body) == (404, {"code": "DEVICE_NOT_FOUND", "message": "no such item", "details": {"item": "gone"}})
    # a bug is a Lambda error (API Gateway answers 502), never a made-up success
    with pytest.raises(RuntimeError):
        call("GET", "/items/boom")


def test_the_dashboard_origin_may_call_the_api_and_read_location() -> None:
    # GIVEN a browser on the dashboard's origin
    status, headers, _ = call("POST", "/items/abc/notes", body=b'{"text": "hi"}', headers={"Origin": ORIGIN})
    # THEN the answer allows that origin, and exposes Location (where the 202's resource lives)
    assert status == 202 and headers["Location"] == "/items/abc/notes/1"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Expose-Headers"] == "Location"
    # AND errors carry the same headers, or the dashboard could not read them
    assert call("GET", "/items/gone", headers={"Origin": ORIGIN})[1]["Access-Control-Allow-Origin"] == ORIGIN
    # AND another origin gets no CORS header at all
    assert "Access-Control-Allow-Origin" not in call("GET", "/items/abc", headers={"Origin": "https://evil.example"})[1]


def test_a_preflight_is_answered_on_any_path_with_the_methods_the_api_has() -> None:
    asking = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    status, headers, body = call("OPTIONS", "/items/abc/notes", headers=asking)
    assert (status, body) == (204, None)
    assert headers["Access-Control-Allow-Methods"] == "GET,OPTIONS,POST"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert set(headers["Access-Control-Allow-Headers"].split(",")) == {"x-api-key", "content-type"}
    assert headers["Access-Control-Max-Age"] == "600"


def test_without_cors_a_preflight_is_just_a_method_no_route_has() -> None:
    bare = Router()
    bare.get("/x", response=Item)(lambda: Item(item="x", limit=1))
    result = bare.resolve(build_event("OPTIONS", "/x"), LambdaContext(timeout_s=3))
    assert (result["statusCode"], json.loads(result["body"])["code"]) == (405, "METHOD_NOT_ALLOWED")


def test_the_function_loads_neither_pydantic_nor_powertools_event_handler() -> None:
    # GIVEN a fresh interpreter, as a Lambda cold start
    # WHEN it imports the API handler and answers a request
    code = (
        "import json, sys\n"
        "from iotbridge_api.handler import lambda_handler\n"
        "from iotbridge_local.apigw.event import LambdaContext, build_event\n"
        "lambda_handler(build_event('GET', '/health'), LambdaContext(timeout_s=3))\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "AWS_DEFAULT_REGION": "us-east-1"})  # fmt: skip
    loaded = json.loads(done.stdout.splitlines()[-1])
    # THEN none of the heavy validation and routing machinery it used to start with is loaded
    heavy = [m for m in loaded if m.split(".")[0] in ("pydantic", "pydantic_core", "asyncio")
             or m.startswith("aws_lambda_powertools.event_handler")]  # fmt: skip
    assert heavy == []
