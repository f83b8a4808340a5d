"""The ESP32's device state and telemetry under the MicroPython unix port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.micropython.harness import run_mpy

pytestmark = pytest.mark.micropython

# The ESP32's ticks: milliseconds modulo 2**30, with ticks_diff/ticks_add as MicroPython defines them
# there (the unix port's period is 2**62, so its own ticks never wrap in a test).
_ESP32_TICKS = """
import handlers
PERIOD = 1 << 30
clock = [PERIOD - 5000]  # the ticks wrap 5 s after boot
handlers.ticks_ms = lambda: clock[0] % PERIOD
handlers.ticks_diff = lambda a, b: ((a - b + PERIOD // 2) % PERIOD) - PERIOD // 2
handlers.ticks_add = lambda a, d: (a + d) % PERIOD
"""


def test_uptime_keeps_counting_past_the_wrap_of_the_boards_millisecond_ticks(tmp_path: Path) -> None:
    # GIVEN a device on a board whose millisecond ticks wrap every 12.4 days
    script = _ESP32_TICKS + """
import json
device = handlers.Device({})
seen = []
# WHEN it reports telemetry every hour (its longest interval) for 30 days
for hour in range(1, 30 * 24 + 1):
    clock[0] += 3_600_000
    seen.append(device.telemetry()["uptimeS"])
print(json.dumps(seen))
"""
    (seen,) = run_mpy(script, tmp_path)
    # THEN its uptime is the time since boot at every report, through the wraps (day 12.4 and 24.9)
    assert seen == [hour * 3600 for hour in range(1, 30 * 24 + 1)]

