"""POST /commands and GET /commands/jobs/{id} against moto."""

from __future__ import annotations

import boto3

from iotbridge_api.bulk import JOBS_THING
from iotbridge_local.testclient import ApiClient
from tests.api.conftest import FakeDeviceAnswers, make_device, shadow


def test_bulk_command_reaches_every_target_and_progress_follows(api: ApiClient) -> None:
    # GIVEN three devices (moto needs the jobs registry thing to exist, as the template creates it on AWS)
    boto3.client("iot", region_name="us-east-1").create_thing(thingName=JOBS_THING)
    for thing in ("d1", "d2", "d3"):
        make_device(thing)
    # WHEN one command goes to all of them
    started = api.post("/commands", json={"action": "ping", "all": True})
    assert started.status == 202, started.body
    job = started.json["jobId"]
    assert started.json["targets"] == started.json["queued"] == 3
    # THEN each device has it pending under the job id
    assert all(job in shadow(t)["state"]["desired"] for t in ("d1", "d2", "d3"))
    assert api.get(f"/commands/jobs/{job}").json["counts"] == {"PENDING": 3}
    # AND when one device answers, progress shows it
    with FakeDeviceAnswers("d2", result={"pong": True}) as device:
        while not device.executed:
            pass
    progress = api.get(f"/commands/jobs/{job}").json
    assert progress["done"] >= 1 and progress["complete"] is False
    assert {d["thing"]: d["state"] for d in progress["devices"]}["d2"] == "SUCCEEDED"


def test_bulk_needs_targets_and_checks_names(api: ApiClient) -> None:
    assert api.post("/commands", json={"action": "ping"}).status == 422
    bad = api.post("/commands", json={"action": "ping", "things": ["ok", "bad/name"]})
    assert (bad.status, bad.json["code"]) == (400, "INVALID_THING_NAME")
    assert api.get("/commands/jobs/nope").json["code"] == "JOB_NOT_FOUND"
