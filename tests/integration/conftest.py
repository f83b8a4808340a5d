"""The whole local stack on free ports, shared by the integration tests of one module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbridge_local.config import StackConfig
from iotbridge_local.stack import LocalStack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    config = StackConfig.free(Path(tmp_path_factory.mktemp("stack")))
    with LocalStack(config) as running:
        running.wait_devices_ready(timeout=30)
        yield running
