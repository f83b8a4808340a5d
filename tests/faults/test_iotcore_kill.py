"""The shadow service (our IoT Core stand-in: shadows in SQLite + the data plane) crashes mid-stream."""

from __future__ import annotations

import signal
import time

import pytest

from iotbridge_local.stack import LocalStack
from tests.faults.conftest import COMMANDS, FAULT_EVERY
from tests.faults.harness import run_streams_with_faults
from tests.faults.invariants import AckedWriter, all_promises, terminal_states

pytestmark = pytest.mark.stack


def test_shadow_service_crash_mid_stream_keeps_every_acknowledged_update(stack: LocalStack) -> None:
    # GIVEN two devices receiving streams of commands, and a writer making acknowledged shadow
    #   updates through the data plane as fast as it can
    things = stack.things
    writer = AckedWriter(stack, things[0])
    writer.start()

    def iotcore_crash() -> None:
        stack.kill("iotcore", signal.SIGKILL)
        time.sleep(0.5)  # the API answers 502 UPSTREAM_ERROR now; callers retry with the same id
        stack.restart("iotcore")

    # WHEN the shadow service is SIGKILLed (no chance to flush anything) and restarted every few commands
    per_device = COMMANDS // len(things)
    books, injected = run_streams_with_faults(stack, things, per_device, iotcore_crash, every=FAULT_EVERY)
    writer.stop()

    # THEN no acknowledged update was lost and versions never went back, every command is terminal
    #   and visible through the API, and none ran twice
    assert injected >= 2, f"only {injected} crashes happened"
    problems = writer.check() + all_promises(stack, books, things, steady=things)
    assert not problems, "\n".join(problems)
    assert len(books.sent) == per_device * len(things)
    assert set(terminal_states(books)) <= {"SUCCEEDED"}, terminal_states(books)
    # AND the crashes were felt: some requests had to be retried
    assert any(status == 502 or status == 0 for s in books.sent for status, _ in s.answers), "no request met the crash"
