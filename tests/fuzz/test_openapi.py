"""Schemathesis against docs/openapi.json through the real HTTP API of a local stack: generated
valid and invalid requests must never get a 5xx, and every answer must be one the spec describes."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config._auth import AuthConfig
from schemathesis.specs.openapi import checks as openapi_checks

from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack
from tests.fuzz.conftest import SOAK

pytestmark = pytest.mark.stack

SPEC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
schema = schemathesis.openapi.from_path(SPEC)
# The key through the spec's own security scheme, so schemathesis also sends requests without it.
schema.config.auth = AuthConfig(openapi={"apiKey": {"api_key": StackConfig().api_key}})
# The template routes ANY /{proxy+} to the function, so every method API Gateway knows reaches our
# code and is probed. TRACE and QUERY are not API Gateway methods: API Gateway answers them itself
# (test_gateway_methods.py checks the local stand-in answers them as a client error).
schema.config.phases.coverage.unexpected_methods = {"get", "put", "post", "delete", "options", "patch"}

EXAMPLES = 300 if SOAK else 25  # per operation

# Checks that cannot apply to an API behind API Gateway (REST) with an API key; everything else runs.
EXCLUDED = [
    # API Gateway answers a method no route declares itself (403 "Missing Authentication Token"
    # on AWS), before any code of ours runs: no 405 + Allow header is ours to give.
    openapi_checks.unsupported_method,
    # Whether a schema-valid request is accepted depends on live state no static spec can hold:
    # which things exist (404), what each device advertises (400 UNKNOWN_ACTION / INVALID_PARAMS),
    # whether it is online (409). Rejections are still checked: documented status, schema, no 5xx.
    openapi_checks.positive_data_acceptance,
]


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=not SOAK)
def test_no_server_errors_and_only_documented_answers(case: schemathesis.Case, stack: LocalStack) -> None:
    # GIVEN a generated request (valid or deliberately invalid) for one operation of the spec
    # WHEN it is sent to the local API Gateway (with the API key, unless the case is about leaving it out)
    # THEN the answer is not a 5xx and its status, content type, headers and body match the spec
    assert stack.config.api_key == StackConfig().api_key
    case.call_and_validate(base_url=stack.config.api_url, excluded_checks=EXCLUDED, timeout=40)
