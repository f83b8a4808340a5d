"""The executed log on disk: one sync per command, bounded size, power cuts, and upgrades from the old format.

A power cut is modelled as losing whatever was written after the file's last
sync (`Disk` records how much of it was synced), which is what the kernel may
do to unsynced appends.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from iotbridge_contract.commands import CommandState, pending_entry
from iotbridge_pi import executed_log
from iotbridge_pi.executed_log import CAPACITY, COMPACT_EVERY, FILE_NAME, OLD_FILE_NAME, ExecutedLog
from iotbridge_pi.handlers import default_registry
from iotbridge_pi.protocol import INTERRUPTED, CommandCore, ServiceClock

SERVICE_NOW_S = 1_800_000_000


class Disk:
    """Counts the syncs of the executed log and remembers how much of the file the last one covered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self.fdatasyncs = 0
        self.fsyncs = 0
        self.synced_bytes = 0
        self.synced_text = ""
        real_fdatasync, real_fsync = os.fdatasync, os.fsync

        def fdatasync(fd: int) -> None:
            real_fdatasync(fd)
            self.fdatasyncs += 1
            self._note()

        def fsync(fd: int) -> None:  # a rewrite: the temp file, then its directory once renamed
            real_fsync(fd)
            self.fsyncs += 1
            self._note()

        monkeypatch.setattr(executed_log.os, "fdatasync", fdatasync)
        monkeypatch.setattr(executed_log.os, "fsync", fsync)

    def _note(self) -> None:
        try:
            self.synced_text = self.path.read_text()
        except FileNotFoundError:
            self.synced_text = ""
        self.synced_bytes = len(self.synced_text.encode())

    def power_cut(self) -> None:
        """Lose every byte appended since the last sync."""
        os.truncate(self.path, self.synced_bytes)


def make_core(state_dir: Path) -> CommandCore:
    clock = ServiceClock()
    clock.observe({"timestamp": SERVICE_NOW_S})
    return CommandCore(ExecutedLog(state_dir), default_registry().advertisement(), service_clock=clock)


def led_toggle() -> dict[str, Any]:
    issued = SERVICE_NOW_S * 1000
    return pending_entry("led", {"state": "toggle"}, issued_at=issued, expires_at=issued + 600_000)


def get_accepted(desired: dict[str, Any], reported: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"state": {"desired": desired, "reported": reported or {}}, "timestamp": SERVICE_NOW_S, "version": 3}


def lines(state_dir: Path) -> list[str]:
    return (state_dir / FILE_NAME).read_text().splitlines()


def test_a_command_costs_one_data_sync_made_after_started_and_before_the_handler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device whose log already exists (it has run a command before)
    core = make_core(tmp_path)
    first = core.on_delta({"state": {"c0": led_toggle()}, "timestamp": SERVICE_NOW_S})
    core.begin(first.run[0])
    core.finish(first.run[0], CommandState.SUCCEEDED, result={"led": "on"})
    disk = Disk(monkeypatch, tmp_path)

    # WHEN it takes the next command to the point where its handler would start
    plan = core.on_delta({"state": {"c1": led_toggle()}, "timestamp": SERVICE_NOW_S})
    assert core.begin(plan.run[0]) is None

    # THEN exactly one fdatasync has happened, and what it made durable includes c1's "started"
    assert (disk.fdatasyncs, disk.fsyncs) == (1, 0)
    assert {"id": "c1", "action": "led", "outcome": None} in [json.loads(line) for line in disk.synced_text.splitlines()]

    # AND finishing it adds no sync at all
    core.finish(plan.run[0], CommandState.SUCCEEDED, result={"led": "off"})
    assert (disk.fdatasyncs, disk.fsyncs) == (1, 0)
    assert json.loads(lines(tmp_path)[-1])["outcome"]["state"] == "SUCCEEDED"


def test_a_power_cut_after_the_handler_ran_answers_interrupted_and_never_reruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device that started c1 (synced), ran its handler and logged the outcome without a sync,
    #   and then lost power before the outcome reached the shadow
    disk = Disk(monkeypatch, tmp_path)
    core = make_core(tmp_path)
    plan = core.on_delta({"state": {"c1": led_toggle()}, "timestamp": SERVICE_NOW_S})
    core.begin(plan.run[0])
    core.finish(plan.run[0], CommandState.SUCCEEDED, result={"led": "on"})
    disk.power_cut()

    # WHEN it boots and finds c1 still pending in its shadow
    plan = make_core(tmp_path).on_get_accepted(get_accepted({"c1": led_toggle()}))

    # THEN c1 is not toggled again: it ran, its outcome is unknown, and it is answered that way
    assert plan.run == []
    assert plan.report["c1"]["state"] == "FAILED" and plan.report["c1"]["error"] == INTERRUPTED


