"""The local Lambda Invoke API, through boto3's own `lambda` client as a function calls it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from iotbridge_local.apigw.environments import Environments
from iotbridge_local.config import free_port
from iotbridge_local.lambdaapi import LambdaService

HANDLERS = "tests.lambdaapi.handlers"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[LambdaService]:
    functions = {
        name: Environments(handler=f"{HANDLERS}.{name}", env={}, timeout_s=timeout, log=tmp_path / f"{name}.log",
                           max_environments=2, function_name=name)
        for name, timeout in (("record", 5.0), ("flaky", 5.0), ("sleepy", 1.0), ("gated", 15.0))
    }
    running = LambdaService(port=free_port(), functions=functions, retry_delays_s=(0.1, 0.2))
    running.start()
    yield running
    running.stop()


def _client(service: LambdaService) -> Any:
    port = service.httpd.server_address[1]
    return boto3.client("lambda", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="local", aws_secret_access_key="local",
                        config=Config(retries={"max_attempts": 1}))  # fmt: skip


def _attempts(trace: Path) -> int:
    return len(trace.read_text().splitlines()) if trace.exists() else 0


def test_an_event_invocation_is_accepted_at_once_and_runs_later(service: LambdaService, tmp_path: Path) -> None:
    # GIVEN a function that runs until the test opens its gate
    trace, gate = tmp_path / "trace", tmp_path / "gate"
    # WHEN it is invoked asynchronously, by name as a function does with its environment variable
    answer = _client(service).invoke(FunctionName="gated", InvocationType="Event",
                                     Payload=json.dumps({"trace": str(trace), "gate": str(gate)}).encode())  # fmt: skip
    # THEN Lambda's 202 came back while the function had not finished
    assert answer["StatusCode"] == 202
    assert service.outcomes == []
    # AND once it can, the function runs to its end, once
    gate.touch()
    assert service.wait_idle(30)
    assert _attempts(trace) == 1
    assert [o.ok for o in service.outcomes] == [True]


def test_a_failing_event_is_retried_twice_then_dropped_and_logged(service: LambdaService, tmp_path: Path) -> None:
    # GIVEN a function that fails its first two attempts, and one that always fails
    twice, always = tmp_path / "twice", tmp_path / "always"
    client = _client(service)
    # WHEN each gets an asynchronous event
    for trace, fail in ((twice, 2), (always, 99)):
        client.invoke(FunctionName="flaky", InvocationType="Event", Payload=json.dumps({"trace": str(trace), "fail": fail}))
    assert service.wait_idle(60)
    # THEN the first succeeds on Lambda's second retry, and the other is given up after three attempts
    assert (_attempts(twice), _attempts(always)) == (3, 3)
    assert sorted((o.ok, o.attempts) for o in service.outcomes) == [(False, 3), (True, 3)]


def test_an_event_that_runs_past_the_timeout_is_stopped_and_retried(service: LambdaService, tmp_path: Path) -> None:
    # GIVEN a function with a 1 s timeout that sleeps 3 s
    trace = tmp_path / "trace"
    _client(service).invoke(FunctionName="sleepy", InvocationType="Event", Payload=json.dumps({"trace": str(trace), "s": 3}))
    # THEN each attempt is cut off at its timeout and retried, three attempts in all
    assert service.wait_idle(60)
    assert _attempts(trace) == 3
    assert [(o.ok, o.error) for o in service.outcomes] == [(False, "timed out")]


def test_a_synchronous_invocation_answers_the_result_or_the_error(service: LambdaService, tmp_path: Path) -> None:
    client = _client(service)
    # GIVEN a function that works, given a full ARN as well as a plain name
    arn = "arn:aws:lambda:us-east-1:123456789012:function:record"
    answer = client.invoke(FunctionName=arn, Payload=json.dumps({"trace": str(tmp_path / "ok")}))
    # THEN the result comes back as its payload, with the time the context still had
    result = json.loads(answer["Payload"].read())
    assert answer["StatusCode"] == 200 and "FunctionError" not in answer
    assert result["attempts"] == 1 and 0 < result["remainingMs"] <= 5000
    # AND its context names the function that ran (its logs say so), not another one of the stack
    assert result["name"] == "record" and result["arn"].endswith(":function:record")
    # AND a failing function answers 200 with FunctionError, as Lambda does, and is not retried
    failed = client.invoke(FunctionName="flaky", Payload=json.dumps({"trace": str(tmp_path / "bad"), "fail": 5}))
    assert failed["StatusCode"] == 200 and failed["FunctionError"] == "Unhandled"
    assert _attempts(tmp_path / "bad") == 1


def test_unknown_functions_and_bad_payloads_get_lambdas_errors(service: LambdaService) -> None:
    client = _client(service)
    # GIVEN no function of that name  THEN ResourceNotFoundException, as the SDK knows it
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.invoke(FunctionName="nope", InvocationType="Event", Payload=b"{}")
    # AND a payload that is not JSON is refused before anything runs
    with pytest.raises(client.exceptions.InvalidRequestContentException):
        client.invoke(FunctionName="record", InvocationType="Event", Payload=b"{not json")
    # AND an asynchronous payload over 256 KB is too large
    with pytest.raises(client.exceptions.RequestTooLargeException):
        client.invoke(FunctionName="record", InvocationType="Event", Payload=json.dumps({"x": "a" * 300_000}).encode())
    assert service.outcomes == []
