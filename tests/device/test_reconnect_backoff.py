"""When the agent reconnects: quickly after a connection that lasted, ever more slowly when each one is cut at once.

A broker that drops a client right after CONNACK (another client with the same
id, as with a cloned SD card; a policy violation) would otherwise see it back
within half a second, forever. The session is driven through its own event
handler with explicit times; no broker is needed to decide when to reconnect.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from iotbridge_contract.mqtt import Endpoint
from iotbridge_pi.executed_log import ExecutedLog
from iotbridge_pi.handlers import default_registry
from iotbridge_pi.hardware import Sensors, simulated_hardware
from iotbridge_pi.model import DeviceModel
from iotbridge_pi.runner import start_inline
from iotbridge_pi.session import STABLE_CONNECTION_S, DeviceSession


def _session(tmp_path: Path) -> DeviceSession:
    device = DeviceModel(simulated_hardware(sensors=Sensors(thermal_zone=None, rng=random.Random(1))), interval_s=60)
    return DeviceSession("lamp-b1", Endpoint(host="127.0.0.1", port=1), state_dir_log=lambda: ExecutedLog(tmp_path),
                         device=device, registry=default_registry(), start_job=start_inline)  # fmt: skip


def _cut_after(session: DeviceSession, now: float, lasted_s: float) -> tuple[float, float]:
    """Connect at `now`, lose the connection `lasted_s` later; returns (when it was lost, the delay before the next try)."""
    session._handle("connack", True, now)
    lost = now + lasted_s
    session._handle("disconnected", "kicked", lost)
    return lost, session._next_connect - lost


def _cut_at_once(session: DeviceSession, times: int) -> tuple[float, list[float]]:
    """`times` connections in a row, each cut 0.1 s after CONNACK, each retried when due; returns
    (when the next would start, the delays before each retry)."""
    now, delays = time.monotonic() + 1, []
    for _ in range(times):
        now, delay = _cut_after(session, now, 0.1)
        delays.append(delay)
        now += delay
    return now, delays


def test_connections_cut_right_after_connect_are_retried_ever_more_slowly(tmp_path: Path) -> None:
    # GIVEN an agent whose every connection is cut 0.1 s after the broker accepted it
    session = _session(tmp_path)
    # WHEN that happens ten times in a row
    _, delays = _cut_at_once(session, 10)
    # THEN it does not come back at once forever: the waits add up to many seconds, not ten half-seconds
    assert sum(delays) > 10.0, delays


def test_a_connection_that_lasted_is_followed_by_a_quick_reconnect(tmp_path: Path) -> None:
    # GIVEN an agent that went through a few connections cut at once (its backoff grew)
    session = _session(tmp_path)
    now, _ = _cut_at_once(session, 6)
    # WHEN a connection then lasts, and is lost (a broker restart)
    _, delay = _cut_after(session, now, STABLE_CONNECTION_S + 1)
    # THEN the agent is back within half a second, as after any healthy connection
    assert delay <= 0.5


def test_hours_of_failed_reconnects_keep_a_jittered_capped_delay(tmp_path: Path) -> None:
    # GIVEN an agent whose broker has been unreachable for hours: 1,500 connections cut at once
    session = _session(tmp_path)
    _, delays = _cut_at_once(session, 1500)
    # THEN every wait is still jittered under the 30 s cap (0.5 * 2**1024 used to overflow, and the
    # agent then retried every second, in step with the rest of the fleet)
    late = delays[1100:]
    assert all(0 <= d <= 30.0 for d in late)
    assert len({round(d, 3) for d in late}) > 300 and sum(late) / len(late) > 10
