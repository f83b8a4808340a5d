"""AWS IoT allows each thing 20 shadow requests a second: a device driven past that by several callers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.faults.harness import Books, CommandStream, start_stack
from tests.faults.invariants import all_promises, terminal_states

pytestmark = pytest.mark.stack

CALLERS, PER_CALLER = 4, 4  # 16: the device keeps its last 16 outcomes, which the checks read back


def test_a_device_driven_past_aws_throttling_loses_no_command_and_runs_none_twice(tmp_path: Path) -> None:
    # GIVEN the local stack limiting each thing to AWS's 20 shadow requests a second, and one device
    stack = start_stack(tmp_path, devices=1, shadow_rate=20)
    try:
        thing = stack.things[0]
        books = Books()
        # WHEN four callers each send a stream of commands to it at once: their polls, the API's reads
        # and the device's own updates together ask for more than 20 a second
        streams = [CommandStream(stack, thing, books) for _ in range(CALLERS)]
        workers = [threading.Thread(target=s.run, args=(PER_CALLER,), daemon=True) for s in streams]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=300)
        # THEN the API answered some requests 429 THROTTLED (documented: retry later), which the
        #   callers retried with the same id
        answers = [a for sent in books.sent for a in sent.answers]
        assert (429, "THROTTLED") in answers, sorted(set(answers))
        # AND every command reached a terminal state through the API, none ran twice on the device,
        #   shadow versions only grew, and nothing else than 200/202/429 was answered
        problems = all_promises(stack, books, [thing], steady=[])
        assert not problems, "\n".join(problems)
        assert len(books.sent) == CALLERS * PER_CALLER
        assert set(terminal_states(books)) <= {"SUCCEEDED"}, terminal_states(books)
    finally:
        stack.stop()
