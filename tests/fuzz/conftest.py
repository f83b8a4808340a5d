"""One local stack for the fuzz tests of a module: the real HTTP API behind the local API Gateway."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from schemathesis.core.failures import FailureGroup

from iotbridge_local.stack import LocalStack
from tests.faults.harness import start_stack

SOAK = os.environ.get("IOTBRIDGE_SOAK") == "1"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    running = start_stack(Path(tmp_path_factory.mktemp("fuzz")), devices=1, prewarm=2)
    try:
        running.wait_devices_ready(timeout=60)
        yield running
    finally:
        running.stop()


# Operations where the fuzzer finds a real bug in code this test package does not own; each must
# keep failing until fixed (strict), then the entry goes. The fix is in the reason.
UNDOCUMENTED_200 = (
    "docs/openapi.json omits the 200 response of this operation: functions/iotbridge_api/app.py passes "
    "`responses=_responses(...)` to the route, which replaces Powertools' default 200. Fix: in _responses() add "
    "{200: {'description': 'OK'}} (Powertools fills in the return model) or list 200 with its model, regenerate "
    "docs/openapi.json."
)
KNOWN_BUGS = {
    "GET /devices": UNDOCUMENTED_200,
    "GET /devices/{thing}/commands": UNDOCUMENTED_200,
    "PATCH /devices/{thing}/desired": UNDOCUMENTED_200,
    "POST /commands": (
        "A bulk command with params the shadow service refuses (nesting, odd keys) answers 502 UPSTREAM_ERROR "
        "('AWS IoT answered InvalidRequestException'): functions/iotbridge_api/bulk.py queues params unchecked. "
        "Fix: check params like the single-device path (compact size <= MAX_PARAMS_BYTES, JSON depth within the "
        "shadow's 5 levels) and answer 400 INVALID_PARAMS; and in iot.update_shadow map InvalidRequestException "
        "to a 400, not 502."
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is None or not module.__name__.endswith("test_openapi"):
            continue
        for operation, reason in KNOWN_BUGS.items():
            if item.name.endswith(f"[{operation}]"):
                # raises=: only a failure schemathesis found counts, never a setup error
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True, raises=FailureGroup))
