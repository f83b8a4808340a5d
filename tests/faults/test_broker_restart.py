"""The MQTT broker stops (cleanly or by crash) in the middle of a stream of commands."""

from __future__ import annotations

import signal
import time

import pytest

from iotbridge_local.stack import LocalStack
from tests.faults.conftest import COMMANDS, FAULT_EVERY
from tests.faults.harness import run_streams_with_faults
from tests.faults.invariants import AckedWriter, all_promises, terminal_states

pytestmark = pytest.mark.stack


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_broker_restart_mid_stream_loses_nothing_and_runs_nothing_twice(stack: LocalStack, sig: int) -> None:
    # GIVEN two devices each receiving a stream of commands (LED toggles, pings, sensor reads),
    #   and a writer making acknowledged updates to a shadow all along
    things = stack.things
    writer = AckedWriter(stack, things[0])
    writer.start()

    def broker_restart() -> None:
        stack.kill("broker", sig)
        time.sleep(0.5)  # commands sent now find no broker: queued in the shadow
        stack.restart("broker")

    # WHEN the broker is stopped with `sig` and restarted every few commands
    per_device = COMMANDS // len(things)
    books, injected = run_streams_with_faults(stack, things, per_device, broker_restart, every=FAULT_EVERY)
    writer.stop()

    # THEN every command reached a terminal state visible through the API, none ran twice on its
    #   device, the LEDs toggled in strict alternation, shadow versions only grew, and no
    #   acknowledged shadow update was lost
    assert injected >= 2, f"only {injected} broker restarts happened"
    problems = all_promises(stack, books, things, steady=things) + writer.check()
    assert not problems, "\n".join(problems)
    assert len(books.sent) == per_device * len(things)
    assert set(terminal_states(books)) <= {"SUCCEEDED"}, terminal_states(books)
