"""The checks themselves can fail: fed the books of a double run, a lost command or a rolled-back
shadow, each one says so (a fault test whose checks could not fail would prove nothing)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from iotbridge_local.stack import LocalStack
from tests.faults.harness import Books, Sent
from tests.faults.invariants import every_command_terminal, never_twice, versions_only_grow


def _stack(tmp_path: Path) -> LocalStack:
    return cast(LocalStack, SimpleNamespace(data_dir=tmp_path))  # only data_dir is read: no log file there


def _outcome(done_at: int) -> dict[str, Any]:
    return {"state": "SUCCEEDED", "action": "led", "doneAt": done_at, "result": {"led": "on"}}


def _sent(cid: str, first: dict[str, Any] | None) -> Sent:
    return Sent(cid, "sim-1", "led", {"state": "toggle"}, first=first)


def test_a_second_run_seen_in_the_device_log_is_reported(tmp_path: Path) -> None:
    # GIVEN a command the API reported once, whose log entry was started, finished, started and finished again
    books = Books(sent=[_sent("c1", {**_outcome(10), "id": "c1"})])
    for outcome in (None, _outcome(10), None, _outcome(20)):
        books.note_log({"c1": outcome})
    # WHEN the never-twice check runs THEN it names the command
    problems = never_twice(_stack(tmp_path), books, [])
    assert any("c1" in p and "ran again" in p for p in problems), problems
    assert any("started again" in p for p in problems), problems


def test_an_outcome_the_device_logged_differently_from_the_api_is_reported(tmp_path: Path) -> None:
    books = Books(sent=[_sent("c2", _outcome(10))])
    books.note_log({"c2": _outcome(11)})
    assert never_twice(_stack(tmp_path), books, []) != []


def test_a_consistent_single_run_passes(tmp_path: Path) -> None:
    books = Books(sent=[_sent("c3", _outcome(10))])
    books.note_log({"c3": None})
    books.note_log({"c3": _outcome(10)})
    assert never_twice(_stack(tmp_path), books, []) == []


def test_a_command_never_terminal_is_reported() -> None:
    books = Books(sent=[_sent("c4", None)])
    assert every_command_terminal(books) != []


def test_a_version_going_back_is_reported() -> None:
    books = Books()
    for version in (3, 4, 2):
        books.note_version(("sim-1", None), version)
    assert versions_only_grow(books) != []
