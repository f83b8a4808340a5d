"""A bulk command on the whole local stack: the API invokes the fan-out function through the local
Lambda Invoke API (boto3 `lambda`, InvocationType Event), which queues each page on its devices."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from iotbridge_jobs import record
from iotbridge_local.stack import LocalStack
from tests.integration.http import call

pytestmark = pytest.mark.stack


def _commands(stack: LocalStack, thing: str) -> dict[str, Any]:
    data = stack.boto3_client("iot-data")
    try:
        return json.loads(data.get_thing_shadow(thingName=thing, shadowName="commands")["payload"].read())  # type: ignore[no-any-return]
    except data.exceptions.ResourceNotFoundException:
        return {}


def test_a_job_larger_than_a_page_reaches_every_target_through_asynchronous_invocations(stack: LocalStack) -> None:
    # GIVEN the two running devices and 580 more registered things with no device behind them (two pages)
    iot = stack.boto3_client("iot")
    idle = [f"bulk-idle-{i:03d}" for i in range(580)]
    for thing in idle:
        iot.create_thing(thingName=thing)
    targets = [*stack.things, *idle]
    api, key = stack.config.api_url, stack.config.api_key
    # WHEN one command goes to all of them
    status, headers, started = call(api, "POST", "/commands", body={"action": "ping", "things": targets}, key=key)
    # THEN the API answers 202 with the job, before the pages are queued
    assert status == 202, started
    job = started["jobId"]
    assert started["targets"] == len(targets) and headers["Location"] == f"/commands/jobs/{job}"
    assert started["notQueued"] == []
    # AND the fan-out function, run by the local Lambda service, queues every page
    assert stack.lambda_service is not None and stack.lambda_service.wait_idle(120)
    assert [o.ok for o in stack.lambda_service.outcomes] == [True] * len(record.split(targets))
    missing = [t for t in idle if job not in (_commands(stack, t).get("state", {}).get("desired") or {})]
    assert missing == []
    # AND the running devices run it; polling progress (each GET re-reads a bounded part of the
    # job) comes to show their outcomes and the others pending
    expected = {"SUCCEEDED": 2, "PENDING": 580}
    deadline = time.monotonic() + 30
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, _, view = call(api, "GET", f"/commands/jobs/{job}?limit=2", key=key)
        if view["counts"] == expected:
            break
        time.sleep(0.2)
    assert view["counts"] == expected, view
    assert [d["state"] for d in view["devices"]] == ["SUCCEEDED", "SUCCEEDED"]
    assert view["complete"] is False and view["nextOffset"] == 2


def test_a_job_id_longer_than_any_job_has_is_not_found(stack: LocalStack) -> None:
    # GIVEN the local stack, whose shadow service refuses shadow names past AWS's 64 characters
    # WHEN a 64-character job id is looked up (its record would be the shadow `job-` + id)
    status, _, body = call(stack.config.api_url, "GET", "/commands/jobs/" + "j" * 64, key=stack.config.api_key)
    # THEN 404 JOB_NOT_FOUND, not a 502 from the shadow name the data plane refused
    assert (status, body["code"]) == (404, "JOB_NOT_FOUND")


def test_concurrent_requests_with_one_job_id_and_different_bodies_make_one_job(stack: LocalStack) -> None:
    # GIVEN registered things, and pairs of callers each choosing one job id for two different commands
    iot = stack.boto3_client("iot")
    idle = [f"race-idle-{i}" for i in range(3)]
    for thing in idle:
        iot.create_thing(thingName=thing)
    api, key = stack.config.api_url, stack.config.api_key
    bodies = [{"action": "led", "params": {"state": state}, "things": idle, "ttlMs": 600_000} for state in ("on", "off")]
    for round_ in range(6):
        job = f"race-{round_}"
        barrier = threading.Barrier(2)

        def post(body: dict[str, Any], job: str = job, barrier: threading.Barrier = barrier) -> tuple[int, dict[str, Any]]:
            barrier.wait()
            status, _, answer = call(api, "POST", "/commands", body={**body, "id": job}, key=key)
            return status, answer

        # WHEN both post at the same moment
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(post, bodies))
        # THEN one gets the job and the other a conflict, and every device has the winner's command
        assert sorted(status for status, _ in answers) == [202, 409], answers
        winner = bodies[[status for status, _ in answers].index(202)]
        pending = [(_commands(stack, t).get("state", {}).get("desired") or {}).get(job) for t in idle]
        assert [entry and entry["params"] for entry in pending] == [winner["params"]] * len(idle), job
