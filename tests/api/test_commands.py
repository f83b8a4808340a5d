"""POST /devices/{thing}/commands against moto: what is sent, what is refused, what comes back."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import boto3
import pytest
from moto.iotdata.models import iotdata_backends

from iotbridge_api import dispatch, errors, iot
from iotbridge_api.models import CommandRequest
from iotbridge_contract import commands as contract
from iotbridge_contract.commands import COMMANDS_SHADOW, HISTORY, PRESENCE_SHADOW, CommandState, outcome_entry
from iotbridge_local.testclient import ApiClient
from tests.api.conftest import FakeDeviceAnswers, make_device, shadow


def _published_and_shadows() -> tuple[list[object], list[object]]:
    backend = iotdata_backends["123456789012"]["us-east-1"]
    return list(backend.published_payloads), [t for t in backend.iot_backend.things.values() if t.thing_shadows]


def test_location_keeps_the_stage_of_an_execute_api_url(aws: None) -> None:
    # GIVEN the API called as it is deployed, under https://…/Prod (API Gateway strips the stage from
    # the path the function routes on; the caller's URL keeps it)
    make_device("lamp-s")
    api = ApiClient(stage_in_url=True)
    # WHEN a command's wait runs out
    command = api.post("/devices/lamp-s/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN Location is where the caller can poll: under the stage, not at the host's root (a 403)
    assert command.headers["Location"] == f"/Prod/devices/lamp-s/commands/{command.json['id']}"
    assert api.get(command.headers["Location"].removeprefix("/Prod")).status == 200


def test_a_custom_domains_base_path_is_routed_and_kept_in_location(aws: None) -> None:
    # GIVEN the API behind a custom domain whose base path mapping is /v1: API Gateway leaves
    # /v1 at the start of `path`, and only the part after it in the {proxy+} parameter
    make_device("lamp-d")
    api = ApiClient(base_path="/v1")
    # WHEN a command is posted through it and its wait runs out
    command = api.post("/devices/lamp-d/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN it is routed as on the execute-api URL, and Location is under /v1, where the caller can poll
    assert command.status == 202, command.body
    assert command.headers["Location"] == f"/v1/devices/lamp-d/commands/{command.json['id']}"
    assert api.get(command.headers["Location"].removeprefix("/v1")).json["id"] == command.json["id"]
    # AND names are still checked after the base path, as without one: nothing is sent
    published, shadows = _published_and_shadows()
    for thing in ("a%2Fb", "v1", "%2Fv1", "%24aws"):
        bad = api.post(f"/devices/{thing}/commands", json={"action": "ping"})
        plain = ApiClient().post(f"/devices/{thing}/commands", json={"action": "ping"})
        assert (bad.status, bad.json["code"]) == (plain.status, plain.json["code"]), bad.body
        assert bad.status in (400, 404)
    assert _published_and_shadows() == (published, shadows)


def test_command_is_queued_in_the_devices_commands_shadow(api: ApiClient) -> None:
    # GIVEN a connected device that advertises `led`
    make_device("lamp-1")
    # WHEN a command is posted and the device does not answer within the wait
    response = api.post("/devices/lamp-1/commands", json={"action": "led", "params": {"state": "on"}, "timeoutMs": 50})
    # THEN the caller gets 202 with the id, SENT, and where to look later
    assert response.status == 202
    body = response.json
    assert body["state"] == "SENT" and body["action"] == "led"
    assert response.headers["Location"] == f"/devices/lamp-1/commands/{body['id']}"
    # AND the command is pending in exactly that device's commands shadow, with a TTL
    pending = shadow("lamp-1")["state"]["desired"][body["id"]]
    assert pending["action"] == "led" and pending["params"] == {"state": "on"}
    assert pending["expiresAt"] - pending["issuedAt"] == 60_000


def test_ids_the_api_makes_are_short_random_and_valid_where_a_caller_id_is(api: ApiClient) -> None:
    # GIVEN a device, and commands posted without an id
    make_device("lamp-ids")
    ids = [api.post("/devices/lamp-ids/commands", json={"action": "ping", "timeoutMs": 0}).json["id"] for _ in range(5)]
    # THEN each has its own 26-character base32 id (128 random bits; a device holds every id it
    # has pending or reported, so not 32 hex digits), pending under that id
    assert len(set(ids)) == 5
    assert all(re.fullmatch(r"[a-z2-7]{26}", cid) for cid in ids), ids
    assert set(shadow("lamp-ids")["state"]["desired"]) == set(ids)
    # AND each is an id a caller could have chosen: a retry with it is the same command, not a second
    retry = api.post("/devices/lamp-ids/commands", json={"action": "ping", "id": ids[0], "timeoutMs": 0})
    assert (retry.status, retry.json["id"]) == (202, ids[0])
    assert set(shadow("lamp-ids")["state"]["desired"]) == set(ids)


def test_answer_from_the_device_is_returned_with_200(api: ApiClient) -> None:
    # GIVEN a device that answers its commands
    make_device("lamp-2")
    with FakeDeviceAnswers("lamp-2", result={"pong": True}):
        # WHEN a command is posted with time to wait
        response = api.post("/devices/lamp-2/commands", json={"action": "ping", "timeoutMs": 5000})
    # THEN the device's outcome comes back
    assert response.status == 200, response.body
    assert response.json["state"] == "SUCCEEDED" and response.json["result"] == {"pong": True}
    assert response.json["latencyMs"] > 0
    # AND what was sent with it, not the nulls of an outcome that keeps no params nor times
    assert response.json["params"] == {}
    assert 0 < response.json["issuedAt"] < response.json["expiresAt"]


def test_retry_with_the_same_id_does_not_run_twice_and_gets_the_same_outcome(api: ApiClient) -> None:
    # GIVEN a device that records what it executes
    make_device("lamp-3")
    body = {"action": "ping", "id": "retry-1", "timeoutMs": 5000}
    with FakeDeviceAnswers("lamp-3", result={"n": 1}) as device:
        # WHEN the same command is posted twice
        first = api.post("/devices/lamp-3/commands", json=body)
        second = api.post("/devices/lamp-3/commands", json=body)
    # THEN it ran once and both callers see the same outcome
    assert device.executed == ["retry-1"]
    assert first.status == second.status == 200
    assert first.json["result"] == second.json["result"] == {"n": 1}


def test_a_retry_that_waits_for_a_pending_command_gets_what_was_sent_with_its_outcome(api: ApiClient) -> None:
    # GIVEN a command whose first POST answered 202 (the device had not answered yet)
    make_device("lamp-3b")
    body = {"action": "led", "params": {"state": "on"}, "id": "retry-2"}
    first = api.post("/devices/lamp-3b/commands", json={**body, "timeoutMs": 0})
    assert first.status == 202
    # WHEN the caller retries it with its id and waits, and the device answers
    with FakeDeviceAnswers("lamp-3b", result={"led": "on"}):
        retry = api.post("/devices/lamp-3b/commands", json={**body, "timeoutMs": 5000})
    # THEN the 200 carries the outcome and what the 202 said was sent
    assert retry.status == 200 and retry.json["result"] == {"led": "on"}, retry.json
    assert (retry.json["params"], retry.json["issuedAt"], retry.json["expiresAt"]) == (
        first.json["params"], first.json["issuedAt"], first.json["expiresAt"])


def test_same_id_with_other_params_is_a_conflict(api: ApiClient) -> None:
    make_device("lamp-4")
    api.post("/devices/lamp-4/commands", json={"action": "led", "params": {"state": "on"}, "id": "x1", "timeoutMs": 0})
    response = api.post(
        "/devices/lamp-4/commands", json={"action": "led", "params": {"state": "off"}, "id": "x1", "timeoutMs": 0}
    )
    assert response.status == 409 and response.json["code"] == "ID_CONFLICT"


@pytest.mark.parametrize(
    "thing", ["a/b", "a+", "a%2B", "a%23", "$aws", "%24aws", "a%2Fb", "a%00b", "%C3%A9", "x" * 129, "a%20b", "..", "a%2F%2B%23"]
)
def test_bad_thing_names_get_400_and_nothing_is_sent(api: ApiClient, thing: str) -> None:
    # GIVEN a real device exists next to the hostile name
    make_device("victim")
    published, shadows = _published_and_shadows()
    # WHEN a command addresses a name with topic wildcards, separators or other bad characters
    response = api.post(f"/devices/{thing}/commands", json={"action": "led", "params": {"state": "on"}})
    # THEN it is refused as a bad name (or no route at all for a literal slash), and nothing changed in AWS IoT
    assert response.status in (400, 404, 405)
    assert response.json["code"] in ("INVALID_THING_NAME", "NOT_FOUND", "METHOD_NOT_ALLOWED")
    assert _published_and_shadows() == (published, shadows)
    assert "commands" not in [s for t in shadows for s in t.thing_shadows]  # type: ignore[attr-defined]


def test_unknown_action_is_refused_with_the_known_ones(api: ApiClient) -> None:
    make_device("lamp-5")
    response = api.post("/devices/lamp-5/commands", json={"action": "explode"})
    assert response.status == 400
    assert response.json["code"] == "UNKNOWN_ACTION"
    assert response.json["details"]["known"] == ["led", "ping", "set_interval"]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"state": "blue"}, "must be one of"), ({}, "required"), ({"state": "on", "x": 1}, "unknown parameter")],
)
def test_params_are_checked_against_the_advertised_spec(api: ApiClient, params: dict[str, object], fragment: str) -> None:
    make_device("lamp-6")
    response = api.post("/devices/lamp-6/commands", json={"action": "led", "params": params})
    assert response.status == 400 and response.json["code"] == "INVALID_PARAMS"
    assert fragment in response.json["message"]


def test_a_boolean_is_not_an_integer(api: ApiClient) -> None:
    make_device("lamp-7")
    strict_body = api.post("/devices/lamp-7/commands", json={"action": "ping", "timeoutMs": True})
    strict_param = api.post("/devices/lamp-7/commands", json={"action": "set_interval", "params": {"seconds": True}})
    assert strict_body.status == 422 and strict_body.json["code"] == "VALIDATION_ERROR"
    assert strict_param.status == 400 and strict_param.json["code"] == "INVALID_PARAMS"


def test_offline_device_fails_fast_when_asked(api: ApiClient) -> None:
    make_device("lamp-8", connected=False)
    response = api.post("/devices/lamp-8/commands", json={"action": "ping", "ifOffline": "fail"})
    assert response.status == 409
    assert response.json["code"] == "DEVICE_OFFLINE" and response.json["details"]["thing"] == "lamp-8"


def test_offline_device_gets_the_command_queued_by_default(api: ApiClient) -> None:
    make_device("lamp-9", connected=False)
    response = api.post("/devices/lamp-9/commands", json={"action": "ping", "timeoutMs": 0})
    assert response.status == 202 and response.json["state"] == "QUEUED"


def test_unknown_device_is_404(api: ApiClient) -> None:
    response = api.post("/devices/nobody/commands", json={"action": "ping"})
    assert response.status == 404 and response.json["code"] == "DEVICE_NOT_FOUND"


def test_later_lookup_shows_the_outcome(api: ApiClient) -> None:
    make_device("lamp-10")
    queued = api.post("/devices/lamp-10/commands", json={"action": "ping", "timeoutMs": 0}).json
    assert api.get(f"/devices/lamp-10/commands/{queued['id']}").json["state"] == "SENT"
    with FakeDeviceAnswers("lamp-10", result={"pong": True}):
        waited = api.post("/devices/lamp-10/commands", json={"action": "ping", "id": queued["id"], "timeoutMs": 5000})
    assert waited.status == 200
    later = api.get(f"/devices/lamp-10/commands/{queued['id']}")
    assert later.status == 200 and later.json["state"] == "SUCCEEDED"
    history = api.get("/devices/lamp-10/commands").json["commands"]
    assert [c["id"] for c in history] == [queued["id"]]


def test_too_many_pending_commands_are_refused(api: ApiClient) -> None:
    make_device("lamp-11", connected=False)
    for _ in range(10):
        assert api.post("/devices/lamp-11/commands", json={"action": "ping", "timeoutMs": 0}).status == 202
    response = api.post("/devices/lamp-11/commands", json={"action": "ping", "timeoutMs": 0})
    assert response.status == 429 and response.json["code"] == "TOO_MANY_PENDING"


def test_same_id_with_other_params_after_it_finished_is_a_conflict(api: ApiClient) -> None:
    # GIVEN a command that finished, its outcome recording a digest of its params (as the Pi agent writes it)
    make_device("lamp-12")
    with FakeDeviceAnswers("lamp-12", result={"led": "on"}):
        done = api.post("/devices/lamp-12/commands", json={"action": "led", "params": {"state": "on"}, "id": "p1"})
    assert done.status == 200
    # WHEN the id is reused with other params, or retried with the same ones
    other = api.post("/devices/lamp-12/commands", json={"action": "led", "params": {"state": "off"}, "id": "p1"})
    same = api.post("/devices/lamp-12/commands", json={"action": "led", "params": {"state": "on"}, "id": "p1"})
    # THEN the first is a conflict, the second gets the same outcome
    assert (other.status, other.json["code"]) == (409, "ID_CONFLICT")
    assert same.status == 200 and same.json["result"] == {"led": "on"}


def test_a_retry_of_a_finished_command_gets_its_outcome_even_if_the_device_went_offline(api: ApiClient) -> None:
    # GIVEN a command that succeeded while its device was online, with ifOffline=fail
    make_device("lamp-11")
    body = {"action": "ping", "id": "once-11", "ifOffline": "fail", "timeoutMs": 5000}
    with FakeDeviceAnswers("lamp-11", result={"pong": True}) as device:
        first = api.post("/devices/lamp-11/commands", json=body)
    assert first.status == 200
    # WHEN the device goes offline and stops advertising the action, and the caller retries (its answer was lost)
    data = boto3.client("iot-data", region_name="us-east-1")
    data.update_thing_shadow(thingName="lamp-11", payload=b'{"state": {"reported": {"actions": null}}}')
    offline = b'{"state": {"reported": {"connected": false}}}'
    data.update_thing_shadow(thingName="lamp-11", shadowName=PRESENCE_SHADOW, payload=offline)
    retry = api.post("/devices/lamp-11/commands", json=body)
    # THEN the retry gets the same outcome, not "offline" or "unknown action", and nothing ran again
    assert retry.status == 200, retry.json
    assert (retry.json["state"], retry.json["result"]) == ("SUCCEEDED", {"pong": True})
    assert device.executed == ["once-11"]


def _assert_only_pending(api: ApiClient, thing: str, pending: str, *, ended: list[str], as_state: str) -> None:
    """`pending` is the one command left in `thing`'s queue, and the `ended` ones are recorded and listed `as_state`."""
    state = shadow(thing)["state"]
    assert set(state["desired"]) == {pending}
    assert {state["reported"][cid]["state"] for cid in ended} == {as_state}
    listed = {c["id"]: c["state"] for c in api.get(f"/devices/{thing}/commands").json["commands"]}
    assert listed == {**dict.fromkeys(ended, as_state), pending: "QUEUED"}


