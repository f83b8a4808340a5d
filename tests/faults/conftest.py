"""A whole local stack per fault test (faults leave it scarred), and how long the streams run.

`make test` runs short streams; `make soak` (IOTBRIDGE_SOAK=1) runs each stream
scenario with at least 1,000 commands.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbridge_local.stack import LocalStack
from tests.faults.harness import start_stack

SOAK = os.environ.get("IOTBRIDGE_SOAK") == "1"
COMMANDS = 1_000 if SOAK else 30  # per stream scenario, split over its devices
FAULT_EVERY = 50 if SOAK else 5  # settled commands (of the first device) between two faults


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    running = start_stack(tmp_path, devices=2)
    try:
        running.wait_devices_ready(timeout=60)
        yield running
    finally:
        running.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The soak's streams run for many minutes: lift pytest-timeout's 300 s default for them."""
    if not SOAK:
        return
    for item in items:
        if str(item.path).startswith(str(Path(__file__).parent)):
            item.add_marker(pytest.mark.timeout(3600))
