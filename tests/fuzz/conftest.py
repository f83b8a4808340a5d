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
KNOWN_BUGS: dict[str, str] = {}  # operation -> the bug and its fix, while one is open


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if module is None or not module.__name__.endswith("test_openapi"):
            continue
        for operation, reason in KNOWN_BUGS.items():
            if item.name.endswith(f"[{operation}]"):
                # raises=: only a failure schemathesis found counts, never a setup error
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True, raises=FailureGroup))