def test_commands_left_for_a_device_that_never_came_back_expire_and_free_its_queue(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an offline device whose queue is full of commands with a one-second TTL
    make_device("lamp-12", connected=False)
    stale = [api.post("/devices/lamp-12/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
             for _ in range(10)]  # fmt: skip
    # WHEN an hour has passed and another command is posted
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)
    fresh = api.post("/devices/lamp-12/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN it is queued: the expired ones no longer hold the queue
    assert (fresh.status, fresh.json["state"]) == (202, "QUEUED"), fresh.json
    # AND they are recorded EXPIRED (so the device never takes them), and listed as such
    _assert_only_pending(api, "lamp-12", fresh.json["id"], ended=stale, as_state="EXPIRED")


def test_the_list_shows_a_long_expired_pending_command_as_expired(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a command queued with a one-second TTL for an offline device
    make_device("lamp-13", connected=False)
    cid = api.post("/devices/lamp-13/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
    # WHEN the list is read an hour later, and the command is retried
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)
    listed = api.get("/devices/lamp-13/commands").json["commands"]
    retry = api.post("/devices/lamp-13/commands", json={"action": "ping", "id": cid, "timeoutMs": 0})
    # THEN both say EXPIRED, as a GET of the command does
    assert [(c["id"], c["state"]) for c in listed] == [(cid, "EXPIRED")]
    assert (retry.status, retry.json["state"]) == (200, "EXPIRED")
    assert api.get(f"/devices/lamp-13/commands/{cid}").json["state"] == "EXPIRED"


def _set_presence(thing: str, *, connected: bool, at: int) -> None:
    presence = {"state": {"reported": {"connected": connected, "at": at, "clientId": thing}}}
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName=thing, shadowName=PRESENCE_SHADOW, payload=json.dumps(presence))


@pytest.mark.parametrize("since", ["connected now", "disconnected after it was issued"])
def test_a_command_a_device_may_have_started_is_not_given_up_while_it_is_away(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch, since: str
) -> None:
    # GIVEN a one-second command sent to a connected device, which may have started it and then lost its connection
    make_device("lamp-away")
    cid = api.post("/devices/lamp-away/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
    issued = shadow("lamp-away")["state"]["desired"][cid]["issuedAt"]
    if since != "connected now":
        _set_presence("lamp-away", connected=False, at=issued + 500)
    # WHEN it is read an hour later, listed, and a new command is queued behind it
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)
    read = api.get(f"/devices/lamp-away/commands/{cid}")
    listed = {c["id"]: c["state"] for c in api.get("/devices/lamp-away/commands").json["commands"]}
    api.post("/devices/lamp-away/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN it is not recorded EXPIRED ("nothing ran") but still pending: the device reports it when back
    assert read.json["state"] in ("SENT", "QUEUED") and listed[cid] in ("SENT", "QUEUED")
    assert cid in shadow("lamp-away")["state"]["desired"] and cid not in shadow("lamp-away")["state"].get("reported", {})
    # WHEN the device is back and reports that it ran it
    done = outcome_entry(CommandState.SUCCEEDED, "ping", done_at=issued + 200, result={"pong": True})
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-away", shadowName=COMMANDS_SHADOW,
        payload=json.dumps({"state": {"desired": {cid: None}, "reported": {cid: done}}}))
    # THEN its outcome is the one answered, and no other was ever given
    assert api.get(f"/devices/lamp-away/commands/{cid}").json["state"] == "SUCCEEDED"


def test_commands_a_device_that_died_may_have_started_end_unknown_and_free_its_queue(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device that had ten one-second commands sent to it, then died without answering any
    make_device("lamp-dead")
    sent = [api.post("/devices/lamp-dead/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
            for _ in range(10)]  # fmt: skip
    issued = max(e["issuedAt"] for e in shadow("lamp-dead")["state"]["desired"].values())
    _set_presence("lamp-dead", connected=False, at=issued + 500)
    # WHEN, past the time the API waits for their answer, one is read and another command is posted
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + contract.EXPIRY_GRACE_MS + contract.GIVE_UP_MS + 5000)
    read = api.get(f"/devices/lamp-dead/commands/{sent[0]}")
    fresh = api.post("/devices/lamp-dead/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN the read says UNKNOWN, and why, not EXPIRED ("nothing ran") nor pending for ever
    assert read.json["state"] == "UNKNOWN" and "may have run it" in read.json["error"], read.json
    # AND the new command is queued: the dead device's commands no longer hold its queue
    assert (fresh.status, fresh.json["state"]) == (202, "QUEUED"), fresh.json
    _assert_only_pending(api, "lamp-dead", fresh.json["id"], ended=sent, as_state="UNKNOWN")
    # AND a retry of one gets UNKNOWN, and does not queue it again; with other params, it is a conflict
    retry = api.post("/devices/lamp-dead/commands", json={"action": "ping", "id": sent[1], "timeoutMs": 0})
    assert (retry.status, retry.json["state"]) == (200, "UNKNOWN")
    assert sent[1] not in shadow("lamp-dead")["state"]["desired"]
    other = api.post("/devices/lamp-dead/commands", json={"action": "ping", "id": sent[1], "params": {"n": 1}})
    assert (other.status, other.json["code"]) == (409, "ID_CONFLICT"), other.json
    # WHEN the device comes back after all and reports that it ran one
    done = outcome_entry(CommandState.SUCCEEDED, "ping", done_at=issued + 200, result={"pong": True})
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-dead", shadowName=COMMANDS_SHADOW,
        payload=json.dumps({"state": {"desired": {sent[2]: None}, "reported": {sent[2]: done}}}))
    # THEN its word replaces UNKNOWN, and nothing of UNKNOWN's is left on it
    after = api.get(f"/devices/lamp-dead/commands/{sent[2]}").json
    assert (after["state"], after["result"], after.get("error")) == ("SUCCEEDED", {"pong": True}, None), after


def test_a_command_a_connected_device_never_answers_ends_unknown(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a one-second command sent to a device that stays connected and never answers it
    make_device("lamp-mute")
    cid = api.post("/devices/lamp-mute/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
    # WHEN it is read just before and just after the API gives up waiting for its answer
    expires = shadow("lamp-mute")["state"]["desired"][cid]["expiresAt"]
    give_up = expires + contract.EXPIRY_GRACE_MS + contract.GIVE_UP_MS
    monkeypatch.setattr(dispatch, "now_ms", lambda: give_up - 1000)
    before = api.get(f"/devices/lamp-mute/commands/{cid}").json["state"]
    monkeypatch.setattr(dispatch, "now_ms", lambda: give_up + 1000)
    after = api.get(f"/devices/lamp-mute/commands/{cid}").json["state"]
    # THEN it is SENT until then, and UNKNOWN after
    assert (before, after) == ("SENT", "UNKNOWN")


def test_a_command_a_device_connected_since_it_expired_did_not_answer_is_given_up(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-second command, and its device connected again after it expired: on that
    # connection it read its queue and answered whatever it had started, but not this
    make_device("lamp-back")
    cid = api.post("/devices/lamp-back/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
    expires = shadow("lamp-back")["state"]["desired"][cid]["expiresAt"]
    _set_presence("lamp-back", connected=True, at=expires + 1000)
    # WHEN it is read an hour later THEN it is EXPIRED: the device never took it
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)
    assert api.get(f"/devices/lamp-back/commands/{cid}").json["state"] == "EXPIRED"


def test_a_retry_of_a_long_expired_command_is_answered_though_presence_cannot_be_read(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-second command for an offline device, and an hour later AWS IoT throttling presence reads
    make_device("lamp-thr2", connected=False)
    cid = api.post("/devices/lamp-thr2/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
    real_now, real_get = dispatch.now_ms, iot.get_shadow
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)

    def get(thing: str, shadow_name: str | None = None) -> Any:
        if shadow_name == PRESENCE_SHADOW:
            raise errors.Throttled("AWS IoT is throttling requests for this device; retry later")
        return real_get(thing, shadow_name)

    monkeypatch.setattr(iot, "get_shadow", get)
    # WHEN the caller retries it with its id
    retry = api.post("/devices/lamp-thr2/commands", json={"action": "ping", "id": cid, "timeoutMs": 0})
    # THEN it is answered with the command (still pending: whether it can be given up is not known
    # yet), never with an error that says nothing was queued
    assert retry.status in (200, 202) and retry.json["id"] == cid, retry.body


def test_no_command_id_can_be_the_key_that_opens_a_devices_queue() -> None:
    from iotbridge_contract import names

    (key,) = contract.QUEUE_OPENED["state"]["reported"]
    with pytest.raises(names.InvalidName):
        names.command_id(key)


def test_a_command_for_a_device_away_since_before_it_was_issued_is_given_up(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a one-second command queued for a device offline since before it was issued
    make_device("lamp-gone", connected=False)
    cid = api.post("/devices/lamp-gone/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
    # WHEN it is read an hour later THEN it is EXPIRED, recorded so (no device can have started it)
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)
    assert api.get(f"/devices/lamp-gone/commands/{cid}").json["state"] == "EXPIRED"
    assert shadow("lamp-gone")["state"]["reported"][cid]["state"] == "EXPIRED"


@pytest.mark.parametrize(("spec", "value"), [("int:a..b", 3), ("str:many", "x"), (5, 3)])
def test_a_device_advertising_a_malformed_spec_gets_a_clear_refusal(api: ApiClient, spec: object, value: object) -> None:
    # GIVEN a device whose advertised spec for a parameter is broken
    make_device("lamp-14", actions={"dim": {"level": spec}})
    # WHEN a command for that action is posted
    response = api.post("/devices/lamp-14/commands", json={"action": "dim", "params": {"level": value}, "timeoutMs": 0})
    # THEN it is refused with a stable code that says the device's spec is at fault
    assert (response.status, response.json["code"]) == (400, "INVALID_PARAMS"), response.json
    assert "the device advertises" in response.json["message"]


def test_a_malformed_spec_for_a_parameter_the_caller_left_out_is_refused_too(api: ApiClient) -> None:
    make_device("lamp-14b", actions={"reboot": {"delayMs": 5}})
    response = api.post("/devices/lamp-14b/commands", json={"action": "reboot", "timeoutMs": 0})
    assert (response.status, response.json["code"]) == (400, "INVALID_PARAMS"), response.json


def test_entries_that_are_no_command_do_not_block_the_queue(api: ApiClient) -> None:
    # GIVEN a device whose commands shadow was filled around the API with entries that are no command
    make_device("lamp-15")
    junk = {f"junk{i}": "led on please" for i in range(10)}
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-15", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"desired": junk}})
    )
    # WHEN a command is posted
    response = api.post("/devices/lamp-15/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN it is queued, and the junk is gone (no device would ever run or answer it)
    assert (response.status, response.json["state"]) == (202, "SENT"), response.json
    assert set(shadow("lamp-15")["state"]["desired"]) == {response.json["id"]}


def test_a_wait_that_meets_another_commands_outcome_under_its_id_is_a_conflict(api: ApiClient) -> None:
    # GIVEN an outcome under id "x1" of `led off` (a second first-command with the same id won the race)
    make_device("lamp-16")
    outcome = outcome_entry(CommandState.SUCCEEDED, "led", done_at=1, params={"state": "off"})
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-16", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"reported": {"x1": outcome}}})
    )
    # WHEN the caller of `led on` with that id waits for its outcome
    request = CommandRequest(action="led", params={"state": "on"}, id="x1")
    # THEN it is told the id belongs to another command, not handed that command's outcome
    with pytest.raises(errors.IdConflict):
        dispatch.wait_for_outcome("lamp-16", "x1", deadline=time.monotonic() + 1, request=request)


def test_a_wait_whose_pending_entry_was_replaced_by_another_command_is_a_conflict(api: ApiClient) -> None:
    # GIVEN `led off` pending under id "x2" (a second first-command with the same id wrote after ours)
    make_device("lamp-16b")
    entry = contract.pending_entry("led", {"state": "off"}, issued_at=dispatch.now_ms(), expires_at=dispatch.now_ms() + 60_000)
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-16b", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"desired": {"x2": entry}}})
    )
    # WHEN the caller of `led on` with that id waits, and the device has not answered yet
    request = CommandRequest(action="led", params={"state": "on"}, id="x2")
    # THEN it is told the id belongs to another command, not that its own is on its way
    with pytest.raises(errors.IdConflict):
        dispatch.wait_for_outcome("lamp-16b", "x2", deadline=time.monotonic() + 0.5, request=request)


def test_a_command_queued_before_its_wait_is_throttled_is_answered_202_with_its_id(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device that has had commands (its commands shadow exists), and AWS IoT throttling
    # every read of that shadow once the command is written
    make_device("lamp-thr")
    iot.update_shadow("lamp-thr", contract.QUEUE_OPENED, COMMANDS_SHADOW)
    real_get, reads = iot.get_shadow, [0]

    def throttled_after_the_first(thing: str, shadow_name: str | None = None) -> Any:
        if shadow_name == COMMANDS_SHADOW:
            reads[0] += 1
            if reads[0] > 1:
                raise errors.Throttled("AWS IoT is throttling requests for this device; retry later")
        return real_get(thing, shadow_name)

    monkeypatch.setattr(iot, "get_shadow", throttled_after_the_first)
    # WHEN a command is posted
    response = api.post("/devices/lamp-thr/commands", json={"action": "ping", "timeoutMs": 500})
    # THEN it is answered 202 with its id and where to follow it, not 429: it is queued and will run,
    # and a caller told to retry without an id would run it twice
    pending = shadow("lamp-thr")["state"]["desired"]
    assert (response.status, response.json["state"], list(pending)) == (202, "SENT", [response.json["id"]])
    assert response.headers["Location"].endswith(f"/commands/{response.json['id']}")
    assert response.json["expiresAt"] == pending[response.json["id"]]["expiresAt"]


def test_a_write_that_timed_out_names_the_id_and_its_retry_does_not_run_the_command_twice(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device that has had commands (its commands shadow exists), and AWS IoT that applies
    # the write queueing a command, but whose answer never arrives
    make_device("lamp-to")
    iot.update_shadow("lamp-to", contract.QUEUE_OPENED, COMMANDS_SHADOW)
    real_update = iot.update_shadow

    def lands_then_times_out(thing: str, document: dict[str, Any], shadow_name: str | None = None) -> Any:
        real_update(thing, document, shadow_name)
        raise errors.UpstreamError("AWS IoT is unreachable (ReadTimeoutError)")

    monkeypatch.setattr(iot, "update_shadow", lands_then_times_out)
    # WHEN a command is posted without an id
    failed = api.post("/devices/lamp-to/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN the error says which id the command may be queued under
    assert (failed.status, failed.json["code"]) == (502, "UPSTREAM_ERROR")
    cid = failed.json["details"]["id"]
    assert cid in failed.json["message"] and list(shadow("lamp-to")["state"]["desired"]) == [cid]
    # WHEN the caller retries with that id, AWS IoT answering again
    monkeypatch.setattr(iot, "update_shadow", real_update)
    retry = api.post("/devices/lamp-to/commands", json={"action": "ping", "id": cid, "timeoutMs": 0})
    # THEN it joins the queued command: the device has it once
    assert (retry.status, retry.json["id"]) == (202, cid)
    assert list(shadow("lamp-to")["state"]["desired"]) == [cid]


def test_a_read_whose_connection_broke_is_tried_again_before_the_caller_sees_an_error(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a device, and a connection to AWS IoT that breaks on the first shadow read
    make_device("lamp-rst")
    real = iot._client("iot-data")
    broke = [0]

    class Flaky:
        def get_thing_shadow(self, **kwargs: Any) -> Any:
            if not broke[0]:
                broke[0] += 1
                raise ConnectionResetError(104, "Connection reset by peer")
            return real.get_thing_shadow(**kwargs)

        def update_thing_shadow(self, **kwargs: Any) -> Any:
            return real.update_thing_shadow(**kwargs)

    monkeypatch.setitem(iot._clients, "iot-data", Flaky())
    # WHEN a command is posted
    response = api.post("/devices/lamp-rst/commands", json={"action": "ping", "timeoutMs": 0})
    # THEN it is queued, not refused with a 502: the read was made again
    assert (response.status, response.json["state"]) == (202, "SENT"), response.body
    assert broke[0] == 1 and list(shadow("lamp-rst")["state"]["desired"]) == [response.json["id"]]


def test_a_chosen_id_over_an_entry_that_is_no_command_is_queued(api: ApiClient) -> None:
    # GIVEN a commands shadow whose desired.c1 was written around the API and is no command
    make_device("lamp-junk")
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-junk", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"desired": {"c1": "garbage"}}})
    )
    # WHEN a command is posted with the id c1
    response = api.post("/devices/lamp-junk/commands", json={"action": "ping", "id": "c1", "timeoutMs": 0})
    # THEN the command takes its place (it was not written and removed in one update)
    assert (response.status, response.json["state"]) == (202, "SENT"), response.body
    assert shadow("lamp-junk")["state"]["desired"]["c1"]["action"] == "ping"


def test_a_retry_whose_params_differ_only_as_json_is_a_conflict_while_pending(api: ApiClient) -> None:
    # GIVEN a command pending with {"on": true}
    make_device("lamp-eq", actions={"relay": {"on": "bool"}, "dim": {"level": "int"}})
    first = api.post("/devices/lamp-eq/commands", json={"action": "relay", "params": {"on": True}, "id": "r1", "timeoutMs": 0})
    assert first.status == 202
    # WHEN it is retried with {"on": 1}, which Python calls equal
    retry = api.post("/devices/lamp-eq/commands", json={"action": "relay", "params": {"on": 1}, "id": "r1", "timeoutMs": 0})
    # THEN it is a conflict, as it is once the command is done (outcomes compare params as JSON)
    assert (retry.status, retry.json["code"]) == (409, "ID_CONFLICT")


def test_timestamps_a_device_wrote_wrong_do_not_break_reads(api: ApiClient) -> None:
    # GIVEN a commands shadow with a pending expiresAt and an outcome doneAt that are no numbers
    make_device("lamp-ts")
    doc = {"desired": {"p1": {"action": "ping", "params": {}, "issuedAt": 1, "expiresAt": "soon"}},
           "reported": {"d1": {"state": "SUCCEEDED", "action": "ping", "doneAt": "yesterday"}}}  # fmt: skip
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-ts", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": doc})
    )
    # WHEN the command and the list are read THEN they are answered, the bad timestamps left out
    one = api.get("/devices/lamp-ts/commands/p1")
    assert (one.status, one.json["state"], one.json.get("expiresAt")) == (200, "SENT", None)
    listed = api.get("/devices/lamp-ts/commands")
    assert listed.status == 200 and {c["id"] for c in listed.json["commands"]} == {"p1", "d1"}


def test_expiring_abandoned_commands_keeps_the_history_at_its_size(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an offline device with a full history of outcomes, and a queue full of one-second commands
    make_device("lamp-17", connected=False)
    history = {f"old{i:02d}": outcome_entry(CommandState.SUCCEEDED, "ping", done_at=1000 + i) for i in range(HISTORY)}
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-17", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"reported": history}})
    )
    stale = [api.post("/devices/lamp-17/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
             for _ in range(10)]  # fmt: skip
    # WHEN an hour later another command is posted, and the stale ones are recorded EXPIRED
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)
    assert api.post("/devices/lamp-17/commands", json={"action": "ping", "timeoutMs": 0}).status == 202
    # THEN the history keeps its size: the ten EXPIRED and the six newest of the old outcomes
    reported = shadow("lamp-17")["state"]["reported"]
    assert set(reported) == set(stale) | {f"old{i:02d}" for i in range(10, HISTORY)}


def test_reading_an_abandoned_command_records_it_expired_within_the_history_and_a_failed_write_still_answers(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an offline device with a full history, and two one-second commands queued for it
    make_device("lamp-18", connected=False)
    history = {f"old{i:02d}": outcome_entry(CommandState.SUCCEEDED, "ping", done_at=1000 + i) for i in range(HISTORY)}
    boto3.client("iot-data", region_name="us-east-1").update_thing_shadow(
        thingName="lamp-18", shadowName=COMMANDS_SHADOW, payload=json.dumps({"state": {"reported": history}})
    )
    first, second = (api.post("/devices/lamp-18/commands", json={"action": "ping", "ttlMs": 1000, "timeoutMs": 0}).json["id"]
                     for _ in range(2))  # fmt: skip
    real_now = dispatch.now_ms
    monkeypatch.setattr(dispatch, "now_ms", lambda: real_now() + 3_600_000)
    # WHEN an hour later the first is read
    read = api.get(f"/devices/lamp-18/commands/{first}")
    # THEN it is EXPIRED, and recorded so within the history's size (the oldest outcome went)
    assert (read.status, read.json["state"]) == (200, "EXPIRED")
    reported = shadow("lamp-18")["state"]["reported"]
    assert len(reported) == HISTORY and first in reported and "old00" not in reported
    # WHEN the second is read while AWS IoT throttles the write that would record it
    def throttled(*args: Any, **kwargs: Any) -> None:
        raise errors.Throttled("slow down")

    monkeypatch.setattr(iot, "update_shadow", throttled)
    later = api.get(f"/devices/lamp-18/commands/{second}")
    # THEN the read still answers what is true (EXPIRED), not the write's 429
    assert (later.status, later.json["state"]) == (200, "EXPIRED")


def test_the_wait_counts_api_gateways_29_s_from_the_requests_arrival(api: ApiClient) -> None:
    # GIVEN a device that never answers, and a request that reached API Gateway 20 s ago
    #   (a cold start, a throttled invoke): the function starts with 9 of the gateway's 29 s left
    from iotbridge_api.handler import lambda_handler
    from iotbridge_local.apigw.event import LambdaContext, build_event

    make_device("lamp-late")
    body = json.dumps({"action": "ping", "timeoutMs": 29_000}).encode()
    event = build_event("POST", "/devices/lamp-late/commands", body=body, api_key="test",
                        headers={"Content-Type": "application/json"})  # fmt: skip
    event["requestContext"]["requestTimeEpoch"] = int(time.time() * 1000) - 20_000
    # WHEN the function runs with a Lambda timeout longer than the gateway's
    started = time.monotonic()
    result = lambda_handler(event, LambdaContext(timeout_s=60))
    # THEN it answers 202 before the gateway gives up (~7 s: 29 - 20 - its 2 s margin), not after 27 s
    assert result["statusCode"] == 202
    assert time.monotonic() - started < 15


def _first_commands_at_once(api: ApiClient, monkeypatch: pytest.MonkeyPatch, thing: str,
                            bodies: list[dict[str, Any]]) -> list[Any]:  # fmt: skip
    """POST the bodies to `thing` at once, every request reading the device (before any writes) together,
    as separate Lambda environments can."""
    import threading

    barrier = threading.Barrier(len(bodies), timeout=10)
    load = dispatch.load_device

    def together(*args: Any, **kwargs: Any) -> Any:
        device = load(*args, **kwargs)
        barrier.wait()
        return device

    monkeypatch.setattr(dispatch, "load_device", together)
    answers: list[Any] = [None] * len(bodies)

    def post(i: int) -> None:
        answers[i] = api.post(f"/devices/{thing}/commands", json=bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    monkeypatch.undo()
    return answers


def test_first_commands_at_once_to_a_new_device_stay_within_the_pending_limit(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an offline device that has never had a command (no commands shadow yet)
    make_device("fresh-1", connected=False)
    # WHEN 14 commands are posted to it at once
    bodies = [{"action": "ping", "id": f"c{i}", "timeoutMs": 0} for i in range(14)]
    answers = _first_commands_at_once(api, monkeypatch, "fresh-1", bodies)
    # THEN at most 10 are queued, exactly those answered 202, and the rest are told to retry later
    queued = {a.json["id"] for a in answers if a.status == 202}
    assert set(shadow("fresh-1")["state"]["desired"]) == queued and len(queued) <= contract.MAX_PENDING
    assert all(a.status == 429 for a in answers if a.status != 202), [a.body for a in answers]


def test_two_first_commands_with_one_id_and_other_params_never_merge(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN an offline device that has never had a command, with an action taking two optional params
    make_device("fresh-2", connected=False, actions={"configure": {"a": "int?", "b": "int?"}})
    # WHEN two callers post one id at once with other params
    bodies = [{"action": "configure", "params": {"a": 1}, "id": "x", "timeoutMs": 0},
              {"action": "configure", "params": {"b": 2}, "id": "x", "timeoutMs": 0}]  # fmt: skip
    answers = _first_commands_at_once(api, monkeypatch, "fresh-2", bodies)
    # THEN one is queued exactly as its caller sent it, and the other is refused as a conflict
    assert sorted(a.status for a in answers) == [202, 409], [a.body for a in answers]
    winner = next(b for a, b in zip(answers, bodies, strict=True) if a.status == 202)
    assert shadow("fresh-2")["state"]["desired"]["x"]["params"] == winner["params"]
