"""The OpenAPI document of the API, written from the routes and their models: `python -m iotbridge_api.openapi`.

docs/openapi.json is this output, committed; a test fails when it is stale. Nothing here runs in
the function: the document is built from the same declarations the router validates with.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from iotbridge_api import guard
from iotbridge_api.app import app
from iotbridge_api.errors import ALL_ERRORS, ApiError
from iotbridge_api.models import ErrorBody
from iotbridge_api.router import Route
from iotbridge_api.schema import Model

JSON = "application/json"


def _content(model: type[Model], defs: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": model.schema_ref(defs)}}


def _parameters(model: type[Model] | None, where: str, defs: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, f in (model.__fields__ if model is not None else {}).items():
        param: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or f.required,
                                 "schema": f.schema(defs)}  # fmt: skip
        if f.description:
            param["description"] = f.description
        out.append(param)
    return out


def _responses(route: Route, defs: dict[str, Any]) -> dict[str, Any]:
    docs = route.docs
    out: dict[str, Any] = {}
    if "responses" in docs:
        for status, (model, description) in docs["responses"].items():
            out[str(status)] = {"description": description, "content": _content(model, defs)}
            if status == 202:  # where to follow what the API accepted (every 202 sends it)
                out["202"]["headers"] = {"Location": {"description": "The path to poll with GET", "required": True,
                                                      "schema": {"type": "string"}}}  # fmt: skip
    else:
        out["200"] = {"description": "Successful Response", "content": _content(docs["response"], defs)}
    # A body sent to any route is checked (size, media type, JSON) before the route's own checks.
    errs: tuple[type[ApiError], ...] = tuple(dict.fromkeys((*docs.get("errors", ()), *guard.ERRORS)))
    for err in errs:  # grouped by status: one entry names every code it may carry
        entry = out.setdefault(str(err.status), {"description": "", "content": _content(ErrorBody, defs)})
        entry["description"] = ", ".join(filter(None, [entry["description"], err.code]))
    # Every route checks its query (unknown names too), and its path and body where it has them.
    invalid = {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}
    out["422"] = {"description": "Validation Error", "content": {JSON: invalid}}
    out["403"] = {"description": "API Gateway: missing or wrong x-api-key", "content": _content(ErrorBody, defs)}
    return out


def _operation(route: Route, defs: dict[str, Any]) -> dict[str, Any]:
    docs = route.docs
    op: dict[str, Any] = {
        "operationId": f"{route.handler.__name__}{re.sub(r'[^0-9a-zA-Z_]', '_', route.openapi_path)}_{route.method.lower()}",
        "summary": docs["summary"],
        "tags": docs["tags"],
        "responses": _responses(route, defs),
    }
    if "description" in docs:
        op["description"] = docs["description"]
    parameters = _parameters(route.path, "path", defs) + _parameters(route.query, "query", defs)
    if parameters:
        op["parameters"] = parameters
    if route.body is not None:
        op["requestBody"] = {"content": _content(route.body, defs), "required": True}
    return op


def document() -> dict[str, Any]:
    defs: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for route in app.routes:
        paths.setdefault(route.openapi_path, {})[route.method.lower()] = _operation(route, defs)
    ErrorBody.schema_ref(defs)
    # The 422 body is the common error shape, its `details` listing the problems (loc, msg, type).
    defs["HTTPValidationError"] = {**ErrorBody.json_schema(defs), "title": "HTTPValidationError"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "iotbridge API",
            "version": "0.1.0",
            "description": "Commands from a dashboard to IoT devices through AWS IoT device shadows. "
            "Every error is {code, message, details?}; codes: "
            + ", ".join(f"{e.code} ({e.status})" for e in ALL_ERRORS)
            + '. API Gateway itself answers 403 {"code": "INVALID_API_KEY", "message": "Forbidden"} without a valid x-api-key.',
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
        "security": [{"apiKey": []}],
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