def test_a_power_cut_after_the_outcome_was_reported_keeps_the_shadows_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device whose c1 outcome reached the shadow, but whose unsynced outcome line was lost
    disk = Disk(monkeypatch, tmp_path)
    core = make_core(tmp_path)
    plan = core.on_delta({"state": {"c1": led_toggle()}, "timestamp": SERVICE_NOW_S})
    core.begin(plan.run[0])
    outcome = core.finish(plan.run[0], CommandState.SUCCEEDED, result={"led": "on"})
    disk.power_cut()

    # WHEN after the boot a stale delta (queued in the broker) still lists c1
    rebooted = make_core(tmp_path)
    rebooted.on_get_accepted(get_accepted({}, {"c1": outcome}))
    plan = rebooted.on_delta({"state": {"c1": led_toggle()}, "timestamp": SERVICE_NOW_S})

    # THEN the outcome the shadow holds is answered again, not replaced by "interrupted", and nothing runs
    assert plan.run == [] and plan.report == {"c1": outcome}


@pytest.mark.parametrize(
    "damage",
    [b'{"id":"c2","act', b"\0" * 40, b"\0" * 40 + b"\n", b'{"id":"c2"}\n{"id":"c3","acti'],
    ids=["cut-short", "zeros", "zeros-line", "two-bad-lines"],
)
def test_a_torn_end_of_the_log_is_ignored_and_everything_before_it_kept(tmp_path: Path, damage: bytes) -> None:
    # GIVEN a log with c1 done, whose last append(s) a crash cut short or filled with zeros
    log = ExecutedLog(tmp_path)
    log.started("c1", "led")
    log.finished("c1", "led", {"state": "SUCCEEDED", "action": "led", "doneAt": 1})
    with open(tmp_path / FILE_NAME, "ab") as f:
        f.write(damage)

    # WHEN the device opens it again, and logs another command
    reopened = ExecutedLog(tmp_path)
    reopened.started("c4", "ping")

    # THEN c1 and its outcome are still there, the damage is gone, and the new record is readable
    again = ExecutedLog(tmp_path)
    c1 = again.get("c1")
    assert c1 is not None and c1.outcome == {"state": "SUCCEEDED", "action": "led", "doneAt": 1}
    assert again.ids() == ["c1", "c4"]
    assert all(json.loads(line) for line in lines(tmp_path))


def test_damage_in_the_middle_of_the_log_is_an_error(tmp_path: Path) -> None:
    # GIVEN a log whose middle line is garbage while later lines are intact (not what a crash leaves)
    log = ExecutedLog(tmp_path)
    log.started("c1", "led")
    text = lines(tmp_path)
    (tmp_path / FILE_NAME).write_text("\n".join([text[0], "garbage", *text[1:]]) + "\n")

    # WHEN the device opens it / THEN it refuses rather than forget ids
    with pytest.raises(RuntimeError, match="unreadable at line 2"):
        ExecutedLog(tmp_path)


def test_the_file_is_rewritten_rarely_and_stays_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a device that runs many more commands than the log keeps
    disk = Disk(monkeypatch, tmp_path)
    log = ExecutedLog(tmp_path)
    commands = 4 * (CAPACITY + COMPACT_EVERY)
    longest = 0
    durable_starts = set()
    for i in range(commands):
        before = (disk.fdatasyncs, log.compactions)
        log.started(f"c{i}", "ping")
        durable_starts.add((disk.fdatasyncs - before[0], log.compactions - before[1]))
        before = (disk.fdatasyncs, log.compactions)
        log.finished(f"c{i}", "ping", {"state": "SUCCEEDED", "action": "ping", "doneAt": i})
        assert disk.fdatasyncs == before[0]  # an outcome line is never synced on its own
        longest = max(longest, len(lines(tmp_path)))

    # THEN each "started" was made durable once: by a data sync, or by the rewrite it landed in
    assert durable_starts == {(1, 0), (0, 1)}
    # AND the file was rewritten once per COMPACT_EVERY appends at most (the first write creates it)
    assert log.compactions <= 1 + 2 * commands // COMPACT_EVERY
    # AND it never grew past CAPACITY + COMPACT_EVERY records (plus its header)
    assert longest <= CAPACITY + COMPACT_EVERY + 1
    # AND the newest CAPACITY ids are kept, no temp file is left
    reread = ExecutedLog(tmp_path)
    assert reread.ids() == [f"c{i}" for i in range(commands - CAPACITY, commands)]
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]


