"""The sample events, with the environment template.yaml gives the functions, drive the real handlers.

This is what `sam local invoke -e events/…` would do in Docker: here the handlers run
in a fresh Python process against moto's AWS IoT, with the deployed environment
variables (except the IoT endpoint, which moto replaces).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.template import cfn


@pytest.fixture(scope="module")
def answers(repo: Path, template: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    origin = json.loads((repo / "events" / "get-health.json").read_text())["headers"]["origin"]
    # The environment of both functions as deployed, with the dashboard served from the events' origin.
    env_spec = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    env_spec.update(template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"])
    params = {"LogLevel": "INFO", "IotDataEndpoint": "unused", "DashboardOrigin": origin}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "POWERTOOLS_", "DASHBOARD_"))}
    for name, value in env_spec.items():
        if isinstance(value, dict) and "Fn::If" in value:
            condition, when_true, when_false = value["Fn::If"]
            value = {"HasDashboardOrigin": when_true, "TracingOn": when_false}[condition]  # origin set, tracing off
        env[name] = cfn.render(value, params)
    # moto answers for AWS; the data-plane endpoint variable would point at a real account.
    del env["AWS_ENDPOINT_URL_IOT_DATA_PLANE"]
    env.update(AWS_DEFAULT_REGION="eu-west-1", AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    result = subprocess.run(
        [sys.executable, "-m", "tests.template.invoke_events", str(repo / "events")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for line in result.stdout.splitlines():
        if line.startswith('{"event"'):
            record = json.loads(line)
            by_event.setdefault(record["event"], []).append(record)
    return by_event


def test_health_and_device_list_answer(answers: dict[str, list[dict[str, Any]]]) -> None:
    # GIVEN the GET samples  WHEN the API handler gets them  THEN they are routed and answered
    assert answers["get-health"][0]["status"] == 200
    assert answers["get-health"][0]["body"] == {"status": "ok"}
    listing = answers["get-devices"][0]
    assert listing["status"] == 200
    assert [d["thing"] for d in listing["body"]["devices"]] == ["pi-01"]


def test_presence_samples_flip_the_device_between_online_and_offline(answers: dict[str, list[dict[str, Any]]]) -> None:
    # GIVEN the connected sample, then the disconnected one, each followed by get-device
    after_connect, after_disconnect = answers["get-device"]
    # THEN the API shows the device online, then offline
    assert after_connect["status"] == after_disconnect["status"] == 200
    assert after_connect["body"]["connected"] is True
    assert after_disconnect["body"]["connected"] is False


def test_command_samples_follow_the_protocol_for_an_offline_device(answers: dict[str, list[dict[str, Any]]]) -> None:
    # GIVEN the device is offline and post-command asks to fail fast (ifOffline: fail)
    post = answers["post-command"][0]
    # THEN the API refuses, naming the device, and no command was queued
    assert post["status"] == 409
    assert post["body"]["code"] == "DEVICE_OFFLINE"
    assert answers["get-command"][0]["status"] == 404
    assert answers["get-command"][0]["body"]["code"] == "COMMAND_NOT_FOUND"


def test_bad_samples_get_the_protocols_400s(answers: dict[str, list[dict[str, Any]]]) -> None:
    # GIVEN the samples meant to be wrong  THEN each gets its protocol error code
    assert (answers["bad-thing-name"][0]["status"], answers["bad-thing-name"][0]["body"]["code"]) == (400, "INVALID_THING_NAME")
    invalid = answers["post-command-invalid-json"][0]
    assert (invalid["status"], invalid["body"]["code"]) == (400, "INVALID_JSON")


def test_every_api_answer_carries_the_cors_origin_the_template_configures(
    repo: Path, answers: dict[str, list[dict[str, Any]]]
) -> None:
    # GIVEN the template's DASHBOARD_ORIGIN set to the origin the sample requests come from
    origin = json.loads((repo / "events" / "get-health.json").read_text())["headers"]["origin"]
    # THEN every answer of the function, errors included, lets that origin read it
    for name, records in answers.items():
        for record in records:
            if "status" in record:
                assert record["headers"].get("Access-Control-Allow-Origin") == origin, name


def test_fan_out_sample_queues_the_job_on_its_page(repo: Path, answers: dict[str, list[dict[str, Any]]]) -> None:
    # GIVEN a job whose one page holds pi-01, and the fan-out sample event for that page
    job = json.loads((repo / "events" / "jobs-fanout-page.json").read_text())["jobId"]
    record = answers["jobs-fanout-page"][0]
    # THEN the fan-out function queued the command on pi-01 under the job id, and says so
    assert record["pending"] == [job]
    assert (record["result"]["state"], record["result"]["queued"], record["result"]["failed"]) == ("QUEUED", 1, 0)
