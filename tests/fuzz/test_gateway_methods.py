"""HTTP methods API Gateway does not route (TRACE, CONNECT, made-up ones) are refused as a client
error by the gateway itself, never answered as a server error."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbridge_local.stack import LocalStack
from tests.faults.harness import start_stack

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def bare_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = start_stack(Path(tmp_path_factory.mktemp("methods")), devices=0)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "QUERY", "BREW"])
def test_a_method_no_route_has_is_a_client_error(bare_stack: LocalStack, method: str) -> None:
    # GIVEN the local API Gateway, WHEN a request with an unroutable method arrives with a valid key
    conn = http.client.HTTPConnection("127.0.0.1", bare_stack.config.api_port, timeout=10)
    try:
        conn.request(method, "/devices", headers={"x-api-key": bare_stack.config.api_key})
        status = conn.getresponse().status
    finally:
        conn.close()
    # THEN it is a 4xx, as API Gateway answers it, and not a server error
    assert 400 <= status < 500, status
