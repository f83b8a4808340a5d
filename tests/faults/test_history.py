"""A device's outcome history under a coarse service clock: the shadow's `timestamp` has whole
seconds, so a device sees the same second many times while it runs several commands per second.
If its clock re-based on each of them, doneAt would run backwards and the history (which drops the
smallest doneAt) would evict a recent outcome: a GET of one of the last 16 commands would be 404."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from iotbridge_contract.commands import HISTORY, CommandState, pending_entry
from iotbridge_pi.executed_log import ExecutedLog
from iotbridge_pi.handlers import default_registry
from iotbridge_pi.protocol import CommandCore, ServiceClock

SERVICE_S = 1_800_000_000


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 50.0

    def __call__(self) -> float:
        return self.t


def test_the_service_clock_never_runs_backwards_within_a_second() -> None:
    # GIVEN a device that saw the service's timestamp T, 750 ms ago
    mono = FakeMonotonic()
    clock = ServiceClock(mono)
    clock.observe({"timestamp": SERVICE_S})
    mono.t += 0.75
    before = clock.now_ms()
    assert before == SERVICE_S * 1000 + 999 + 750  # the end of second T (docs/protocol.md), plus 750 ms
    # WHEN the next document still carries T (the service floors to whole seconds)
    clock.observe({"timestamp": SERVICE_S})
    # THEN the device's idea of the service's time does not go back
    after = clock.now_ms()
    assert after is not None and after >= before


def test_the_history_keeps_the_newest_outcomes(tmp_path: Path) -> None:
    # GIVEN a device running 3 commands a second, each announced by a delta stamped with the
    #   service's whole-second timestamp, with random ids as the API makes them
    mono = FakeMonotonic()
    core = CommandCore(ExecutedLog(tmp_path), default_registry().advertisement(), service_clock=ServiceClock(mono))
    rng = random.Random(8)
    ids = [f"{rng.getrandbits(64):016x}" for _ in range(HISTORY + 8)]
    shadow: dict[str, Any] = {}
    service_start = SERVICE_S + 0.0
    core.on_get_accepted({"state": {}, "timestamp": SERVICE_S})  # after connecting, it read its shadow
    # WHEN it runs them one after another and reports each outcome as the protocol says
    for n, cid in enumerate(ids):
        now_s = service_start + n / 3
        entry = pending_entry("ping", {}, issued_at=int(now_s * 1000), expires_at=int(now_s * 1000) + 60_000)
        plan = core.on_delta({"state": {cid: entry}, "timestamp": int(now_s), "version": n + 1})
        (command,) = plan.run
        assert core.begin(command) is None
        mono.t += 0.1  # the handler ran
        outcome = core.finish(command, CommandState.SUCCEEDED, result={"pong": True})
        update = core.report_update({cid: outcome})
        for key, value in update["state"]["reported"].items():
            if value is None:
                shadow.pop(key, None)
            else:
                shadow[key] = value
        mono.t = 50.0 + (n + 1) / 3
    # THEN the shadow holds exactly the 16 most recent outcomes
    assert set(shadow) == set(ids[-HISTORY:]), sorted(ids.index(k) for k in shadow)
