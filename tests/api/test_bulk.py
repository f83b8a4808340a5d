"""POST /commands and GET /commands/jobs/{id} against moto: the job record, the fan-out, progress.

The API's asynchronous invoke of the fan-out function is replaced by a list of
events the test delivers to the real fan-out handler itself, so it can deliver
one twice, late, or fail one, as Lambda may. The real invoke, through the local
Lambda Invoke API, is in tests/integration/test_bulk_fanout.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, ReadTimeoutError

from iotbridge_api import bulk, dispatch
from iotbridge_contract.commands import (
    COMMANDS_SHADOW,
    EXPIRY_GRACE_MS,
    GIVE_UP_MS,
    CommandState,
    outcome_entry,
    pending_entry,
)
from iotbridge_jobs import fanout, record
from iotbridge_jobs.handler import lambda_handler as fanout_handler
from iotbridge_jobs.record import JOBS_THING
from iotbridge_local.apigw.event import LambdaContext
from iotbridge_local.testclient import ApiClient
from tests.api.conftest import FakeDeviceAnswers, make_device, shadow, worst_call_s


class Invocations:
    """What the API asked Lambda to run asynchronously, delivered when the test says."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.refuse: set[int] = set()  # pages whose invoke call fails

    def start(self, job_id: str, page: int) -> None:
        if page in self.refuse:  # Lambda's answer: it did not take the event
            error = {"Code": "TooManyRequestsException", "Message": "Rate exceeded"}
            raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 429}}, "Invoke")
        self.events.append({"jobId": job_id, "page": page})

    def deliver(self, event: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = fanout_handler(dict(event), LambdaContext(timeout_s=60, function_name="JobsFunction"))
        return result

    def deliver_all(self) -> None:
        for event in self.events:
            self.deliver(event)


@pytest.fixture
def invocations(aws: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Invocations]:
    record._clients.clear()
    iot = boto3.client("iot", region_name="us-east-1")
    for thing in (JOBS_THING, *record.SHARD_THINGS):  # moto wants things registered before their shadows
        iot.create_thing(thingName=thing)
    fake = Invocations()
    monkeypatch.setattr(bulk, "_start_fanout", fake.start)
    monkeypatch.setattr(fanout, "BACKOFF_S", (0.0,))
    monkeypatch.setattr(bulk, "INVOKE_BACKOFF_S", (0.0, 0.0), raising=False)
    yield fake
    record._clients.clear()


def _things(prefix: str, count: int) -> list[str]:
    iot = boto3.client("iot", region_name="us-east-1")
    names = [f"{prefix}-{i:03d}" for i in range(count)]
    for name in names:
        iot.create_thing(thingName=name)
    return names


def _pending(thing: str) -> dict[str, Any]:
    try:
        return shadow(thing)["state"].get("desired") or {}
    except Exception:  # no commands shadow yet
        return {}


def _answer(thing: str, job: str, state: CommandState = CommandState.SUCCEEDED) -> None:
    """The device ran the job's command: outcome in reported, desired cleared (what the agent writes)."""
    data = boto3.client("iot-data", region_name="us-east-1")
    outcome = outcome_entry(state, "ping", done_at=1, result={"pong": True})
    update = {"state": {"desired": {job: None}, "reported": {job: outcome}}}
    data.update_thing_shadow(thingName=thing, shadowName=COMMANDS_SHADOW, payload=json.dumps(update))


def _page_record(job: str, page: int) -> dict[str, Any]:
    return record.reported(record.get_page(job, page))


def test_small_job_is_queued_inside_the_request_and_progress_follows(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN three devices
    for thing in ("d1", "d2", "d3"):
        make_device(thing)
    # WHEN one command goes to all of them
    started = api.post("/commands", json={"action": "ping", "all": True})
    assert started.status == 202, started.body
    job = started.json["jobId"]
    # THEN a job this small is queued within the request: no fan-out invocation needed
    assert started.json["targets"] == started.json["queued"] == 3
    assert invocations.events == []
    assert all(job in _pending(t) for t in ("d1", "d2", "d3"))
    assert api.get(f"/commands/jobs/{job}").json["counts"] == {"PENDING": 3}
    # AND when one device answers, progress shows it
    with FakeDeviceAnswers("d2", result={"pong": True}) as device:
        while not device.executed:
            pass
    progress = api.get(f"/commands/jobs/{job}").json
    assert progress["done"] >= 1 and progress["complete"] is False
    assert {d["thing"]: d["state"] for d in progress["devices"]}["d2"] == "SUCCEEDED"


def test_a_retried_bulk_command_with_its_id_starts_nothing_new(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a job with a caller-chosen id, queued on two devices of which one has already answered
    for thing in ("r1", "r2"):
        make_device(thing)
    body = {"action": "ping", "things": ["r1", "r2"], "id": "nightly-2026-11-23"}
    first = api.post("/commands", json=body)
    assert (first.status, first.json["jobId"], first.json["queued"]) == (202, "nightly-2026-11-23", 2)
    with FakeDeviceAnswers("r1", result={"pong": True}) as device:
        while not device.executed:
            pass
    # WHEN the caller, whose first answer was lost, posts the same job again
    retry = api.post("/commands", json=body)
    # THEN it gets the same job, and nothing is queued again (r1 keeps its outcome, not a new pending copy)
    assert (retry.status, retry.json["jobId"], retry.json["targets"]) == (202, "nightly-2026-11-23", 2)
    assert retry.headers["Location"] == "/commands/jobs/nightly-2026-11-23"
    assert "nightly-2026-11-23" not in _pending("r1")
    assert shadow("r1")["state"]["reported"]["nightly-2026-11-23"]["state"] == "SUCCEEDED"
    assert invocations.events == []
    # AND the same id with another action is a conflict, not a second job
    other = api.post("/commands", json={**body, "action": "led", "params": {"state": "on"}})
    assert (other.status, other.json["code"]) == (409, "ID_CONFLICT")


def test_a_retry_with_params_equal_in_python_but_not_as_json_is_a_conflict(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a job whose params hold the number 1
    make_device("n1")
    body = {"action": "dim", "things": ["n1"], "id": "dim-1", "params": {"level": 1}}
    assert api.post("/commands", json=body).status == 202
    # WHEN the id comes again with `true` or `1.0` (equal to 1 in Python, other values to a device)
    # THEN each is a conflict on params, as for a single command, not the old job returned as if the same
    for other in (True, 1.0):
        again = api.post("/commands", json={**body, "params": {"level": other}})
        assert (again.status, again.json["code"], again.json["details"]["differs"]) == (409, "ID_CONFLICT", ["params"])


def test_a_jobs_location_keeps_the_stage_of_an_execute_api_url(invocations: Invocations) -> None:
    # GIVEN the API called as deployed, under https://…/Prod
    make_device("s1")
    api = ApiClient(stage_in_url=True)
    # WHEN a job starts / THEN its Location is under the stage too
    job = api.post("/commands", json={"action": "ping", "things": ["s1"], "id": "job-s"})
    assert (job.status, job.headers["Location"]) == (202, "/Prod/commands/jobs/job-s")


def test_a_bulk_action_must_be_named_like_an_action(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a device / WHEN a job names an action no device can have (not a lowercase identifier)
    make_device("a1")
    response = api.post("/commands", json={"action": "p/+#", "things": ["a1"]})
    # THEN it is refused before anything is queued
    assert (response.status, response.json["code"]) == (422, "VALIDATION_ERROR")
    assert invocations.events == []


def test_a_retry_with_the_job_id_but_other_targets_or_ttl_is_a_conflict(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a job with a caller-chosen id on two devices
    for thing in ("t1", "t2", "t3"):
        make_device(thing)
    body = {"action": "ping", "things": ["t1", "t2"], "id": "rollout-5", "ttlMs": 120_000}
    assert api.post("/commands", json=body).status == 202
    # WHEN the id comes again with other targets, another ttl, or `all`
    # THEN each is refused as a conflict naming what differs, and nothing is queued on t3
    for change, differs in (({"things": ["t1", "t3"]}, ["things"]), ({"ttlMs": 60_000}, ["ttlMs"]),
                            ({"things": None, "all": True}, ["things"])):  # fmt: skip
        other = api.post("/commands", json={k: v for k, v in {**body, **change}.items() if v is not None})
        assert (other.status, other.json["code"], other.json["details"]["differs"]) == (409, "ID_CONFLICT", differs)
    assert "rollout-5" not in _pending("t3")
    # AND the same request again is the same job (the targets repeated, duplicates and all)
    again = api.post("/commands", json={**body, "things": ["t1", "t2", "t1"]})
    assert (again.status, again.json["jobId"], again.json["targets"]) == (202, "rollout-5", 2)


def _meanwhile(monkeypatch: pytest.MonkeyPatch, target: Any, name: str, when: Any, run: Any) -> None:
    """Run `run()` once, the first time `target.name` is called with arguments `when` accepts, before that call."""
    real, done = getattr(target, name), []

    def hooked(*args: Any, **kwargs: Any) -> Any:
        if not done and when(*args):
            done.append(True)
            run()
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, hooked)


@pytest.mark.parametrize("moment", ["its first page", "its summary"])
def test_two_requests_with_one_id_and_different_bodies_make_one_job_and_one_conflict(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    # GIVEN two callers choosing the same job id for different commands to the same devices
    for thing in ("c1", "c2"):
        make_device(thing)
    first = {"action": "led", "params": {"state": "on"}, "things": ["c1", "c2"], "id": "shared-7"}
    second = {**first, "params": {"state": "off"}}
    answers: dict[str, Any] = {}
    # WHEN the second request runs from start to end while the first is writing the job's record
    # (before its first page, or before its first write of the summary)
    if moment == "its first page":
        _meanwhile(monkeypatch, record, "update_page", lambda *a: True,
                   lambda: answers.setdefault("second", api.post("/commands", json=second)))  # fmt: skip
    else:
        _meanwhile(monkeypatch, record, "update", lambda thing, doc, shadow: shadow == "job-shared-7",
                   lambda: answers.setdefault("second", api.post("/commands", json=second)))  # fmt: skip
    answers["first"] = api.post("/commands", json=first)
    # THEN exactly one of them is the job, the other is told its id is taken by another command
    statuses = sorted((answers[k].status, k) for k in ("first", "second"))
    assert [s for s, _ in statuses] == [202, 409], {k: v.body for k, v in answers.items()}
    winner, loser = statuses[0][1], statuses[1][1]
    assert answers[loser].json["code"] == "ID_CONFLICT"
    # AND every device has the winner's command, as the job's progress says
    params = (first if winner == "first" else second)["params"]
    assert [_pending(t)["shared-7"]["params"] for t in ("c1", "c2")] == [params, params]
    progress = api.get("/commands/jobs/shared-7").json
    assert progress["counts"] == {"PENDING": 2}


def test_a_retry_while_the_first_request_still_records_the_job_joins_it(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a caller whose request with a job id is still writing the job's record
    for thing in ("j1", "j2"):
        make_device(thing)
    body = {"action": "ping", "things": ["j1", "j2"], "id": "joined-1"}
    monkeypatch.setattr(bulk, "JOIN_POLL_S", 0.01)
    answers: dict[str, Any] = {}
    retry = threading.Thread(target=lambda: answers.setdefault("retry", api.post("/commands", json=body)))
    seen: list[int] = []

    def start_retry_and_let_it_look() -> None:
        retry.start()
        until = time.monotonic() + 5
        while not seen and time.monotonic() < until:  # the retry has read the claimed summary
            time.sleep(0.001)

    real_get = record.get

    def watching_get(thing: str, shadow: str) -> Any:
        doc = real_get(thing, shadow)
        if threading.current_thread() is retry and shadow == "job-joined-1" and record.reported(doc).get("action"):
            seen.append(1)
        return doc

    monkeypatch.setattr(record, "get", watching_get)
    _meanwhile(monkeypatch, record, "update_page", lambda *a: True, start_retry_and_let_it_look)
    # WHEN its retry (the same body) comes in meanwhile
    answers["first"] = api.post("/commands", json=body)
    retry.join(10)
    # THEN both get the same job, which every device has once
    assert [(answers[k].status, answers[k].json["jobId"], answers[k].json["targets"]) for k in ("first", "retry")] == [
        (202, "joined-1", 2), (202, "joined-1", 2)]  # fmt: skip
    assert all("joined-1" in _pending(t) for t in ("j1", "j2"))
    assert api.get("/commands/jobs/joined-1").json["counts"] == {"PENDING": 2}


def test_a_job_whose_request_died_while_recording_it_is_recorded_by_a_retry(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a request with a job id that claimed the job and died (its Lambda's timeout) before writing its pages
    for thing in ("k1", "k2"):
        make_device(thing)
    body = {"action": "ping", "things": ["k1", "k2"], "id": "died-early"}

    real_update_page = record.update_page
    monkeypatch.setattr(record, "update_page", _die)
    with pytest.raises(_Killed):
        api.post("/commands", json=body)
    monkeypatch.setattr(record, "update_page", real_update_page)
    # THEN while that request could still be running, the job shows as being sent, nothing done
    progress = api.get("/commands/jobs/died-early")
    assert (progress.status, progress.json["counts"], progress.json["complete"]) == (200, {"SENDING": 2}, False)
    # AND a retry meanwhile is told to come back (429), not handed a job nobody may record
    monkeypatch.setattr(bulk, "JOIN_WAIT_S", 0.3)
    early = api.post("/commands", json=body)
    assert (early.status, early.json["code"]) == (429, "THROTTLED")
    assert all("died-early" not in _pending(t) for t in ("k1", "k2"))
    # AND once that request has surely ended, there is no such job: nothing was sent
    monkeypatch.setattr(bulk, "CLAIM_LAPSE_MS", -1)
    gone = api.get("/commands/jobs/died-early")
    assert (gone.status, gone.json["code"]) == (404, "JOB_NOT_FOUND")
    # WHEN the caller retries the same request then
    retry = api.post("/commands", json=body)
    # THEN it records the job and every device gets the command
    assert (retry.status, retry.json["queued"]) == (202, 2), retry.body
    assert all("died-early" in _pending(t) for t in ("k1", "k2"))
    assert api.get("/commands/jobs/died-early").json["counts"] == {"PENDING": 2}


def test_a_request_that_fails_after_claiming_its_job_lets_the_retry_record_it_at_once(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a request with a job id whose page write AWS IoT keeps throttling, after it claimed the job
    for thing in ("f1", "f2"):
        make_device(thing)
    body = {"action": "ping", "things": ["f1", "f2"], "id": "throttled-once"}
    real_update_page, calls = record.update_page, []

    def throttled_once(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise record.ShadowError("THROTTLED", "AWS IoT throttled the request (ThrottlingException)", retryable=True)
        real_update_page(*args, **kwargs)

    monkeypatch.setattr(record, "update_page", throttled_once)
    first = api.post("/commands", json=body)
    assert (first.status, first.json["code"]) == (429, "THROTTLED")
    # WHEN the caller retries at once, as the 429 invites
    monkeypatch.setattr(bulk, "JOIN_WAIT_S", 0.3)
    retry = api.post("/commands", json=body)
    # THEN the retry records the job and queues it, without waiting for the first request's claim to lapse
    assert (retry.status, retry.json["queued"]) == (202, 2), retry.body
    assert all("throttled-once" in _pending(t) for t in ("f1", "f2"))


def test_a_retry_that_joins_a_job_leaves_the_page_its_first_request_is_queueing(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a recorded job whose first request died before it queued its page
    monkeypatch.setattr(record, "PAGE_THINGS", 40)
    things = _things("held", 60)
    body = {"action": "ping", "things": things, "id": "held-1", "ttlMs": 600_000}
    _post_that_dies_before_the_fan_out(api, monkeypatch, body)
    # AND a retry that reads the pages just before another request's inline attempt claims page 0
    real_read_pages = bulk._read_pages

    def read_then_claimed(job_id: str, page_count: int) -> list[dict[str, Any] | None]:
        docs = real_read_pages(job_id, page_count)
        claim = record.sent_record(record.SENDING, attempt=1, by="api", until=record.now_ms() + 60_000)
        record.update_page(job_id, 0, {"sent": claim})
        return docs

    monkeypatch.setattr(bulk, "_read_pages", read_then_claimed)
    monkeypatch.setattr(bulk, "_start_fanout", invocations.start)
    invocations.refuse = {0, 1}  # and Lambda refuses the retry's invokes
    # WHEN the retry comes
    retry = api.post("/commands", json=body)
    # THEN page 0, which another request is sending, keeps that request's claim and none of its devices
    # is reported NOT_SENT (a caller resending them could have them run the command twice)
    assert retry.status == 202
    assert _page_record("held-1", 0)["sent"]["state"] == record.SENDING
    not_sent = {f["thing"] for f in retry.json["notQueued"]}
    assert not_sent == set(things[40:])  # page 1, which nobody is sending, is reported


def test_a_claim_lapses_only_after_the_api_function_has_surely_ended() -> None:
    # GIVEN the API function's timeout in the template
    from pathlib import Path

    from tests.template import cfn

    template = cfn.load(Path(__file__).resolve().parents[2] / "template.yaml")
    timeout_s = template["Resources"]["ApiFunction"]["Properties"]["Timeout"]
    # THEN a job's claim outlives it: a claimant still writing pages is never taken over
    assert timeout_s * 1000 < bulk.CLAIM_LAPSE_MS


def test_a_job_id_a_device_already_has_for_another_command_replaces_nothing(
    api: ApiClient, invocations: Invocations
) -> None:
    # GIVEN a device with a command pending under the id "maint-7", one that ran another command under
    # that id, and one that never saw it
    data = boto3.client("iot-data", region_name="us-east-1")
    for thing in ("c1", "c2", "c3"):
        make_device(thing)
    led_on = pending_entry("led", {"state": "on"}, issued_at=record.now_ms(), expires_at=record.now_ms() + 600_000)
    data.update_thing_shadow(thingName="c1", shadowName=COMMANDS_SHADOW,
                             payload=json.dumps({"state": {"desired": {"maint-7": led_on}}}))  # fmt: skip
    ran = outcome_entry(CommandState.SUCCEEDED, "led", done_at=1, params={"state": "off"})
    data.update_thing_shadow(thingName="c2", shadowName=COMMANDS_SHADOW,
                             payload=json.dumps({"state": {"reported": {"maint-7": ran}}}))  # fmt: skip
    # WHEN a bulk command is sent to all three with the job id "maint-7"
    started = api.post("/commands", json={"action": "ping", "things": ["c1", "c2", "c3"], "id": "maint-7"})
    # THEN the pending command is still the one that was queued, and only c3 got the job's
    assert started.status == 202, started.body
    assert _pending("c1")["maint-7"] == led_on
    assert _pending("c3")["maint-7"]["action"] == "ping"
    assert sorted((f["thing"], f["code"]) for f in started.json["notQueued"]) == [("c1", "ID_CONFLICT"), ("c2", "ID_CONFLICT")]
    # AND progress does not pass the other commands off as the job's: not sent, with the reason
    devices = {d["thing"]: d for d in api.get("/commands/jobs/maint-7").json["devices"]}
    assert {t: (d["state"], d.get("error")) for t, d in devices.items()} == {
        "c1": ("NOT_SENT", "ID_CONFLICT"), "c2": ("NOT_SENT", "ID_CONFLICT"), "c3": ("PENDING", None)}  # fmt: skip


def test_a_job_with_a_chosen_id_counts_only_live_commands_against_a_devices_queue(
    api: ApiClient, invocations: Invocations
) -> None:
    # GIVEN a device whose queue holds 10 commands that expired an hour ago (it never came back for them),
    # and one whose queue holds 10 live commands
    data = boto3.client("iot-data", region_name="us-east-1")
    for thing in ("q-stale", "q-full"):
        make_device(thing, connected=thing != "q-stale")  # offline since long before those were queued
    now = record.now_ms()
    for thing, expires_at in (("q-stale", now - 3_600_000), ("q-full", now + 600_000)):
        queue = {f"c{i}": pending_entry("ping", {}, issued_at=expires_at - 60_000, expires_at=expires_at) for i in range(10)}
        data.update_thing_shadow(thingName=thing, shadowName=COMMANDS_SHADOW,
                                 payload=json.dumps({"state": {"desired": queue}}))  # fmt: skip
    # WHEN a bulk command with a chosen job id (the fan-out reads each device first) goes to both
    started = api.post("/commands", json={"action": "ping", "things": ["q-stale", "q-full"], "id": "sweep-1"})
    # THEN the device with only dead entries gets it, as a single command would; the full one is refused
    assert started.status == 202, started.body
    assert _pending("q-stale")["sweep-1"]["action"] == "ping"
    assert [(f["thing"], f["code"]) for f in started.json["notQueued"]] == [("q-full", "TOO_MANY_PENDING")]


def test_a_job_never_makes_a_devices_queue_longer_than_ten_and_tidies_its_dead_entries(
    api: ApiClient, invocations: Invocations
) -> None:
    # GIVEN a device whose queue holds 10 live commands (offline: an ESP32's buffer holds 11 at most),
    # one whose queue holds 10 commands that expired an hour ago, and one with an empty queue
    data = boto3.client("iot-data", region_name="us-east-1")
    for thing in ("t-full", "t-stale", "t-free"):
        make_device(thing, connected=thing != "t-stale")  # offline since long before those were queued
    now = record.now_ms()
    for thing, expires_at in (("t-stale", now - 3_600_000), ("t-full", now + 600_000)):
        queue = {f"c{i}": pending_entry("ping", {}, issued_at=expires_at - 60_000, expires_at=expires_at) for i in range(10)}
        data.update_thing_shadow(thingName=thing, shadowName=COMMANDS_SHADOW,
                                 payload=json.dumps({"state": {"desired": queue}}))  # fmt: skip
    # WHEN a bulk command (its id made by the API) goes to all three
    started = api.post("/commands", json={"action": "ping", "things": ["t-full", "t-stale", "t-free"]})
    job = started.json["jobId"]
    # THEN the full queue is left as it was, and the job says why that device did not get it
    assert started.status == 202, started.body
    assert sorted(_pending("t-full")) == [f"c{i}" for i in range(10)]
    assert [(f["thing"], f["code"]) for f in started.json["notQueued"]] == [("t-full", "TOO_MANY_PENDING")]
    # AND the others have it; the dead entries went in the same write, recorded EXPIRED, as a single command does
    assert list(_pending("t-free")) == [job] and list(_pending("t-stale")) == [job]
    reported = shadow("t-stale")["state"]["reported"]
    assert {reported[f"c{i}"]["state"] for i in range(10)} == {"EXPIRED"}


def test_a_job_gives_up_no_command_a_device_may_have_started_while_away(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a connected device whose queue holds 3 commands that expired an hour ago: it may have
    # started them and lost its connection before reporting
    make_device("t-away")
    now = record.now_ms()
    queue = {f"c{i}": pending_entry("ping", {}, issued_at=now - 3_660_000, expires_at=now - 3_600_000) for i in range(3)}
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="t-away", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"desired": queue}}))
    # WHEN a bulk command goes to it
    job = api.post("/commands", json={"action": "ping", "things": ["t-away"]}).json["jobId"]
    # THEN it gets the job, and the three stay pending, not recorded EXPIRED ("nothing ran")
    assert sorted(_pending("t-away")) == sorted([job, "c0", "c1", "c2"])
    assert not {f"c{i}" for i in range(3)} & set(shadow("t-away")["state"].get("reported", {}))


def test_a_job_to_all_leaves_out_every_thing_named_like_a_job_record_as_the_routes_do(
    api: ApiClient, invocations: Invocations
) -> None:
    # GIVEN a device, and a registered thing named like the job records' things (which every route refuses)
    make_device("real-1")
    make_device("iotbridge-jobs-8")
    # WHEN a command goes to all
    started = api.post("/commands", json={"action": "ping", "all": True})
    # THEN only the device gets it
    assert started.status == 202 and started.json["targets"] == 1, started.body
    assert _pending("iotbridge-jobs-8") == {} and started.json["jobId"] in _pending("real-1")


def test_the_fan_out_starts_no_device_call_inside_the_margin_its_record_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a device whose queue holds an entry that expired long ago (its presence must be read),
    # and a fan-out attempt with just enough time left for one more call before its margin
    left = [fanout.MARGIN_MS + record.CALL_MS + 1]
    calls: list[int] = []
    stale = pending_entry("ping", {}, issued_at=1, expires_at=2)

    def call(*args: Any) -> dict[str, Any]:
        calls.append(left[0])
        left[0] -= record.CALL_MS  # each call at its worst
        return {"version": 3, "state": {"desired": {"old": stale}, "reported": {"connected": True, "at": 1}}}

    monkeypatch.setattr(record, "get", call)
    monkeypatch.setattr(record, "update", call)
    entry = pending_entry("ping", {}, issued_at=record.now_ms(), expires_at=record.now_ms() + 60_000)
    # WHEN it queues the job on that device
    code = fanout._queue_one("dev-m", "job-m", entry, out_of_time=lambda: left[0] < fanout.MARGIN_MS)
    # THEN it stops for lack of time, and no call started inside the margin (the page's record needs it)
    assert code == "OUT_OF_TIME" and all(at >= fanout.MARGIN_MS for at in calls), calls


def test_a_device_whose_every_write_meets_another_writer_is_left_for_a_retry_as_a_conflict(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN two devices, one of which changes its commands shadow between every read and write
    things = _things("busy", 2)
    real_update = record.update

    def update(thing: str, document: dict[str, Any], shadow_name: str) -> None:
        if thing == things[0] and shadow_name == COMMANDS_SHADOW:
            raise record.Conflict()
        real_update(thing, document, shadow_name)

    monkeypatch.setattr(record, "update", update)
    # WHEN a bulk command goes to both
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    # THEN the other has it, and the page records the busy one's failure as a conflict, for the next attempt
    assert job in _pending(things[1]) and job not in _pending(things[0])
    assert record.decode_failed(_page_record(job, 0)["failed"]) == {0: "CONFLICT"}


def test_all_refuses_a_registry_it_cannot_list_in_time_and_sends_nothing(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a registry listed one thing per call, and a request whose time is spent after the first call
    things = _things("big", 3)
    for thing in things:
        make_device(thing)
    monkeypatch.setattr(bulk, "LIST_PAGE", 1)
    monkeypatch.setattr(bulk, "RECORD_MARGIN_S", 1_000.0)
    # WHEN a command goes to all
    answer = api.post("/commands", json={"action": "ping", "all": True, "id": "all-at-once"})
    # THEN it is refused with what to do instead, not started on the part that was listed
    assert (answer.status, answer.json["code"]) == (413, "TOO_MANY_TARGETS")
    assert answer.json["details"]["listed"] < len(things)
    assert "`things` lists" in answer.json["message"]
    assert [t for t in things if _pending(t)] == []
    assert api.get("/commands/jobs/all-at-once").json["code"] == "JOB_NOT_FOUND"
    # AND with time to list them all, the same request starts the job on every device
    monkeypatch.setattr(bulk, "RECORD_MARGIN_S", 0.0)
    started = api.post("/commands", json={"action": "ping", "all": True, "id": "all-at-once"})
    assert (started.status, started.json["targets"]) == (202, 3)


def test_an_all_job_whose_listing_leaves_no_time_to_hand_it_over_is_refused_not_left_unsent(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 3 devices, and a registry whose listing takes 18 s of the request's 27 s (a simulated
    # clock; on AWS, a registry of tens of thousands of things), leaving time to record the job
    # but not to hand it to the fan-out
    things = _things("slowlist", 3)
    for thing in things:
        make_device(thing)
    clock = [0.0]
    monkeypatch.setattr(bulk, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=lambda s: None))
    real_list = bulk.iot.list_things

    def slow_list(limit: int, token: str | None) -> Any:
        clock[0] += 18.0
        return real_list(limit, token)

    monkeypatch.setattr(bulk.iot, "list_things", slow_list)
    # WHEN a command goes to all
    # THEN it is refused while nothing is recorded, not accepted with pages no fan-out will ever get
    with pytest.raises(bulk.errors.TooManyTargets):
        bulk.start(action="ping", params={}, things=None, ttl_ms=600_000, deadline=27.0, job_id="slow-all")
    assert invocations.events == [] and [t for t in things if _pending(t)] == []
    assert api.get("/commands/jobs/slow-all").json["code"] == "JOB_NOT_FOUND"


def test_one_slow_device_read_does_not_fail_a_progress_get(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job on 5 devices that all answered, and one device whose shadow read times out once
    things = _things("slowread", 5)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    for thing in things:
        _answer(thing, job)
    real_get, failed = record.get, []

    def get(thing: str, shadow_name: str) -> dict[str, Any] | None:
        if thing == things[2] and not failed:
            failed.append(thing)
            raise record.ShadowError("UPSTREAM_ERROR", "AWS IoT answered ReadTimeoutError", retryable=True)
        return real_get(thing, shadow_name)

    monkeypatch.setattr(record, "get", get)
    # WHEN progress is read
    view = api.get(f"/commands/jobs/{job}")
    # THEN it answers, with every outcome, rather than 502 for the whole job
    assert failed == [things[2]]
    assert (view.status, view.json["counts"]) == (200, {"SUCCEEDED": 5}), view.body


def test_bulk_needs_targets_and_checks_names(api: ApiClient, invocations: Invocations) -> None:
    assert api.post("/commands", json={"action": "ping"}).status == 422
    bad = api.post("/commands", json={"action": "ping", "things": ["ok", "bad/name"]})
    assert (bad.status, bad.json["code"]) == (400, "INVALID_THING_NAME")
    assert api.get("/commands/jobs/nope").json["code"] == "JOB_NOT_FOUND"


def test_every_target_is_queued_when_the_job_spans_many_pages(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 95 devices and pages of 20 targets (5 pages)
    monkeypatch.setattr(record, "PAGE_THINGS", 20)
    things = _things("fleet", 95)
    # WHEN one command goes to all of them
    started = api.post("/commands", json={"action": "ping", "things": things})
    assert started.status == 202, started.body
    job = started.json["jobId"]
    # THEN the API answered before queueing anything: one fan-out event per page
    assert (started.json["targets"], started.json["queued"], started.json["notQueued"]) == (95, 0, [])
    assert sorted(e["page"] for e in invocations.events) == [0, 1, 2, 3, 4]
    # AND until the fan-out runs, progress says honestly that the pages are on their way, none done
    before = api.get(f"/commands/jobs/{job}").json
    assert (before["counts"], before["done"], before["complete"]) == ({"SENDING": 95}, 0, False)
    # WHEN Lambda runs the events
    invocations.deliver_all()
    # THEN every target has the command pending under the job id
    assert [t for t in things if job not in _pending(t)] == []
    # AND progress counts them all as pending
    assert api.get(f"/commands/jobs/{job}?limit=1000").json["counts"] == {"PENDING": 95}


def test_progress_reads_the_window_and_a_bounded_refresh_then_keeps_finished_pages(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job on 60 devices in pages of 10, at most 20 devices re-read per GET beyond the window
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    monkeypatch.setattr(bulk, "REFRESH_DEVICES", 20)
    things = _things("win", 60)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    invocations.deliver_all()
    reads: list[str] = []
    real_get = record.get

    def counting_get(thing: str, shadow_name: str) -> dict[str, Any] | None:
        if shadow_name == COMMANDS_SHADOW:
            reads.append(thing)
        return real_get(thing, shadow_name)

    monkeypatch.setattr(record, "get", counting_get)
    # WHEN a window of 5 devices in the middle is asked for
    view = api.get(f"/commands/jobs/{job}?offset=23&limit=5").json
    # THEN those devices, in target order, and where the next window starts
    assert [d["thing"] for d in view["devices"]] == things[23:28]
    assert view["nextOffset"] == 28 and view["targets"] == 60
    # AND the GET read at most the window and the refresh budget of device shadows, not all 60
    assert len(reads) <= 5 + 20
    # WHEN every device has answered and a client keeps polling
    for thing in things:
        _answer(thing, job)
    for _ in range(10):
        reads.clear()
        view = api.get(f"/commands/jobs/{job}?limit=1").json
        if view["complete"]:
            break
    # THEN the job completes within a few calls, with every outcome counted
    assert view["complete"] is True and view["counts"] == {"SUCCEEDED": 60} and view["done"] == 60
    # AND from then on a GET reads only its window: finished pages keep their final counts
    reads.clear()
    again = api.get(f"/commands/jobs/{job}?limit=1").json
    assert again["counts"] == {"SUCCEEDED": 60} and again["complete"] is True
    assert reads == [things[0]]
    assert view["nextOffset"] == 1
    # AND a device that has since forgotten the job's outcome (its history moved on) does not
    # change the job's results, then or later
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName=things[0], shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"reported": {job: None}}})
    )
    for _ in range(2):
        later = api.get(f"/commands/jobs/{job}?limit=1").json
        assert later["counts"] == {"SUCCEEDED": 60} and later["complete"] is True


def test_a_job_completes_when_its_offline_devices_let_the_command_expire(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-second job on a device that answers and one offline since before it (it never comes back)
    for thing in ("exp-on", "exp-off"):
        make_device(thing, connected=thing == "exp-on")
    job = api.post("/commands", json={"action": "ping", "things": ["exp-on", "exp-off"], "ttlMs": 1_000}).json["jobId"]
    _answer("exp-on", job)
    # WHEN progress is read an hour later
    later = record.now_ms() + 3_600_000
    monkeypatch.setattr(record, "now_ms", lambda: later)
    view = api.get(f"/commands/jobs/{job}").json
    # THEN the silent device counts EXPIRED, as GET /devices/{thing}/commands/{id} says, and the job is complete
    assert view["counts"] == {"SUCCEEDED": 1, "EXPIRED": 1}
    assert view["complete"] is True and view["done"] == 2


def test_a_device_that_may_have_started_the_job_before_it_went_away_is_not_counted_expired(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-second job on a device that was connected when it was sent, and no outcome from it yet
    make_device("exp-away")
    job = api.post("/commands", json={"action": "ping", "things": ["exp-away"], "ttlMs": 1_000}).json["jobId"]
    # WHEN progress is read an hour later
    later = record.now_ms() + 3_600_000
    monkeypatch.setattr(record, "now_ms", lambda: later)
    view = api.get(f"/commands/jobs/{job}").json
    # THEN it is not counted EXPIRED ("nothing ran"): it may have run it and reports when back
    assert "EXPIRED" not in view["counts"] and view["complete"] is False, view
    # WHEN it is back and reports that it ran it THEN the job completes with that outcome
    _answer("exp-away", job)
    assert api.get(f"/commands/jobs/{job}").json["counts"] == {"SUCCEEDED": 1}


def test_a_job_with_a_device_that_died_after_it_was_sent_completes_with_that_device_unknown(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-second job to two connected devices: one answers, the other dies without a word
    make_device("died-1")
    make_device("lives-1")
    job = api.post("/commands", json={"action": "ping", "things": ["died-1", "lives-1"], "ttlMs": 1_000}).json["jobId"]
    _answer("lives-1", job)
    # WHEN progress is read once the API has stopped waiting for the dead device's answer
    later = record.now_ms() + 1_000 + EXPIRY_GRACE_MS + GIVE_UP_MS + 5_000
    monkeypatch.setattr(record, "now_ms", lambda: later)
    view = api.get(f"/commands/jobs/{job}").json
    # THEN the job is complete, with that device UNKNOWN (it may have run it), not EXPIRED nor pending
    assert view["counts"] == {"SUCCEEDED": 1, "UNKNOWN": 1}, view
    assert view["complete"] is True
    dead = next(d for d in view["devices"] if d["thing"] == "died-1")
    assert dead["state"] == "UNKNOWN" and "may have run it" in dead["error"]
    # AND once the API has recorded it UNKNOWN in the device's shadow (a GET of the command does)
    monkeypatch.setattr(dispatch, "now_ms", lambda: later)
    assert api.get(f"/devices/died-1/commands/{job}").json["state"] == "UNKNOWN"
    assert api.get(f"/commands/jobs/{job}").json["counts"] == {"SUCCEEDED": 1, "UNKNOWN": 1}
    # WHEN the device comes back after all and reports the job's outcome
    _answer("died-1", job)
    # THEN the job's counts follow, as its device list does
    again = api.get(f"/commands/jobs/{job}").json
    assert again["counts"] == {"SUCCEEDED": 2}, again


def test_a_job_whose_outcome_left_a_devices_history_still_completes(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a job a device ran, whose outcome was then pruned from its 16-outcome history
    make_device("pruned-1")
    job = api.post("/commands", json={"action": "ping", "things": ["pruned-1"]}).json["jobId"]
    _answer("pruned-1", job)
    prune = {"state": {"reported": {job: None}}}
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="pruned-1", shadowName=COMMANDS_SHADOW, payload=json.dumps(prune)
    )
    # WHEN progress is read
    view = api.get(f"/commands/jobs/{job}").json
    # THEN the device is UNKNOWN, which will never change, so the job is complete
    assert view["counts"] == {"UNKNOWN": 1}
    assert view["complete"] is True


def test_a_page_whose_invocation_fails_stays_open_and_a_retry_of_the_request_hands_it_over(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN 30 devices in pages of 10, and Lambda refusing the invoke of the second page
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    things = _things("fail", 30)
    invocations.refuse = {1}
    # WHEN the bulk command is posted
    body = {"action": "ping", "things": things}
    started = api.post("/commands", json=body)
    job = started.json["jobId"]
    # THEN the answer already lists that page's devices as not queued, with the reason
    assert [n["thing"] for n in started.json["notQueued"]] == things[10:20]
    assert {n["code"] for n in started.json["notQueued"]} == {"NOT_SENT"}
    assert "TooManyRequestsException" in started.json["notQueued"][0]["error"]
    # WHEN the other pages are queued and all their devices answer
    invocations.deliver_all()
    for thing in things[:10] + things[20:]:
        _answer(thing, job)
    view = {}
    for _ in range(5):
        view = api.get(f"/commands/jobs/{job}?offset=10&limit=10").json
    # THEN progress shows the failed page's devices NOT_SENT with the error, and the job open:
    # Lambda refusing an invoke is no reason to give the page up
    assert view["counts"] == {"SUCCEEDED": 20, "NOT_SENT": 10}
    assert {d["state"] for d in view["devices"]} == {"NOT_SENT"}
    assert all("could not be started" in d["error"] for d in view["devices"])
    assert view["complete"] is False
    assert [t for t in things[10:20] if job in _pending(t)] == []
    # WHEN the caller sends the same request again with the job's id, and Lambda takes the event now
    invocations.refuse.clear()
    retry = api.post("/commands", json={**body, "id": job})
    # THEN that page alone is handed over, and its devices get the command; the others not again
    assert (retry.status, retry.json["notQueued"]) == (202, [])
    assert [e["page"] for e in invocations.events] == [0, 2, 1]
    assert invocations.deliver(invocations.events[-1])["state"] == "QUEUED"
    assert [t for t in things[10:20] if job not in _pending(t)] == []
    assert [t for t in things[:10] + things[20:] if job in _pending(t)] == []


def test_devices_the_inline_attempt_queued_are_not_reported_unsent_when_the_hand_over_fails(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a small job (queued inside the request) on 5 devices, one of which AWS IoT throttles,
    # and Lambda refusing the invoke that would hand the rest of the page to the fan-out
    things = _things("inl", 5)
    throttled = {things[0]}
    _throttle(monkeypatch, throttled)
    invocations.refuse = {0}
    body = {"action": "ping", "things": things, "id": "inline-1", "ttlMs": 600_000}
    # WHEN the bulk command is posted
    started = api.post("/commands", json=body)
    # THEN only the unreached device is reported not queued; the 4 that have the command are not
    # (a caller sending them the command again would have it run twice)
    assert started.status == 202, started.body
    assert started.json["queued"] == 4
    assert [(n["thing"], n["code"]) for n in started.json["notQueued"]] == [(things[0], "NOT_SENT")]
    assert [t for t in things[1:] if "inline-1" not in _pending(t)] == []
    # AND the page keeps what the inline attempt did, and stays open for another attempt
    sent = _page_record("inline-1", 0)["sent"]
    assert (sent["state"], sent["attempt"], sent["queued"], sent["by"]) == (record.RETRYING, 1, 4, "api")
    view = api.get("/commands/jobs/inline-1").json
    assert (view["counts"], view["complete"]) == ({"PENDING": 4, "NOT_SENT": 1}, False)
    # WHEN the caller retries the same request, the throttling and Lambda's refusal over
    throttled.clear()
    invocations.refuse.clear()
    retry = api.post("/commands", json=body)
    # THEN the page is handed over again, and its next attempt queues the device it missed
    assert (retry.status, invocations.events) == (202, [{"jobId": "inline-1", "page": 0}])
    result = invocations.deliver(invocations.events[0])
    assert (result["state"], result["attempt"]) == ("QUEUED", 2)
    assert "inline-1" in _pending(things[0])


def test_an_invoke_that_timed_out_after_lambda_took_the_event_leaves_the_fan_outs_record(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-page job whose invoke reaches Lambda (the fan-out runs and queues every device)
    # but times out before the API reads Lambda's answer
    things = _things("late", 60)

    def start(job_id: str, page: int) -> None:
        invocations.deliver({"jobId": job_id, "page": page})
        raise ReadTimeoutError(endpoint_url="https://lambda.us-east-1.amazonaws.com")

    monkeypatch.setattr(bulk, "_start_fanout", start)
    # WHEN the bulk command is posted
    started = api.post("/commands", json={"action": "ping", "things": things})
    job = started.json["jobId"]
    # THEN no device is reported not queued: Lambda may have the event (and here it did)
    assert (started.status, started.json["notQueued"]) == (202, [])
    # AND the fan-out's record of the page is left as it wrote it, and progress shows every device pending
    sent = _page_record(job, 0)["sent"]
    assert (sent["state"], sent["by"], sent["queued"]) == (record.QUEUED, "fanout", 60)
    assert api.get(f"/commands/jobs/{job}?limit=1").json["counts"] == {"PENDING": 60}


def test_a_fan_out_that_takes_the_page_while_the_api_records_the_failed_invoke_keeps_its_record(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-page job whose invoke times out, and whose event Lambda delivers while the API
    # records the failure (after it read the page, before it writes)
    things = _things("race-inv", 60)

    def start(job_id: str, page: int) -> None:
        invocations.events.append({"jobId": job_id, "page": page})
        raise ReadTimeoutError(endpoint_url="https://lambda.us-east-1.amazonaws.com")

    real_update_page = record.update_page

    def update_page(job_id: str, page: int, reported: dict[str, Any], **kw: Any) -> None:
        if (reported.get("sent") or {}).get("by") == "api" and invocations.events:
            invocations.deliver(invocations.events.pop())
        real_update_page(job_id, page, reported, **kw)

    monkeypatch.setattr(bulk, "_start_fanout", start)
    monkeypatch.setattr(record, "update_page", update_page)
    # WHEN the bulk command is posted
    started = api.post("/commands", json={"action": "ping", "things": things})
    job = started.json["jobId"]
    # THEN the API's failure record does not replace the fan-out's: the page shows as queued
    assert (started.status, started.json["notQueued"]) == (202, [])
    sent = _page_record(job, 0)["sent"]
    assert (sent["state"], sent["by"], sent["queued"]) == (record.QUEUED, "fanout", 60)
    assert [t for t in things if job not in _pending(t)] == []


def _throttle(monkeypatch: pytest.MonkeyPatch, throttled: set[str]) -> None:
    real_update = record.update

    def update(thing: str, document: dict[str, Any], shadow_name: str) -> None:
        if thing in throttled and shadow_name == COMMANDS_SHADOW:
            raise record.ShadowError("THROTTLED", "AWS IoT throttled the request", retryable=True)
        real_update(thing, document, shadow_name)

    monkeypatch.setattr(record, "update", update)


def test_an_async_retry_never_queues_again_on_a_device_that_finished(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job on 60 devices (one fan-out page), one of which AWS IoT keeps throttling
    things = _things("retry", 60)
    throttled = {things[7]}
    _throttle(monkeypatch, throttled)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    (event,) = invocations.events
    # WHEN the first attempt runs: it cannot reach that device, so it fails for Lambda to retry
    with pytest.raises(fanout.Incomplete):
        invocations.deliver(event)
    assert _page_record(job, 0)["sent"]["state"] == record.RETRYING
    # AND meanwhile another device runs the command and clears it from desired
    _answer(things[3], job)
    assert job not in _pending(things[3])
    # AND progress shows the unreached device SENDING with the cause, while the retry is due: it is
    #     not final (a caller sending it the command again meanwhile could have it run twice)
    view = api.get(f"/commands/jobs/{job}?offset=7&limit=1").json
    assert view["devices"] == [{"thing": things[7], "state": "SENDING", "error": "THROTTLED"}]
    assert view["complete"] is False
    # WHEN Lambda retries the event and the throttling is over
    throttled.clear()
    result = invocations.deliver(event)
    # THEN the unreached device gets the command, and the finished one does not get it again
    assert (result["state"], result["attempt"]) == ("QUEUED", 2)
    assert job in _pending(things[7])
    assert job not in _pending(things[3])
    assert shadow(things[3])["state"]["reported"][job]["state"] == "SUCCEEDED"
    # AND a third delivery of the same event (Lambda may deliver twice) changes nothing
    assert invocations.deliver(event)["state"] == "SKIPPED"
    assert job not in _pending(things[3])


def test_the_last_attempt_gives_up_visibly(api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a job on 60 devices, one of which is throttled through every attempt Lambda makes
    things = _things("last", 60)
    _throttle(monkeypatch, {things[0]})
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    (event,) = invocations.events
    # WHEN Lambda runs the event and its two retries
    for _ in range(record.MAX_ATTEMPTS - 1):
        with pytest.raises(fanout.Incomplete):
            invocations.deliver(event)
    last = invocations.deliver(event)
    # THEN the last attempt records the page FAILED, with what was queued and what not
    assert (last["state"], last["attempt"], last["queued"], last["failed"]) == ("FAILED", 3, 59, 1)
    # AND progress shows that device NOT_SENT with the cause, as settled: nothing more will happen to it
    for thing in things[1:]:
        _answer(thing, job)
    view = {}
    for _ in range(3):
        view = api.get(f"/commands/jobs/{job}?limit=1").json
        if view["complete"]:
            break
    assert view["devices"] == [{"thing": things[0], "state": "NOT_SENT", "error": "THROTTLED"}]
    assert view["counts"] == {"SUCCEEDED": 59, "NOT_SENT": 1} and view["complete"] is True


def test_a_duplicate_delivery_leaves_a_page_another_invocation_is_sending(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a job whose page is held by a live sender (its claim runs until the future)
    things = _things("dup", 60)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    claim = record.sent_record(record.SENDING, attempt=1, by="fanout", until=record.now_ms() + 60_000)
    record.update_page(job, 0, {"sent": claim})
    # WHEN Lambda delivers the same event again
    result = invocations.deliver(invocations.events[0])
    # THEN the duplicate leaves the page alone
    assert result["state"] == "SKIPPED"
    assert [t for t in things if job in _pending(t)] == []
    # AND progress shows its devices being sent, and the job not over: the live sender may still queue them
    view = api.get(f"/commands/jobs/{job}").json
    assert (view["counts"], view["complete"]) == ({"SENDING": 60}, False)


def test_a_sender_cut_off_by_its_timeout_is_retried_then_shown_failed(api: ApiClient, invocations: Invocations) -> None:
    # GIVEN a page whose last attempt's claim lapsed: Lambda stopped it at its timeout
    things = _things("cut", 60)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    claim = record.sent_record(record.SENDING, attempt=record.MAX_ATTEMPTS, by="fanout", until=record.now_ms() - 1)
    record.update_page(job, 0, {"sent": claim})
    # WHEN progress is read
    view = api.get(f"/commands/jobs/{job}?limit=1").json
    # THEN its devices show as not sent because the attempt was cut off, and the job as over for them
    assert view["devices"][0]["state"] == "NOT_SENT" and "cut off" in view["devices"][0]["error"]
    assert view["complete"] is True and view["counts"] == {"NOT_SENT": 60}


def test_a_page_whose_last_attempt_was_cut_off_is_never_sent_after_progress_called_it_settled(
    api: ApiClient, invocations: Invocations
) -> None:
    # GIVEN a page whose last attempt Lambda stopped at its timeout, and progress that saved it as final
    things = _things("late", 60)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    claim = record.sent_record(record.SENDING, attempt=record.MAX_ATTEMPTS, by="fanout", until=record.now_ms() - 1)
    record.update_page(job, 0, {"sent": claim})
    assert api.get(f"/commands/jobs/{job}?limit=1").json["complete"] is True
    # WHEN the event is delivered once more (Lambda may deliver an event twice)
    result = invocations.deliver(invocations.events[0])
    # THEN that delivery sends nothing: the devices the job reports NOT_SENT do not get the command
    assert result["state"] == "SKIPPED"
    assert [t for t in things if job in _pending(t)] == []


def test_progress_is_not_complete_while_a_retried_page_still_has_pending_devices(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job of 2 pages of 10, GETs that refresh one page each, and one throttled device per page
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    monkeypatch.setattr(bulk, "REFRESH_DEVICES", 10)
    things = _things("stale", 20)
    throttled = {things[0], things[10]}
    _throttle(monkeypatch, throttled)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    for event in invocations.events:
        with pytest.raises(fanout.Incomplete):
            invocations.deliver(event)
    for thing in set(things) - throttled:
        _answer(thing, job)
    clock = [record.now_ms()]
    monkeypatch.setattr(record, "now_ms", lambda: clock[0])
    for _ in range(2):  # each GET counts one page, with its throttled device NOT_SENT
        api.get(f"/commands/jobs/{job}?limit=1")
        clock[0] += 1000
    # WHEN Lambda's retries queue the two devices, and one of them answers
    throttled.clear()
    for event in invocations.events:
        invocations.deliver(event)
    _answer(things[0], job)
    clock[0] += 1000
    view = api.get(f"/commands/jobs/{job}?limit=1").json
    # THEN the job is not complete: the other device has the command and has not answered
    assert job in _pending(things[10])
    assert view["complete"] is False, view
    # AND once it answers, the job completes with every device counted
    _answer(things[10], job)
    for _ in range(3):
        clock[0] += 1000
        view = api.get(f"/commands/jobs/{job}?limit=1").json
    assert (view["complete"], view["counts"]) == (True, {"SUCCEEDED": 20})


def test_a_retry_after_the_job_expired_keeps_what_earlier_attempts_found(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a chosen-id job where one device has another command under that id and one is throttled
    things = _things("exp", 60)
    data = boto3.client("iot-data", region_name="us-east-1")
    led_on = pending_entry("led", {"state": "on"}, issued_at=record.now_ms(), expires_at=record.now_ms() + 600_000)
    data.update_thing_shadow(thingName=things[0], shadowName=COMMANDS_SHADOW,
                             payload=json.dumps({"state": {"desired": {"maint-9": led_on}}}))  # fmt: skip
    _throttle(monkeypatch, {things[5]})
    assert api.post("/commands", json={"action": "ping", "things": things, "id": "maint-9"}).status == 202
    (event,) = invocations.events
    with pytest.raises(fanout.Incomplete):
        invocations.deliver(event)
    # WHEN Lambda's retry comes after the job's 60 s expiry, and a device's outcome left its history
    later = record.now_ms() + 61_000
    monkeypatch.setattr(record, "now_ms", lambda: later)
    result = invocations.deliver(event)
    data.update_thing_shadow(thingName=things[9], shadowName=COMMANDS_SHADOW,
                             payload=json.dumps({"state": {"desired": {"maint-9": None}}}))  # fmt: skip
    # THEN the page is over with what the first attempt found: the conflict stays a conflict,
    # the unreached device failed because the job expired, a queued one is not called unsent
    assert (result["state"], result["queued"]) == ("FAILED", 58)
    devices = {d["thing"]: d for d in api.get("/commands/jobs/maint-9?limit=10").json["devices"]}
    assert (devices[things[0]]["state"], devices[things[0]]["error"]) == ("NOT_SENT", "ID_CONFLICT")
    assert (devices[things[5]]["state"], devices[things[5]]["error"]) == ("NOT_SENT", "EXPIRED")
    assert devices[things[9]]["state"] == "UNKNOWN"


class _Killed(BaseException):
    """The API's invocation ending abruptly (its timeout), past any except Exception."""


def _die(*args: Any, **kwargs: Any) -> None:
    raise _Killed()


def _post_that_dies_before_the_fan_out(api: ApiClient, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any]) -> None:
    """POST `body`, whose request records the job and then ends (its timeout) before invoking any fan-out."""
    monkeypatch.setattr(bulk, "_start_fanout", _die)
    with pytest.raises(_Killed):
        api.post("/commands", json=body)


def test_a_retry_of_a_post_that_died_before_starting_the_fan_out_starts_it(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a POST with a job id that recorded the job and then died before invoking the fan-out
    monkeypatch.setattr(record, "PAGE_THINGS", 40)
    things = _things("died", 60)
    body = {"action": "ping", "things": things, "id": "nightly-1", "ttlMs": 600_000}
    _post_that_dies_before_the_fan_out(api, monkeypatch, body)
    monkeypatch.setattr(bulk, "_start_fanout", invocations.start)
    # WHEN the caller retries the same request
    retry = api.post("/commands", json=body)
    # THEN the fan-out is started for the pages nobody took, and every device gets the command once
    assert retry.status == 202
    assert sorted(e["page"] for e in invocations.events) == [0, 1]
    invocations.deliver_all()
    assert [t for t in things if "nightly-1" not in _pending(t)] == []
    # AND a further retry starts nothing more
    assert api.post("/commands", json=body).status == 202
    assert len(invocations.events) == 2


def test_a_job_whose_fan_out_and_its_failure_record_both_fail_still_answers_202(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN Lambda refusing the invoke of one page, and AWS IoT throttling the write that records it
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    things = _things("twice", 30)
    invocations.refuse = {1}
    real_update_page = record.update_page

    def update_page(job_id: str, page: int, reported: dict[str, Any], **kw: Any) -> None:
        if (reported.get("sent") or {}).get("by") == "api":  # no page is inline: only the failure's record
            raise record.ShadowError("THROTTLED", "AWS IoT throttled the request", retryable=True)
        real_update_page(job_id, page, reported, **kw)

    monkeypatch.setattr(record, "update_page", update_page)
    # WHEN the bulk command is posted
    started = api.post("/commands", json={"action": "ping", "things": things})
    # THEN it is accepted (the other pages are on their way: a retry would send them twice),
    # and the page that could not be started is reported not queued
    assert started.status == 202, started.body
    assert [n["thing"] for n in started.json["notQueued"]] == things[10:20]
    assert sorted(e["page"] for e in invocations.events) == [0, 2]


def test_a_page_the_api_gave_up_on_is_sent_by_the_fan_out_once_the_apis_claim_lapsed(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a small job whose page the API claimed (its claim write worked, but its answer was
    # lost), so the API handed the page to the fan-out function
    make_device("gave-up")
    real_update_page = record.update_page

    def claim_then_lose_the_answer(job_id: str, page: int, reported: dict[str, Any], **kw: Any) -> None:
        real_update_page(job_id, page, reported, **kw)
        if (reported.get("sent") or {}).get("by") == "api" and reported["sent"]["state"] == record.SENDING:
            raise record.ShadowError("UPSTREAM_ERROR", "the answer was lost", retryable=True)

    monkeypatch.setattr(record, "update_page", claim_then_lose_the_answer)
    started = api.post("/commands", json={"action": "ping", "things": ["gave-up"], "ttlMs": 600_000})
    monkeypatch.setattr(record, "update_page", real_update_page)
    job = started.json["jobId"]
    assert started.json["queued"] == 0 and len(invocations.events) == 1
    # WHEN the fan-out event arrives while the API's claim still runs
    # THEN it fails, so that Lambda retries it, rather than leaving the page to a sender that gave up
    with pytest.raises(record.ShadowError):
        invocations.deliver(invocations.events[0])
    assert api.get(f"/commands/jobs/{job}").json["complete"] is False
    # AND the retry, after the API's claim lapsed, queues the command
    later = record.now_ms() + 60_000
    monkeypatch.setattr(record, "now_ms", lambda: later)
    assert invocations.deliver(invocations.events[0])["state"] == "QUEUED"
    assert job in _pending("gave-up")


def test_a_page_whose_events_were_all_lost_is_settled_when_the_job_expires(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a two-page job whose fan-out events Lambda never delivered (throttled until they aged out)
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    things = _things("lost", 20)
    job = api.post("/commands", json={"action": "ping", "things": things, "ttlMs": 1_000}).json["jobId"]
    assert len(invocations.events) == 2
    # WHEN progress is read before and after the job expired
    before = api.get(f"/commands/jobs/{job}").json
    later = record.now_ms() + 3_600_000
    monkeypatch.setattr(record, "now_ms", lambda: later)
    after = api.get(f"/commands/jobs/{job}?limit=1").json
    # THEN it is pending before, and settled after: not sent, saying why, the job complete
    assert (before["counts"], before["complete"]) == ({"SENDING": 20}, False)
    assert (after["counts"], after["complete"]) == ({"NOT_SENT": 20}, True)
    assert "expired before this page was sent" in after["devices"][0]["error"]


def test_pages_stay_within_the_shadow_size_limit() -> None:
    # GIVEN the longest thing names AWS allows, and the shortest, and the largest params a command may have
    command = json.dumps({"action": "a" * 32, "params": {"p": "x" * 500}, "issuedAt": 2**42, "expiresAt": 2**42})
    counts = {"counts": json.dumps({s.value: 1000 for s in CommandState} | {"NOT_SENT": 1000}), "at": 2**42}
    for length in (128, 1):
        things = [f"{i:0{length}d}"[-length:] if length > 6 else f"t{i}" for i in range(2_000)]
        for page in record.split(things):
            # THEN a page's record, every device failed under a long code, counts and all, stays under 8 KB
            failed = record.encode_failed(dict.fromkeys(range(len(page)), "TOO_MANY_PENDING"))
            doc = {"things": ",".join(page), "command": command, "failed": failed, "tally": counts, "final": counts,
                   "sent": record.sent_record(record.QUEUED, attempt=3, by="fanout", error="e" * 100, queued=500)}
            assert len(json.dumps({"state": {"reported": doc}}, separators=(",", ":"))) < 8_000, length
    # AND the failure encoding reads back as written
    assert record.decode_failed(record.encode_failed({3: "A", 1: "B", 2: "A"})) == {1: "B", 2: "A", 3: "A"}


def test_a_claim_that_keeps_losing_to_other_writes_is_left_for_lambda_to_retry(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job page whose shadow changes under every claim (as if GETs kept writing counts on it)
    things = _things("race", 60)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    real_update = record.update

    def update(thing: str, document: dict[str, Any], shadow_name: str) -> None:
        if thing in record.SHARD_THINGS and "version" in document:
            raise record.Conflict()
        real_update(thing, document, shadow_name)

    monkeypatch.setattr(record, "update", update)
    # WHEN Lambda delivers the page's event
    # THEN the invocation fails (so Lambda retries it) instead of dropping the page
    with pytest.raises(record.ShadowError):
        invocations.deliver(invocations.events[0])
    assert "sent" not in _page_record(job, 0)
    # AND the retry, once the page holds still, queues it
    monkeypatch.setattr(record, "update", real_update)
    assert invocations.deliver(invocations.events[0])["state"] == "QUEUED"
    assert [t for t in things if job not in _pending(t)] == []


def test_a_job_record_throttled_by_aws_iot_is_written_after_a_pause(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN AWS IoT throttling the first two writes to each job page thing (20 requests/s per thing)
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    monkeypatch.setattr(record.time, "sleep", lambda s: None)
    things = _things("slow", 40)
    real_update = record.update
    refused: dict[str, int] = {}

    def update(thing: str, document: dict[str, Any], shadow_name: str) -> None:
        if thing in record.SHARD_THINGS and refused.get(thing, 0) < 2:
            refused[thing] = refused.get(thing, 0) + 1
            raise record.ShadowError("THROTTLED", "Rate exceeded", retryable=True)
        real_update(thing, document, shadow_name)

    monkeypatch.setattr(record, "update", update)
    # WHEN the bulk command is posted and its pages run
    started = api.post("/commands", json={"action": "ping", "things": things})
    assert started.status == 202, started.body
    invocations.deliver_all()
    # THEN the record was written all the same, over several page things, and every target has the command
    assert len(refused) > 1
    assert [t for t in things if started.json["jobId"] not in _pending(t)] == []


def test_the_fan_out_stops_sending_in_time_to_record_how_far_it_got(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a page of 60 devices of a job with a chosen id (each device is read, then written), an
    # invocation with 60 s, and AWS IoT so slow that each device call lasts its client's worst case
    things = _things("slow-dev", 60)
    assert api.post("/commands", json={"action": "ping", "things": things, "id": "slow-1"}).status == 202
    monkeypatch.setattr(fanout, "THREADS", 1)  # one call at a time on the simulated clock
    worst_ms = int(worst_call_s(record._client()) * 1000)
    clock = [0]
    real_get, real_update = record.get, record.update
    recorded_with: list[int] = []  # time left when the page's record write started

    def remaining() -> int:
        return 60_000 - clock[0]

    def get(thing: str, shadow_name: str) -> dict[str, Any] | None:
        clock[0] += worst_ms if shadow_name == COMMANDS_SHADOW else 0
        return real_get(thing, shadow_name)

    def update(thing: str, document: dict[str, Any], shadow_name: str) -> None:
        clock[0] += worst_ms if shadow_name == COMMANDS_SHADOW else 0
        if (document["state"].get("reported") or {}).get("sent", {}).get("state") not in (None, record.SENDING):
            recorded_with.append(remaining())
        real_update(thing, document, shadow_name)

    monkeypatch.setattr(record, "get", get)
    monkeypatch.setattr(record, "update", update)
    # WHEN the fan-out runs the page
    with pytest.raises(fanout.Incomplete) as incomplete:
        fanout.run_page("slow-1", 0, by="fanout", remaining_ms=remaining)
    # THEN it stopped sending early enough for its last device call and then the page's record write
    # to take their worst case: Lambda does not cut the invocation off before it says how far it got
    assert len(recorded_with) == 1 and recorded_with[0] >= worst_ms, (recorded_with, worst_ms)
    # AND what it says is so: the devices it counts queued have the command, the others are left to the retry
    queued = incomplete.value.outcome.queued
    assert 0 < queued < 60
    assert sum("slow-1" in _pending(t) for t in things) == queued == _page_record("slow-1", 0)["sent"]["queued"]


def test_a_small_job_answers_within_api_gateways_time_when_aws_is_at_its_slowest(
    invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a small job (queued inside the request) whose AWS IoT calls, once the job is recorded, and
    # whose invokes of the fan-out each last their client's worst case, Lambda refusing the invoke,
    # and the 27 s the API gives a request (API Gateway's 29 s less its margin), on a simulated clock
    things = _things("slow-api", 10)
    monkeypatch.setattr(fanout, "THREADS", 1)
    monkeypatch.setattr(bulk, "_lambda_client", [])
    iot_s, invoke_s = worst_call_s(record._client()), worst_call_s(bulk._lambda())
    clock, slow = [0.0], [False]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(bulk, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=sleep))
    real_get, real_update = record.get, record.update

    def get(thing: str, shadow_name: str) -> dict[str, Any] | None:
        clock[0] += iot_s if slow[0] else 0
        return real_get(thing, shadow_name)

    def update(thing: str, document: dict[str, Any], shadow_name: str) -> None:
        clock[0] += iot_s if slow[0] else 0
        real_update(thing, document, shadow_name)
        slow[0] = slow[0] or thing == JOBS_THING  # the job's summary: recorded

    def refuse(job_id: str, page: int) -> None:
        clock[0] += invoke_s
        raise ClientError({"Error": {"Code": "TooManyRequestsException"}, "ResponseMetadata": {"HTTPStatusCode": 429}},
                          "Invoke")  # fmt: skip

    monkeypatch.setattr(record, "get", get)
    monkeypatch.setattr(record, "update", update)
    monkeypatch.setattr(bulk, "_start_fanout", refuse)
    deadline = clock[0] + 27.0
    # WHEN the job is posted
    started = bulk.start(action="ping", params={}, things=things, ttl_ms=600_000, deadline=deadline)
    # THEN the answer is ready before the deadline (API Gateway would answer 504 for a job under way)
    assert clock[0] <= deadline, clock[0]
    # AND it says what happened: some devices were queued inside the request, the others are not
    job = started["jobId"]
    pending = [t for t in things if job in _pending(t)]
    assert 0 < started["queued"] == len(pending)
    assert [n["thing"] for n in started["notQueued"]] == [t for t in things if t not in pending]


def test_a_count_taken_while_the_last_attempt_was_sending_is_not_final_once_that_attempt_is_cut_off(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job of 2 pages of 10, GETs that refresh one page each beyond their window, page 0 queued,
    # and page 1 with one device AWS IoT throttled through two attempts, whose other 9 devices answered
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    monkeypatch.setattr(bulk, "REFRESH_DEVICES", 10)
    things = _things("quiet", 20)
    throttled = {things[10]}
    _throttle(monkeypatch, throttled)
    clock = [record.now_ms()]
    monkeypatch.setattr(record, "now_ms", lambda: clock[0])
    job = api.post("/commands", json={"action": "ping", "things": things, "ttlMs": 3_600_000}).json["jobId"]
    first, second = sorted(invocations.events, key=lambda e: e["page"])
    invocations.deliver(first)
    for _ in range(record.MAX_ATTEMPTS - 1):
        with pytest.raises(fanout.Incomplete):
            invocations.deliver(second)
    for thing in things[11:]:
        _answer(thing, job)
    # AND the last attempt holding page 1 (until its Lambda timeout, a minute on), while two GETs
    # count the pages, the second one page 1: its throttled device NOT_SENT, as the attempt left it
    start = clock[0]
    claim = record.sent_record(record.SENDING, attempt=record.MAX_ATTEMPTS, by="fanout", until=start + 60_000)
    record.update_page(job, 1, {"sent": claim})
    for _ in range(2):
        clock[0] += 1000
        api.get(f"/commands/jobs/{job}?limit=1")
    assert json.loads(_page_record(job, 1)["tally"]["counts"]) == {"NOT_SENT": 1, "SUCCEEDED": 9}
    # WHEN that attempt queues the device after all, Lambda cuts it off at its timeout (the page
    # settles), and page 0's devices answer
    throttled.clear()
    entry = json.loads(_page_record(job, 1)["command"])
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName=things[10], shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"desired": {job: entry}}})
    )
    for thing in things[:10]:
        _answer(thing, job)
    clock[0] = start + 62_000
    view = api.get(f"/commands/jobs/{job}?limit=1").json
    # THEN the job is not complete: that device has the command and has not answered, though the
    # count kept from before the cut-off says NOT_SENT
    assert view["complete"] is False, view
    # AND the next GET counts it pending, and lists it so
    clock[0] += 1000
    view = api.get(f"/commands/jobs/{job}?offset=10&limit=1").json
    assert (view["counts"], view["complete"]) == ({"SUCCEEDED": 19, "PENDING": 1}, False)
    assert view["devices"] == [{"thing": things[10], "state": "PENDING"}]


def test_the_counts_agree_with_the_devices_listed_in_the_same_answer(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job of 2 pages of 10, GETs that refresh one page each beyond their window, and both
    # pages counted pending, page 1 last
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    monkeypatch.setattr(bulk, "REFRESH_DEVICES", 10)
    things = _things("agree", 20)
    clock = [record.now_ms()]
    monkeypatch.setattr(record, "now_ms", lambda: clock[0])
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    invocations.deliver_all()
    for _ in range(2):
        clock[0] += 1000
        api.get(f"/commands/jobs/{job}?limit=1")
    assert json.loads(_page_record(job, 1)["tally"]["counts"]) == {"PENDING": 10}
    # WHEN page 1's devices answer, and a GET lists three of them (page 0's count is the stalest)
    for thing in things[10:]:
        _answer(thing, job)
    clock[0] += 1000
    view = api.get(f"/commands/jobs/{job}?offset=10&limit=3").json
    # THEN the devices show their outcomes, and the counts hold them: page 1 is counted again
    assert [d["state"] for d in view["devices"]] == ["SUCCEEDED"] * 3
    assert (view["counts"], view["done"], view["complete"]) == ({"PENDING": 10, "SUCCEEDED": 10}, 10, False)


def test_counts_not_read_yet_say_what_the_pages_record_says(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job of 3 pages of 10 and GETs that refresh 10 devices beyond their window: page 0 queued,
    # page 1 never handed to the fan-out (Lambda refused the invoke), page 2 queued but for one
    # device AWS IoT throttled (the page waits for Lambda's retry)
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    monkeypatch.setattr(bulk, "REFRESH_DEVICES", 10)
    things = _things("assumed", 30)
    _throttle(monkeypatch, {things[20]})
    invocations.refuse = {1}
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    first, third = sorted(invocations.events, key=lambda e: e["page"])
    invocations.deliver(first)
    with pytest.raises(fanout.Incomplete):
        invocations.deliver(third)
    assert [_page_record(job, n)["sent"]["state"] for n in range(3)] == [record.QUEUED, record.RETRYING, record.RETRYING]
    # WHEN a GET counts page 0, and pages 1 and 2 from their records only
    view = api.get(f"/commands/jobs/{job}?limit=1").json
    # THEN no device is said to be SENDING, as nobody sends them: page 1's are not sent, page 2's
    # queued (outcome not read) but the throttled one
    assert view["counts"] == {"PENDING": 10, "NOT_SENT": 11, "QUEUED": 9}
    assert view["complete"] is False


def test_devices_not_sent_yet_are_not_shown_as_failed(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a job of 2 pages of 10 just accepted: page 0 taken by a live fan-out invocation that has
    # not written its devices yet, page 1's fan-out event not delivered yet
    monkeypatch.setattr(record, "PAGE_THINGS", 10)
    things = _things("yet", 20)
    job = api.post("/commands", json={"action": "ping", "things": things}).json["jobId"]
    claim = record.sent_record(record.SENDING, attempt=1, by="fanout", until=record.now_ms() + 60_000)
    record.update_page(job, 0, {"sent": claim})
    # WHEN progress is read
    view = api.get(f"/commands/jobs/{job}?limit=20").json
    # THEN every device is being sent (not NOT_SENT without a reason, which reads as a failure a
    # client stops following), and the counts say so
    assert view["devices"] == [{"thing": t, "state": "SENDING"} for t in things]
    assert (view["counts"], view["done"], view["complete"]) == ({"SENDING": 20}, 0, False)


def test_a_device_whose_first_commands_arrive_with_the_job_never_holds_more_than_ten(
    api: ApiClient, invocations: Invocations, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device that has never had a command, and single commands filling its queue to the
    # limit between the job's read of its (missing) commands shadow and the job's write
    (thing,) = _things("fresh", 1)
    real_get, filled = record.get, []

    def get(thing_name: str, shadow_name: str) -> Any:
        doc = real_get(thing_name, shadow_name)
        if thing_name == thing and shadow_name == COMMANDS_SHADOW and not filled:
            filled.append(True)
            entries = {f"single-{i}": pending_entry("ping", {}, issued_at=record.now_ms(), expires_at=record.now_ms() + 60_000)
                       for i in range(10)}  # fmt: skip
            record.update(thing, {"state": {"desired": entries}}, COMMANDS_SHADOW)
        return doc

    monkeypatch.setattr(record, "get", get)
    # WHEN a bulk command goes to it
    job = api.post("/commands", json={"action": "ping", "things": [thing]}).json["jobId"]
    # THEN the device still holds 10 pending commands, and the job records it as full
    assert filled and len(_pending(thing)) == 10 and job not in _pending(thing)
    assert record.decode_failed(_page_record(job, 0)["failed"]) == {0: "TOO_MANY_PENDING"}


@pytest.mark.parametrize("target", [JOBS_THING, f"{JOBS_THING}-3"])
def test_the_things_holding_job_records_are_no_device_to_send_to_or_write(
    api: ApiClient, invocations: Invocations, target: str
) -> None:
    # GIVEN a device next to the things that hold bulk job records
    make_device("plain-1")
    # WHEN a bulk command lists one of those things, or a caller addresses one as a device
    bulk_answer = api.post("/commands", json={"action": "ping", "things": ["plain-1", target], "id": "j-reserved"})
    patch = api.patch(f"/devices/{target}/desired", json={"state": {"x": 1}})
    single = api.post(f"/devices/{target}/commands", json={"action": "ping"})
    # THEN each is refused as a bad thing name, and no job, command or state was written
    for answer in (bulk_answer, patch, single):
        assert (answer.status, answer.json["code"]) == (400, "INVALID_THING_NAME"), answer.body
    assert _pending("plain-1") == {} and _pending(target) == {}
    assert api.get("/commands/jobs/j-reserved").status == 404
    with pytest.raises(ClientError):
        shadow(target, None)