def old_format(state_dir: Path, entries: list[dict[str, Any]]) -> None:
    """What earlier agents wrote: one JSON document, rewritten whole on every record."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / OLD_FILE_NAME).write_text(json.dumps({"version": 1, "entries": entries}, separators=(",", ":")))


DONE = {"state": "SUCCEEDED", "action": "led", "doneAt": 5, "result": {"led": "on"}}


def test_upgrading_from_the_old_log_keeps_the_ledger(tmp_path: Path) -> None:
    # GIVEN an older agent's log: t1 done, t2 started when it stopped
    old_format(tmp_path, [{"id": "t1", "action": "led", "outcome": DONE}, {"id": "t2", "action": "led", "outcome": None}])

    # WHEN the new agent starts on the same state dir and sees both still pending
    core = make_core(tmp_path)
    plan = core.on_get_accepted(get_accepted({"t1": led_toggle(), "t2": led_toggle()}))

    # THEN neither runs: t1 is answered with its logged outcome, t2 as interrupted
    assert plan.run == []
    assert plan.report["t1"] == DONE
    assert plan.report["t2"]["error"] == INTERRUPTED
    # AND the ledger now lives in the new file only, and survives another restart
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]
    assert ExecutedLog(tmp_path).ids() == ["t1", "t2"]


def test_an_upgrade_interrupted_before_the_old_file_was_removed_loses_nothing(tmp_path: Path) -> None:
    # GIVEN a migration that wrote the new file and ran a command, but crashed before removing the old file
    old_format(tmp_path, [{"id": "t1", "action": "led", "outcome": DONE}])
    ExecutedLog(tmp_path).started("t3", "ping")
    old_format(tmp_path, [{"id": "t1", "action": "led", "outcome": DONE}])

    # WHEN the agent starts again
    log = ExecutedLog(tmp_path)

    # THEN both the old file's ids and the new ones are known, once each
    assert log.ids() == ["t1", "t3"]
    t1 = log.get("t1")
    assert t1 is not None and t1.outcome == DONE
    assert not (tmp_path / OLD_FILE_NAME).exists()


def test_a_new_devices_log_is_created_when_it_opens(tmp_path: Path) -> None:
    # GIVEN a device that never ran a command / WHEN its log opens
    log = ExecutedLog(tmp_path / "new-device")
    # THEN the file is there already, empty of commands, so the first command only appends to it
    assert (tmp_path / "new-device" / FILE_NAME).exists() and len(log) == 0
    created = log.compactions
    log.started("c1", "ping")
    assert log.compactions == created
    assert ExecutedLog(tmp_path / "new-device").get("c1") is not None


def test_a_log_deleted_while_the_device_runs_is_written_again_whole(tmp_path: Path) -> None:
    # GIVEN a device that ran a command, whose log file is then deleted by someone
    log = ExecutedLog(tmp_path)
    log.started("c1", "ping")
    log.finished("c1", "ping", {"state": "SUCCEEDED", "action": "ping", "doneAt": 1})
    (tmp_path / FILE_NAME).unlink()

    # WHEN the next command starts
    log.started("c2", "ping")

    # THEN the file is back with both commands: nothing the device remembered is lost
    reread = ExecutedLog(tmp_path)
    assert reread.get("c1") is not None and reread.get("c2") is not None


@pytest.mark.parametrize("ftruncate_fails", [False, True])
def test_a_line_cut_short_by_a_full_disk_leaves_nothing_for_the_next_line_to_be_glued_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ftruncate_fails: bool
) -> None:
    # GIVEN a log with one command done
    log = ExecutedLog(tmp_path)
    log.started("a1", "ping")
    log.finished("a1", "ping", {"state": "SUCCEEDED"})
    # WHEN the disk fills up halfway through the next command's `started` line (nothing runs:
    # the command is answered FAILED, "cannot record")
    real_write = os.write

    def half_then_full(fd: int, data: Any) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(executed_log.os, "write", half_then_full)
    if ftruncate_fails:
        monkeypatch.setattr(executed_log.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "I/O")))
    with pytest.raises(OSError):
        log.started("b1", "led")
    monkeypatch.undo()
    # AND, with space again, the next command is recorded as started, and then the device restarts
    log.started("c1", "led")
    reopened = ExecutedLog(tmp_path)
    # THEN the restart knows c1 started (it is answered, never run again) and a1's outcome
    assert reopened.get("c1") is not None and reopened.get("c1").outcome is None  # type: ignore[union-attr]
    assert reopened.get("a1").outcome == {"state": "SUCCEEDED"}  # type: ignore[union-attr]
    # AND every line of the file reads whole
    assert all(json.loads(line) for line in lines(tmp_path))
