"""The committed OpenAPI document is what the code generates, and it describes every error."""

from __future__ import annotations

import json
import re
from pathlib import Path

from openapi_spec_validator import validate

from iotbridge_api.app import app
from iotbridge_api.openapi import document, render
from iotbridge_local.testclient import ApiClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_openapi_is_current() -> None:
    # GIVEN the document generated from the routes now
    # THEN it is the committed one (regenerate: python -m iotbridge_api.openapi > docs/openapi.json)
    assert DOC.read_text() == render(), "docs/openapi.json is stale: python -m iotbridge_api.openapi > docs/openapi.json"


def test_every_operation_documents_its_errors_as_json() -> None:
    doc = document()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert "403" in codes, (method, path)
            if method in ("post", "patch"):
                assert "422" in codes, (method, path)
            for code in codes - {"200", "202"}:
                assert "application/json" in operation["responses"][code]["content"], (method, path, code)


def test_every_accepted_answer_documents_where_to_follow_it(api: ApiClient) -> None:
    # GIVEN the document's 202 answers, and an offline device
    from tests.api.conftest import make_device

    make_device("doc-off", connected=False)
    accepted = {(m, p) for p, ops in document()["paths"].items() for m, op in ops.items() if "202" in op["responses"]}
    # WHEN a command and a bulk command are accepted without an outcome
    single = api.post("/devices/doc-off/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN the document declares the Location header each 202 carries
    assert single.status == 202 and single.headers["Location"].endswith(single.json["id"])
    assert accepted == {("post", "/devices/{thing}/commands"), ("post", "/commands")}
    for method, path in accepted:
        assert document()["paths"][path][method]["responses"]["202"]["headers"]["Location"]["required"] is True


def test_every_route_describes_what_a_bad_body_gets_even_a_get(api: ApiClient) -> None:
    # GIVEN the document, and the API (in-process, against moto)
    doc = document()
    for route in app.routes:
        path = re.sub(r"<(\w+)>", lambda m: "0" * 32 if m[1] in ("command_id", "job_id") else "dev-1", route.rule)
        responses = doc["paths"][route.openapi_path][route.method.lower()]["responses"]
        described = {(status, code) for status, response in responses.items() for code in response["description"].split(", ")}
        too_large = b"x" * (16 * 1024 + 1)
        for body, content_type in ((too_large, "application/json"), (b"a=1", "text/plain"), (b"{", "application/json")):
            # WHEN a request carries a body that is too large, not JSON, or not parseable
            response = api.request(route.method, path, body=body, headers={"Content-Type": content_type})
            # THEN the route's entry in the document names the answer it gets (a GET may ignore a small body)
            if response.status < 400:
                assert str(response.status) in responses, (route.method, route.rule, response.status)
            else:
                assert (str(response.status), response.json["code"]) in described, (route.method, route.rule, response.json)


def test_validation_error_schema_is_our_error_shape() -> None:
    schema = document()["components"]["schemas"]["HTTPValidationError"]
    assert set(schema["required"]) == {"code", "message"}
    json.dumps(schema)


def test_the_document_is_valid_openapi_and_describes_every_route() -> None:
    # GIVEN the generated document
    doc = document()
    # THEN it is a valid OpenAPI 3.1 document (every $ref resolves)
    validate(doc)
    # AND it has exactly the routes the router answers, each with the parameters it checks
    described = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    assert described == {(route.openapi_path, route.method) for route in app.routes}
    for route in app.routes:
        operation = doc["paths"][route.openapi_path][route.method.lower()]
        names = {(p["in"], p["name"]) for p in operation.get("parameters", [])}
        expected = {("path", n) for n in (route.path.__fields__ if route.path else {})}
        expected |= {("query", n) for n in (route.query.__fields__ if route.query else {})}
        assert names == expected, route.rule
        assert ("requestBody" in operation) == (route.body is not None), route.rule


def test_constraints_in_the_document_are_the_ones_enforced() -> None:
    # GIVEN the command body's schema in the document
    schemas = document()["components"]["schemas"]
    command = schemas["CommandRequest"]
    # THEN it refuses unknown fields and carries the limits the API checks (one definition serves both)
    assert command["additionalProperties"] is False and command["required"] == ["action"]
    assert (command["properties"]["action"]["minLength"], command["properties"]["action"]["maxLength"]) == (1, 32)
    assert command["properties"]["timeoutMs"]["maximum"] == 29_000
    assert command["properties"]["ifOffline"]["enum"] == ["fail", "queue"]
    assert schemas["BulkRequest"]["properties"]["things"]["anyOf"][0]["maxItems"] == 1000
