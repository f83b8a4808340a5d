"""The executed-command log under the MicroPython unix port: exact answers, bounded size, crash safety."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.micropython.harness import run_mpy

pytestmark = pytest.mark.micropython


def test_log_answers_exactly_and_keeps_the_newest_outcomes(tmp_path: Path) -> None:
    # GIVEN a log that keeps 4 outcomes, after 11 commands
    script = """
import json
from ledger import Ledger
log = Ledger("x.log", keep=4)
for i in range(11):
    log.done("id%d" % i, {"state": "SUCCEEDED", "n": i})
print(json.dumps([log.get("id10"), log.get("id7"), log.get("id0"), log.get("never")]))
"""
    # WHEN it is asked about them
    answers = run_mpy(script, tmp_path)[0]
    assert isinstance(answers, list)
    newest, kept, dropped, unknown = answers
    # THEN the recent ones answer with their outcome; long-gone and unknown ids do not
    assert newest == {"state": "SUCCEEDED", "n": 10}
    assert kept == {"state": "SUCCEEDED", "n": 7}
    assert dropped is None and unknown is None
    # AND the file was compacted instead of growing without bound
    assert len((tmp_path / "x.log").read_text().splitlines()) <= 8


def test_a_command_cut_short_by_a_restart_is_logged_failed_and_never_started_again(tmp_path: Path) -> None:
    # GIVEN a device that started a command and lost power before it finished
    run_mpy('from ledger import Ledger\nLedger("x.log").start("c-1", "relay")', tmp_path)
    # WHEN it boots and looks the command up
    script = 'import json\nfrom ledger import Ledger\nprint(json.dumps(Ledger("x.log").get("c-1")))'
    (entry,) = run_mpy(script, tmp_path)
    # THEN it has an outcome (FAILED, interrupted), so it will be reported, not run
    assert isinstance(entry, dict)
    assert entry["state"] == "FAILED"
    assert entry["action"] == "relay"
    assert "restart" in entry["error"]


def test_an_outcome_cut_off_by_a_power_failure_reads_as_failed_and_the_log_goes_on(tmp_path: Path) -> None:
    # GIVEN a log whose last outcome line was cut off mid-write (power lost), no newline at its end
    run_mpy('from ledger import Ledger\nLedger("x.log").start("c-1", "relay")', tmp_path)
    with (tmp_path / "x.log").open("a") as f:
        f.write('D c-1 {"state":"SUCC')
    # WHEN the device boots, and logs another command after it
    script = """
import json
from ledger import Ledger
log = Ledger("x.log")
log.start("c-2", "led")
log.done("c-2", {"state": "SUCCEEDED"})
print(json.dumps([log.get("c-1"), log.get("c-2")]))
"""
    (answers,) = run_mpy(script, tmp_path)
    assert isinstance(answers, list)
    cut, after = answers
    # THEN the cut-off command reads as FAILED (it ran; its outcome is lost), not as an error
    assert cut["state"] == "FAILED" and "restart" in cut["error"]
    # AND the next command's lines start on their own, so its outcome reads back whole
    assert after == {"state": "SUCCEEDED"}
