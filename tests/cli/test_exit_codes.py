"""Exit codes and requests for answers the local stack cannot be made to give on demand (5xx, 429, an
ID conflict, a wait longer than API Gateway's 29 s, several pages of devices): the CLI as a subprocess
against a scripted HTTP server standing in for a deployed API behind a stage path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from moto import mock_aws

from iotbridge_local.cli import main
from tests.cli.conftest import CLI, cli_env, run_cli, wait_until

STAGE = "/prod"
KEY = "secret-key-of-20-chars-or-more"  # API Gateway wants at least 20


@dataclass
class Script:
    """Answers per (method, path), consumed in order (the last one repeats); every request is recorded."""

    answers: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    hung: set[str] = field(default_factory=set)  # methods answered only at teardown: a wait a caller interrupts
    release: threading.Event = field(default_factory=threading.Event)

    def on(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        self.answers[(method, STAGE + path)] = list(answers)

    def hang(self, method: str) -> None:
        self.hung.add(method)

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        queue = self.answers.get((method, path))
        if not queue:
            return 404, {"code": "NOT_FOUND", "message": f"no route {path}"}
        return queue.pop(0) if len(queue) > 1 else queue[0]


def _handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            script.requests.append({"method": self.command, "path": split.path, "query": parse_qs(split.query),
                                    "key": self.headers.get("x-api-key"), "body": body})  # fmt: skip
            if self.command in script.hung:
                script.release.wait(60)
            status, answer = script.answer(self.command, split.path)
            payload = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def api() -> Iterator[tuple[str, Script]]:
    script = Script()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{STAGE}", script
    finally:
        script.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def _view(state: str, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "thing": "t1", "action": "ping", "state": state, **extra}


def _send(url: str, *args: str) -> Any:
    return run_cli("send", "t1", "ping", "--api-url", url, "--api-key", KEY, *args)


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (200, _view("SUCCEEDED", result={"pong": True}), 0),
        (200, _view("FAILED", error="boom"), 1),
        (200, _view("REJECTED", error="bad"), 1),
        (200, _view("TIMED_OUT"), 1),
        (200, _view("EXPIRED"), 1),
        (202, _view("QUEUED"), 3),
        (409, {"code": "DEVICE_OFFLINE", "message": "t1 is offline", "details": {"thing": "t1"}}, 4),
        (409, {"code": "ID_CONFLICT", "message": "c1 exists with other params"}, 5),
        (429, {"code": "TOO_MANY_PENDING", "message": "10 pending"}, 5),
        (429, {"code": "THROTTLED", "message": "retry later"}, 5),
        (403, {"message": "Forbidden"}, 5),
        (502, {"code": "UPSTREAM_ERROR", "message": "IoT failed"}, 6),
        (504, "<html>Gateway Timeout</html>", 6),
    ],
)
def test_every_answer_has_its_exit_code(api: tuple[str, Script], status: int, body: Any, code: int) -> None:
    url, script = api
    # GIVEN the API answers a command with this status and body
    script.on("POST", "/devices/t1/commands", (status, body))
    # WHEN a script sends the command (without waiting beyond the API's answer)
    done = _send(url, "--wait", "0s")
    # THEN the exit code is the documented one
    assert done.returncode == code, done.stdout + done.stderr


def test_the_request_carries_key_typed_params_and_options(api: tuple[str, Script]) -> None:
    url, script = api
    script.on("POST", "/devices/t1/commands", (200, _view("SUCCEEDED")))
    # WHEN every option is given
    done = run_cli("send", "t1", "ping", "--api-url", url, "--api-key", KEY, "-p", "n=5", "-p", "on=true", "-p", "s=x",
                   "--id", "job-42", "--ttl", "2m", "--wait", "1500ms", "--if-offline", "fail")  # fmt: skip
    # THEN the API gets them under the stage path, with the key, as the protocol names them
    assert done.returncode == 0, done.stderr
    [request] = script.requests
    assert (request["path"], request["key"]) == (f"{STAGE}/devices/t1/commands", KEY)
    assert request["body"] == {"action": "ping", "params": {"n": 5, "on": True, "s": "x"}, "id": "job-42",
                               "ttlMs": 120_000, "timeoutMs": 1500, "ifOffline": "fail"}  # fmt: skip


def test_a_wait_beyond_29s_asks_for_29s_then_follows_the_command(api: tuple[str, Script]) -> None:
    url, script = api
    # GIVEN an API that gives up at its limit (202) and the device answers a moment later
    script.on("POST", "/devices/t1/commands", (202, _view("SENT")))
    script.on("GET", "/devices/t1/commands/c1", (200, _view("SENT")), (200, _view("SUCCEEDED", result={"pong": True})))
    # WHEN the script is willing to wait a minute
    done = _send(url, "--wait", "1m", "--json")
    # THEN the POST asked for API Gateway's maximum, the CLI polled the command, and it exits 0 with the outcome
    assert done.returncode == 0, done.stdout + done.stderr
    assert script.requests[0]["body"]["timeoutMs"] == 29_000
    assert [r["method"] for r in script.requests] == ["POST", "GET", "GET"]
    assert json.loads(done.stdout)["result"] == {"pong": True}


def test_a_throttled_or_failed_poll_does_not_end_the_wait(api: tuple[str, Script]) -> None:
    url, script = api
    # GIVEN a queued command (202) whose first poll is throttled and whose second has the outcome
    script.on("POST", "/devices/t1/commands", (202, _view("SENT")))
    script.on("GET", "/devices/t1/commands/c1", (429, {"message": "Too Many Requests"}),
              (200, _view("SUCCEEDED", result={"pong": True})))  # fmt: skip
    # WHEN a script sends and waits 3 s THEN it reports the outcome, not "API error"
    done = _send(url, "--wait", "3s")
    assert (done.returncode, "SUCCEEDED" in done.stdout) == (0, True), (done.stdout, done.stderr)


def test_a_wait_whose_polls_all_fail_ends_pending_with_the_id(api: tuple[str, Script]) -> None:
    url, script = api
    # GIVEN a queued command whose every poll fails (the API's upstream is down)
    script.on("POST", "/devices/t1/commands", (202, _view("SENT")))
    script.on("GET", "/devices/t1/commands/c1", (502, {"code": "UPSTREAM_ERROR", "message": "IoT failed"}))
    # WHEN a script waits 1 s THEN it exits 3 (still pending) and prints the id to follow it by
    done = _send(url, "--wait", "1s")
    assert done.returncode == 3 and "c1" in done.stdout, (done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize("bad", ["http://127.0.0.1:abc", "http://127.0.0.1:99999", "http://exa mple.com"])
def test_a_malformed_api_url_is_a_usage_error(bad: str) -> None:
    done = _send(bad)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-300:]


def test_devices_reads_every_page(api: tuple[str, Script]) -> None:
    url, script = api
    # GIVEN more devices than one page
    page1 = {"devices": [{"thing": "a", "connected": True, "reported": {"led": "on"}}], "nextToken": "a"}
    page2 = {"devices": [{"thing": "b", "connected": False, "reported": {}}], "nextToken": None}
    script.on("GET", "/devices", (200, page1), (200, page2))
    # WHEN devices are listed
    done = run_cli("devices", "--api-url", url, "--api-key", KEY, "--json")
    # THEN both pages are in the one answer, and the second request carried the token
    assert done.returncode == 0, done.stderr
    assert [d["thing"] for d in json.loads(done.stdout)["devices"]] == ["a", "b"]
    assert script.requests[1]["query"]["nextToken"] == ["a"]


def test_output_piped_into_a_reader_that_leaves_early_ends_quietly(api: tuple[str, Script]) -> None:
    url, script = api
    # GIVEN a device list, and a reader that has gone before the CLI writes (as `| head -1` does)
    script.on("GET", "/devices", (200, {"devices": [{"thing": "a", "connected": True, "reported": {}}], "nextToken": None}))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        # WHEN devices are listed into it
        done = subprocess.run([*CLI, "devices", "--api-url", url, "--api-key", KEY, "--json"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, env=cli_env(), timeout=90, check=False)  # fmt: skip
    finally:
        os.close(write_end)
    # THEN it ends as a program killed by SIGPIPE is reported, without a traceback
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr[-500:]


def test_a_gateway_error_after_the_post_names_the_command_that_may_still_run(api: tuple[str, Script]) -> None:
    url, script = api
    # GIVEN an API whose gateway answers 504 to the POST (the command may have been queued behind it)
    script.on("POST", "/devices/t1/commands", (504, {"message": "Endpoint request timed out"}))
    # WHEN a command is sent
    done = run_cli("send", "t1", "ping", "--api-url", url, "--api-key", KEY)
    # THEN exit 6, and the id the CLI sent is named with how to follow it: re-running the same line
    # would send a new id, and could run the command twice
    sent = str(script.requests[0]["body"]["id"])
    assert done.returncode == 6, done.stderr
    assert f"command {sent} on t1 may still run" in done.stderr


def test_a_job_with_a_failed_target_exits_1_and_an_unfinished_one_exits_3(api: tuple[str, Script]) -> None:
    url, script = api
    started = {"jobId": "j1", "action": "ping", "targets": 2, "queued": 2, "createdAt": 1, "expiresAt": 2}
    script.on("POST", "/commands", (202, started))
    failed = {"jobId": "j1", "action": "ping", "targets": 2, "done": 2, "complete": True,
              "counts": {"SUCCEEDED": 1, "FAILED": 1}, "nextOffset": None,
              "devices": [{"thing": "a", "state": "SUCCEEDED"}, {"thing": "b", "state": "FAILED", "error": "boom"}]}  # fmt: skip
    script.on("GET", "/commands/jobs/j1", (200, failed))
    # WHEN a job ends with one target FAILED
    done = run_cli("job", "ping", "--things", "a,b", "--wait", "5s", "--api-url", url, "--api-key", KEY)
    # THEN exit 1, and the failed device is named with its error
    assert done.returncode == 1, done.stdout + done.stderr
    assert "b: FAILED (boom)" in done.stdout
    body = script.requests[0]["body"]
    assert "id" not in body  # the API names the job: with a caller-chosen id it reads every device first
    assert body == {"action": "ping", "params": {}, "things": ["a", "b"]}
    # WHEN a job is still running when the wait ends THEN exit 3
    script.on("GET", "/commands/jobs/j1", (200, failed | {"done": 1, "complete": False, "counts": {"PENDING": 1}}))
    pending = run_cli("job-status", "j1", "--wait", "300ms", "--api-url", url, "--api-key", KEY)
    assert pending.returncode == 3, pending.stdout + pending.stderr


def test_a_deployed_stack_gives_the_url_and_key(
    api: tuple[str, Script], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, script = api
    for var in ("AWS_ENDPOINT_URL", "AWS_PROFILE", "IOTBRIDGE_API_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("IOTBRIDGE_API_KEY", "local-dev-key")  # still exported from the local stack
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    script.on("GET", "/devices", (200, {"devices": [], "nextToken": None}))
    with mock_aws():
        # GIVEN a deployed stack whose outputs name the API's URL and its key's id (moto: CloudFormation, API Gateway)
        key_id = boto3.client("apigateway", region_name="eu-west-1").create_api_key(name="iotbridge", value=KEY, enabled=True)[
            "id"
        ]
        outputs = {"ApiUrl": {"Value": url}, "ApiKeyId": {"Value": key_id}}
        template = {"Resources": {"Bucket": {"Type": "AWS::S3::Bucket"}}, "Outputs": outputs}
        boto3.client("cloudformation", region_name="eu-west-1").create_stack(
            StackName="iotbridge", TemplateBody=json.dumps(template)
        )
        # WHEN a script names the stack instead of a URL and key
        code = main(["devices", "--stack", "iotbridge", "--region", "eu-west-1", "--json"])
        # THEN the API is called at that URL with the stack's key, not the one in the environment
        assert code == 0, capsys.readouterr().err
        assert script.requests[0]["path"] == f"{STAGE}/devices" and script.requests[0]["key"] == KEY
        # AND a stack that does not exist is a usage error naming it
        assert main(["devices", "--stack", "not-deployed", "--region", "eu-west-1"]) == 2
        assert "not-deployed" in capsys.readouterr().err


def test_a_validation_error_names_the_field_and_what_is_wrong(api: tuple[str, Script]) -> None:
    url, script = api
    # GIVEN the API refuses a request that does not match its schema (the router's 422 body)
    problem = {"loc": ["body", "ttlMs"], "msg": "Input should be greater than or equal to 1000", "type": "greater_than_equal"}
    script.on("POST", "/devices/t1/commands", (422, {"code": "VALIDATION_ERROR", "message": "the request does not match "
                                                     "the schema", "details": [problem]}))  # fmt: skip
    # WHEN a script sends a command with a TTL below the minimum
    done = _send(url, "--ttl", "500ms")
    # THEN exit 5, and stderr says which field is wrong and why, not only that the schema was not matched
    assert done.returncode == 5, done.stderr
    assert "ttlMs: Input should be greater than or equal to 1000" in done.stderr


def _interrupted(url: str, script: Script, args: list[str], requests: int) -> subprocess.CompletedProcess[str]:
    """The CLI as a subprocess, sent SIGINT (Ctrl-C) once the API has seen `requests` requests from it."""
    process = subprocess.Popen([*CLI, *args, "--api-url", url, "--api-key", KEY], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=cli_env())  # fmt: skip
    try:
        wait_until(lambda: len(script.requests) >= requests, 30, f"{requests} request(s) from {args}")
        time.sleep(0.2)  # inside the wait (a hung answer, or the pause between polls)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def _sent_id(script: Script) -> str:
    return str(script.requests[0]["body"]["id"])


@pytest.mark.parametrize(
    ("args", "hang", "routes", "requests", "says"),
    [
        # send to an offline device: the POST waits (up to 29 s) for an answer that does not come
        (["send", "t1", "ping", "--wait", "20s"], "POST", [], 1,
         lambda s: f"command {_sent_id(s)} on t1 may still run: follow it with `iotbridge command t1 {_sent_id(s)} --wait 30s`"),
        # command --wait: polling a command that stays SENT
        (["command", "t1", "c1", "--wait", "20s"], None, [("GET", "/devices/t1/commands/c1", (200, _view("SENT")))], 2,
         lambda s: "command c1 on t1 may still run: follow it with `iotbridge command t1 c1 --wait 30s`"),
        # desired: the PATCH waits for the device to report
        (["desired", "t1", "relay=true", "--wait", "20s"], "PATCH", [], 1,
         lambda s: "t1 may still apply the desired state: see `iotbridge shadow t1`"),
        # job --wait: the POST of a job to many devices (the API names the job: a caller-chosen id costs a read per device)
        (["job", "ping", "--all", "--wait", "20s"], "POST", [], 1,
         lambda s: "a job may have started: see `iotbridge devices` or the dashboard"),
        # job-status --wait: polling a job that is not complete
        (["job-status", "j1", "--wait", "20s"], None, [("GET", "/commands/jobs/j1", (200, {
            "jobId": "j1", "action": "ping", "targets": 2, "done": 1, "complete": False, "counts": {"PENDING": 1},
            "nextOffset": None, "devices": []}))], 2,
         lambda s: "job j1 may still run: follow it with `iotbridge job-status j1 --wait 30s`"),
    ],
    ids=["send", "command", "desired", "job", "job-status"],
)  # fmt: skip
def test_ctrl_c_during_a_wait_names_what_may_still_run(
    api: tuple[str, Script], args: list[str], hang: str | None, routes: list[Any], requests: int, says: Any
) -> None:
    url, script = api
    # GIVEN an API that keeps the CLI waiting
    if hang:
        script.hang(hang)
    for method, path, answer in routes:
        script.on(method, path, answer)
    # WHEN the person presses Ctrl-C during the wait
    done = _interrupted(url, script, args, requests)
    # THEN one line, no traceback, says it was interrupted and which command or job may still run; exit 130
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines() == [f"iotbridge: interrupted; {says(script)}"], done.stderr
