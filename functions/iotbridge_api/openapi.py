"""The OpenAPI document of the API, generated from the routes: `python -m iotbridge_api.openapi`.

docs/openapi.json is this output, committed; a test fails when it is stale.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn

from iotbridge_api.app import app
from iotbridge_api.errors import ALL_ERRORS
from iotbridge_api.models import ErrorBody


def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        app.get_openapi_json_schema(
            title="iotbridge API",
            version="0.1.0",
            description="Commands from a dashboard to IoT devices through AWS IoT device shadows. "
            "Every error is {code, message, details?}; codes: "
            + ", ".join(f"{e.code} ({e.status})" for e in ALL_ERRORS)
            + ". API Gateway itself answers 403 {message: Forbidden} without a valid x-api-key.",
            security_schemes={"apiKey": APIKey.model_validate({"name": "x-api-key", "in": APIKeyIn.header})},
            security=[{"apiKey": []}],
        )
    )
    # Our 422 body is the common error shape (with `details` listing the problems), not Powertools' default.
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["HTTPValidationError"] = ErrorBody.model_json_schema()
    schemas["HTTPValidationError"]["title"] = "HTTPValidationError"
    schemas.pop("ValidationError", None)
    for path in doc.get("paths", {}).values():
        for operation in path.values():
            operation.setdefault("responses", {}).setdefault(
                "403",
                {
                    "description": "API Gateway: missing or wrong x-api-key",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
                    },
                },
            )
    return doc


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
