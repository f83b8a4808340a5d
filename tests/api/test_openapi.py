"""The committed OpenAPI document is what the code generates, and it describes every error."""

from __future__ import annotations

import json
from pathlib import Path

from iotbridge_api.openapi import document, render

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


def test_validation_error_schema_is_our_error_shape() -> None:
    schema = document()["components"]["schemas"]["HTTPValidationError"]
    assert set(schema["required"]) == {"code", "message"}
    json.dumps(schema)
