"""Fixtures shared by every test package: a real Mosquitto on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig


@pytest.fixture
def stack_config(tmp_path: Path) -> StackConfig:
    return StackConfig.free(tmp_path / "stack")


@pytest.fixture
def broker(stack_config: StackConfig) -> Iterator[Broker]:
    with Broker(stack_config) as b:
        yield b
