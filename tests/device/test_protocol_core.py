"""The device's protocol core, without sockets: what runs, what is answered, what is reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iotbridge_contract.commands import HISTORY, CommandState, outcome_entry, pending_entry
from iotbridge_pi.executed_log import CAPACITY, FILE_NAME, ExecutedLog
from iotbridge_pi.handlers import default_registry
from iotbridge_pi.model import DESIRED_SPECS
from iotbridge_pi.protocol import INTERRUPTED, CommandCore, ServiceClock, desired_changes

SERVICE_NOW_S = 1_800_000_000  # the shadow service's clock in documents (seconds)
SERVICE_NOW_MS = SERVICE_NOW_S * 1000


class FakeMonotonic:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make_core(state_dir: Path, monotonic: FakeMonotonic | None = None, *, synced: bool = True) -> CommandCore:
    mono = monotonic or FakeMonotonic()
    clock = ServiceClock(mono)
    if synced:  # a connected device has read its shadow (get/accepted) once since connecting
        clock.observe({"timestamp": SERVICE_NOW_S})
    # The device's own clock is deliberately far off: expiry must not depend on it.
    return CommandCore(
        ExecutedLog(state_dir),
        default_registry().advertisement(),
        clock_ms=lambda: 5,
        service_clock=clock,
        monotonic=mono,
    )


def cmd(action: str, params: dict[str, Any] | None = None, *, ttl_ms: int = 60_000, issued: int = 0) -> dict[str, Any]:
    return pending_entry(action, params or {}, issued_at=SERVICE_NOW_MS + issued, expires_at=SERVICE_NOW_MS + ttl_ms)


def delta(commands: dict[str, Any], *, timestamp: int = SERVICE_NOW_S) -> dict[str, Any]:
    return {"state": commands, "timestamp": timestamp, "version": 2}


def get_accepted(desired: dict[str, Any], reported: dict[str, Any], *, timestamp: int = SERVICE_NOW_S) -> dict[str, Any]:
    return {"state": {"desired": desired, "reported": reported}, "timestamp": timestamp, "version": 7}


def test_a_new_command_is_run_once_and_a_duplicate_delivery_is_answered_not_rerun(tmp_path: Path) -> None:
    # GIVEN a device that received command c1 and ran it to success
    core = make_core(tmp_path)
    plan = core.on_delta(delta({"c1": cmd("led", {"state": "on"})}))
    assert [c.id for c in plan.run] == ["c1"]
    assert core.begin(plan.run[0]) is None
    outcome = core.finish(plan.run[0], CommandState.SUCCEEDED, result={"led": "on"})

    # WHEN the same delta is delivered again (QoS 1 redelivery) and a get shows it still pending
    again = core.on_delta(delta({"c1": cmd("led", {"state": "on"})}))
    after_get = core.on_get_accepted(get_accepted({"c1": cmd("led", {"state": "on"})}, {}))

    # THEN it is not run again; its logged outcome is reported again
    assert again.run == [] and after_get.run == []
    assert again.report == {"c1": outcome} and after_get.report == {"c1": outcome}
    assert outcome["state"] == "SUCCEEDED" and outcome["result"] == {"led": "on"}


def test_a_duplicate_of_a_command_still_waiting_to_run_is_ignored(tmp_path: Path) -> None:
    # GIVEN c1 planned to run but not finished yet
    core = make_core(tmp_path)
    first = core.on_delta(delta({"c1": cmd("ping")}))

    # WHEN the delta is delivered a second time
    second = core.on_delta(delta({"c1": cmd("ping")}))

    # THEN c1 is neither planned again nor answered early
    assert [c.id for c in first.run] == ["c1"]
    assert second.run == [] and second.report == {}


def test_an_expired_command_is_not_run_judged_by_the_service_clock(tmp_path: Path) -> None:
    # GIVEN a command whose expiresAt is one second before the service's timestamp, and one
    # that lives to the end of that second (timestamp is whole seconds: the service's time may
    # be up to 999 ms later, so only timestamp*1000 + 999 <= expiresAt is sure to be in time)
    core = make_core(tmp_path)
    doc = delta({"late": cmd("led", {"state": "on"}, ttl_ms=-1000), "edge": cmd("ping", ttl_ms=999, issued=1)})

    # WHEN the delta arrives
    plan = core.on_delta(doc)

    # THEN the late one is answered EXPIRED without running, the edge one runs
    assert [c.id for c in plan.run] == ["edge"]
    assert plan.report["late"]["state"] == "EXPIRED"
    assert "result" not in plan.report["late"]


def test_the_service_clock_follows_a_device_clock_that_runs_fast_but_not_a_document_that_waited() -> None:
    # GIVEN a device whose monotonic clock runs 20 ppm fast (no NTP), that read the service's time once
    mono = FakeMonotonic()
    clock = ServiceClock(mono)
    true_ms = SERVICE_NOW_S * 1000
    clock.observe({"timestamp": SERVICE_NOW_S})
    most_ahead, backwards = 0, 0

    def elapse(ms: int) -> None:
        nonlocal true_ms
        true_ms += ms
        mono.t += ms / 1000 * 1.00002

    # WHEN for 120 days a delta arrives every hour, and every 6 hours the answer to its own get
    for hour in range(1, 120 * 24 + 1):
        elapse(3_600_000)
        before = clock.now_ms() or 0
        clock.observe({"timestamp": true_ms // 1000}, fresh=hour % 6 == 0)
        for _ in range(3):  # read then, and twice more within the next second
            now = clock.now_ms() or 0
            backwards += now < before
            most_ahead = max(most_ahead, now - true_ms)
            before = now
            elapse(400)
    # THEN the clock stays within 2.5 s of the service's (whole seconds read as their end, a second
    # allowed, and 6 hours' drift); it ran 3.5 minutes ahead when it only moved forward
    assert 0 <= most_ahead < 2500, most_ahead
    # AND it never ran backwards (outcomes are ordered by doneAt)
    assert backwards == 0
    # AND sixty deltas that waited an hour in the broker do not hold it back
    before = clock.now_ms() or 0
    for _ in range(60):
        clock.observe({"timestamp": true_ms // 1000 - 3600}, fresh=False)
    assert clock.now_ms() == before


def test_a_command_that_expires_while_waiting_behind_another_is_not_started(tmp_path: Path) -> None:
    # GIVEN a command with 2 s to live, planned to run
    mono = FakeMonotonic()
    core = make_core(tmp_path, mono)
    plan = core.on_delta(delta({"c1": cmd("ping", ttl_ms=2000)}))

    # WHEN 3 s pass (on the service's clock, as tracked since the document) before it can start
    mono.t += 3.0
    outcome = core.begin(plan.run[0])

    # THEN it is answered EXPIRED and never recorded as started
    assert outcome is not None and outcome["state"] == "EXPIRED"
    log = ExecutedLog(tmp_path).get("c1")
    assert log is not None and log.outcome == outcome


def test_restart_keeps_the_executed_log(tmp_path: Path) -> None:
    # GIVEN a device that ran c1, then restarted (a new core reading the same state dir)
    core = make_core(tmp_path)
    plan = core.on_delta(delta({"c1": cmd("led", {"state": "toggle"})}))
    core.begin(plan.run[0])
    outcome = core.finish(plan.run[0], CommandState.SUCCEEDED, result={"led": "on"})
    restarted = make_core(tmp_path)

    # WHEN after the restart the shadow still shows c1 pending (its report was lost)
    plan = restarted.on_get_accepted(get_accepted({"c1": cmd("led", {"state": "toggle"})}, {}))

    # THEN c1 is reported with its original outcome, not toggled a second time
    assert plan.run == []
    assert plan.report == {"c1": outcome}


def test_a_command_interrupted_by_a_crash_is_reported_failed_never_rerun(tmp_path: Path) -> None:
    # GIVEN c1 was started (logged) and the process died before it finished
    core = make_core(tmp_path)
    plan = core.on_delta(delta({"c1": cmd("reboot")}))
    assert core.begin(plan.run[0]) is None

    # WHEN the device comes back and sees c1 still pending
    plan = make_core(tmp_path).on_get_accepted(get_accepted({"c1": cmd("reboot")}, {}))

    # THEN c1 is answered FAILED (interrupted) and not run again
    assert plan.run == []
    assert plan.report["c1"]["state"] == "FAILED"
    assert plan.report["c1"]["error"] == INTERRUPTED


def test_a_device_back_after_the_api_gave_up_on_its_commands_reports_what_it_knows(tmp_path: Path) -> None:
    # GIVEN a device that ran c1 and had started c2 when it lost power, and was away so long that
    # the API recorded both UNKNOWN (and took them out of its queue); c3 it never saw
    core = make_core(tmp_path)
    plan = core.on_delta(delta({"c1": cmd("led", {"state": "on"}), "c2": cmd("reboot")}))
    c1, c2 = plan.run
    core.begin(c1)
    ran = core.finish(c1, CommandState.SUCCEEDED, result={"led": "on"})
    core.begin(c2)
    unknown = outcome_entry(CommandState.UNKNOWN, "x", done_at=SERVICE_NOW_MS + 9, error="the API gave up")
    # WHEN it is back and reads its commands shadow
    plan = make_core(tmp_path).on_get_accepted(get_accepted({}, {"c1": unknown, "c2": unknown, "c3": unknown}))
    # THEN it reports its own word for the two it knows, replacing UNKNOWN; nothing runs
    assert plan.run == []
    assert plan.report["c1"] == ran
    assert (plan.report["c2"]["state"], plan.report["c2"]["error"]) == ("FAILED", INTERRUPTED)
    assert set(plan.report) == {"c1", "c2"}


def test_bad_params_are_rejected_with_the_reason(tmp_path: Path) -> None:
    # GIVEN commands with a wrong value, a missing param and an unknown param
    core = make_core(tmp_path)
    doc = delta(
        {
            "bad": cmd("led", {"state": "purple"}),
            "missing": cmd("set_interval", {}, issued=1),
            "extra": cmd("ping", {"loud": True}, issued=2),
        }
    )

    # WHEN they arrive
    plan = core.on_delta(doc)

    # THEN none runs, each is REJECTED saying what is wrong
    assert plan.run == []
    assert {k: v["state"] for k, v in plan.report.items()} == dict.fromkeys(("bad", "missing", "extra"), "REJECTED")
    assert "state: must be one of on, off, toggle" in plan.report["bad"]["error"]
    assert "seconds: required" in plan.report["missing"]["error"]
    assert "unknown parameter(s): loud" in plan.report["extra"]["error"]


def test_an_unknown_action_is_rejected_listing_the_known_ones(tmp_path: Path) -> None:
    # GIVEN a command for an action the device does not have
    core = make_core(tmp_path)

    # WHEN it arrives
    plan = core.on_delta(delta({"c1": cmd("self_destruct")}))

    # THEN it is REJECTED, naming the action and the ones the device knows
    assert plan.run == []
    error = plan.report["c1"]["error"]
    assert plan.report["c1"]["state"] == "REJECTED"
    assert "self_destruct" in error and "led" in error and "read_sensors" in error


def test_a_malformed_entry_is_rejected(tmp_path: Path) -> None:
    # GIVEN a pending entry that is not a command object
    core = make_core(tmp_path)

    # WHEN it arrives
    plan = core.on_delta(delta({"c1": "led on please"}))

    # THEN it is REJECTED rather than crashing the device or staying pending forever
    assert plan.report["c1"]["state"] == "REJECTED"


@pytest.mark.parametrize("issued_at", ["yesterday", None, True, {"at": 1}])
def test_a_pending_entry_with_a_strange_issue_time_stops_no_other_command(tmp_path: Path, issued_at: Any) -> None:
    # GIVEN a valid command, and beside it one whose issuedAt is not a number (written by hand, or a bug)
    core = make_core(tmp_path)
    odd = {**cmd("ping"), "issuedAt": issued_at}
    # WHEN both arrive, on a get and on a delta
    on_get = core.on_get_accepted(get_accepted({"c1": cmd("ping"), "odd": odd}, {}))
    # THEN the valid command runs (the odd one is judged on its own), instead of every message failing
    assert "c1" in [c.id for c in on_get.run]
    assert "odd" in [c.id for c in on_get.run] or "odd" in on_get.report


def test_an_outcome_with_a_strange_finish_time_does_not_stop_reporting(tmp_path: Path) -> None:
    # GIVEN a shadow whose history holds an outcome with a doneAt that is not a number
    core = make_core(tmp_path)
    history = {"odd": {"state": "SUCCEEDED", "action": "ping", "doneAt": "soon"}}
    plan = core.on_get_accepted(get_accepted({"c1": cmd("ping")}, history))
    # WHEN c1 runs and its outcome is to be reported
    core.begin(plan.run[0])
    core.queue_report({"c1": core.finish(plan.run[0], CommandState.SUCCEEDED, result={"pong": True})})
    update = core.take_update()
    # THEN the update carries the outcome (before, pruning the history raised and the outcome was never sent)
    assert update is not None and update["state"]["reported"]["c1"]["state"] == "SUCCEEDED"


def test_report_clears_desired_in_the_same_update_and_prunes_history(tmp_path: Path) -> None:
    # GIVEN a shadow that already holds HISTORY outcomes
    core = make_core(tmp_path)
    old = {f"old{i:02d}": {"state": "SUCCEEDED", "action": "ping", "doneAt": 1000 + i} for i in range(HISTORY)}
    plan = core.on_get_accepted(get_accepted({"c1": cmd("ping")}, old))

    # WHEN c1 finishes and its update is built
    outcome = core.finish(plan.run[0], CommandState.SUCCEEDED, result={"pong": True})
    update = core.report_update({"c1": outcome})

    # THEN one update both reports c1 and removes it from desired, and nulls the oldest outcome
    assert update["state"]["desired"] == {"c1": None}
    assert update["state"]["reported"]["c1"] == outcome
    assert update["state"]["reported"]["old00"] is None
    assert sum(1 for v in update["state"]["reported"].values() if v is None) == 1
    json.dumps(update)  # it is a JSON document


def test_an_id_done_according_to_the_shadow_but_missing_from_the_log_is_not_rerun(tmp_path: Path) -> None:
    # GIVEN a device whose log was lost, and a shadow that has c1's outcome while desired still lists it
    core = make_core(tmp_path)
    done = {"state": "SUCCEEDED", "action": "ping", "doneAt": 7, "result": {"pong": True}}

    # WHEN it reads the shadow
    plan = core.on_get_accepted(get_accepted({"c1": cmd("ping")}, {"c1": done}))

    # THEN the shadow's outcome is re-reported and nothing runs
    assert plan.run == [] and plan.report == {"c1": done}


def test_the_executed_log_is_capped_and_written_atomically(tmp_path: Path) -> None:
    # GIVEN a log that has seen more ids than it keeps
    log = ExecutedLog(tmp_path, fsync=False)
    for i in range(CAPACITY + 10):
        log.finished(f"c{i}", "ping", {"state": "SUCCEEDED", "action": "ping", "doneAt": i})

    # WHEN it is read back from disk
    reread = ExecutedLog(tmp_path)

    # THEN the newest CAPACITY ids are there, the oldest forgotten, and no temp file is left
    assert len(reread) == CAPACITY
    assert "c9" not in reread and f"c{CAPACITY + 9}" in reread
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]


@pytest.mark.parametrize("junk", ["{not json\n", "", '{"id":"c1","action":"ping","outcome":null}\n'])
def test_a_corrupt_log_is_an_error_not_an_empty_log(tmp_path: Path, junk: str) -> None:
    # GIVEN a log file that is not one this agent wrote (every one it writes starts with a header line)
    (tmp_path / FILE_NAME).write_text(junk)

    # WHEN the device opens it / THEN it refuses (an empty log would allow re-running commands)
    with pytest.raises(RuntimeError, match="unreadable"):
        ExecutedLog(tmp_path)


def test_desired_state_changes_are_validated() -> None:
    # GIVEN a classic delta with valid, invalid and unknown keys
    changes, refused = desired_changes({"led": "on", "relay": "yes", "color": "red"}, DESIRED_SPECS)

    # THEN only the valid known key is applied
    assert changes == {"led": "on"}
    assert set(refused) == {"relay", "color"}


def test_a_stale_queued_delta_before_the_first_get_runs_nothing(tmp_path: Path) -> None:
    # GIVEN a device process that just started (its persistent session holds a delta queued long ago)
    core = make_core(tmp_path, synced=False)
    old = delta({"c1": cmd("led", {"state": "off"}, ttl_ms=1_000)}, timestamp=SERVICE_NOW_S - 3600)
    # WHEN that old delta arrives before the device's own get/accepted
    early = core.on_delta(old)
    # THEN nothing is judged on its stale clock
    assert early.run == [] and early.report == {}
    # AND the fresh get/accepted (service time now, an hour later) finds the command expired: it never runs
    plan = core.on_get_accepted(get_accepted({"c1": cmd("led", {"state": "off"}, ttl_ms=1_000)}, {}, timestamp=SERVICE_NOW_S + 5))
    assert plan.run == [] and plan.report["c1"]["state"] == "EXPIRED"


def test_an_outcome_on_its_way_is_not_answered_again_until_acknowledged_or_presumed_lost(tmp_path: Path) -> None:
    # GIVEN c1 done, its outcome update sent but not yet applied by the shadow
    mono = FakeMonotonic()
    core = make_core(tmp_path, mono)
    plan = core.on_delta(delta({"c1": cmd("ping")}))
    core.queue_report({"c1": core.finish(plan.run[0], CommandState.SUCCEEDED, result={"pong": True})})
    update = core.take_update()
    assert update is not None and update["state"]["desired"] == {"c1": None}

    # WHEN the next delta (published before the shadow applied our update) still lists c1
    crossing = core.on_delta(delta({"c1": cmd("ping"), "c2": cmd("ping", issued=1)}))

    # THEN c1 is neither run nor answered again, while the new c2 is planned
    assert crossing.report == {} and [c.id for c in crossing.run] == ["c2"]

    # AND once the shadow acknowledged our update, a delta listing c1 again (re-added) is answered
    assert core.on_update_answered({"clientToken": update["clientToken"], "version": 9})
    assert "c1" in core.on_delta(delta({"c1": cmd("ping")})).report

    # AND an update never acknowledged stops shielding its ids after a while (presumed lost)
    logged = core.log.get("c1")
    assert logged is not None and logged.outcome is not None
    core.queue_report({"c1": logged.outcome})
    core.take_update()
    assert core.on_delta(delta({"c1": cmd("ping")})).report == {}
    mono.t += 60
    assert "c1" in core.on_delta(delta({"c1": cmd("ping")})).report


def test_a_burst_of_outcomes_goes_out_in_updates_that_fit_the_history(tmp_path: Path) -> None:
    # GIVEN more finished outcomes waiting than the shadow keeps
    core = make_core(tmp_path)
    core.queue_report({f"c{i:02d}": {"state": "SUCCEEDED", "action": "ping", "doneAt": i} for i in range(HISTORY + 4)})

    # WHEN updates are taken until none is left
    updates = []
    while (update := core.take_update()) is not None:
        updates.append(update)

    # THEN no single update reports more than HISTORY outcomes, oldest first, and each has its own token
    assert [len([v for v in u["state"]["reported"].values() if v]) for u in updates] == [HISTORY, 4]
    assert "c00" in updates[0]["state"]["reported"]
    assert len({u["clientToken"] for u in updates}) == 2


def test_a_command_expiring_within_the_current_second_is_not_started(tmp_path: Path) -> None:
    # GIVEN a command that expires at the very start of the service's current second
    core = make_core(tmp_path)
    # WHEN it arrives (the service's time may already be up to 999 ms past it)
    plan = core.on_delta(delta({"c1": cmd("ping", ttl_ms=0)}))
    # THEN it is answered EXPIRED: a command is never started after it may have expired
    assert plan.run == [] and plan.report["c1"]["state"] == "EXPIRED"


def test_a_command_that_cannot_be_logged_is_not_run_and_is_reported_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device whose executed log can no longer be written (disk full, read-only SD card)
    core = make_core(tmp_path)
    plan = core.on_delta(delta({"c1": cmd("led", {"state": "on"})}))

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(core.log, "started", full)
    # WHEN the command is about to start
    instead = core.begin(plan.run[0])
    # THEN it is not run (unrecorded, a restart could run it twice) but answered FAILED, saying why
    assert instead is not None and instead["state"] == "FAILED"
    assert "cannot record" in instead["error"]
    # AND once that answer is sent, a late delta that still lists c1 gets the same answer, never a run
    core.queue_report({"c1": instead})
    update = core.take_update()
    assert update is not None and core.on_update_answered({"clientToken": update["clientToken"], "version": 9})
    again = core.on_delta(delta({"c1": cmd("led", {"state": "on"})}))
    assert again.run == [] and again.report["c1"]["state"] == "FAILED"
