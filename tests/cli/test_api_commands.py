"""`iotbridge send/command/devices/shadow/job` as a script uses them: a real subprocess against the local stack.

Exit codes are the contract: 0 SUCCEEDED, 1 failed outcome, 2 usage, 3 pending,
4 offline, 5 other API error, 6 unreachable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from iotbridge_local.apiclient import ApiClient, ApiTarget
from iotbridge_local.config import free_port
from iotbridge_local.stack import LocalStack
from tests.cli.conftest import cli_env, run_cli, wait_until

pytestmark = pytest.mark.stack


def _dir(stack: LocalStack) -> list[str]:
    return ["--data-dir", str(stack.data_dir)]


def _api(stack: LocalStack) -> ApiClient:
    return ApiClient(ApiTarget(stack.config.api_url, stack.config.api_key, "test"))


def _connected(stack: LocalStack, thing: str) -> bool:
    body = _api(stack).get_device(thing).body
    return bool(isinstance(body, dict) and body.get("connected"))


def _reported(stack: LocalStack, thing: str) -> dict[str, object]:
    body = _api(stack).get_device(thing).body
    return dict(body.get("reported") or {}) if isinstance(body, dict) else {}


def test_send_runs_the_command_and_exits_0(stack: LocalStack) -> None:
    # GIVEN the local stack with sim-1 online, found through its stack.json
    # WHEN a script turns the LED on
    done = run_cli("send", "sim-1", "led", "--param", "state=on", *_dir(stack))
    # THEN it exits 0 with a one-line answer, and the device's shadow shows the LED on
    assert done.returncode == 0, done.stderr
    assert "sim-1 led: SUCCEEDED" in done.stdout
    shadow = run_cli("shadow", "sim-1", "--json", *_dir(stack))
    assert shadow.returncode == 0, shadow.stderr
    assert json.loads(shadow.stdout)["shadow"]["state"]["reported"]["led"] == "on"


def test_json_output_is_the_api_body_and_params_are_typed(stack: LocalStack) -> None:
    # GIVEN a parameter written as seconds=15 (JSON: an integer, which the device's spec requires)
    # WHEN the command is sent with --json
    done = run_cli("send", "sim-1", "set_interval", "-p", "seconds=15", "--json", *_dir(stack))
    # THEN stdout is the API's JSON body with the outcome, and the device took 15 as a number
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["state"] == "SUCCEEDED"
    assert body["reported"]["interval"] == 15


def test_a_retry_with_the_same_id_returns_the_same_outcome(stack: LocalStack) -> None:
    # GIVEN a command sent with a caller-chosen id
    first = run_cli("send", "sim-1", "ping", "--id", "cron-ping-1", "--json", *_dir(stack))
    # WHEN the script retries it with the same id
    again = run_cli("send", "sim-1", "ping", "--id", "cron-ping-1", "--json", *_dir(stack))
    # THEN both succeed with the one outcome (the device ran it once)
    assert first.returncode == again.returncode == 0, (first.stderr, again.stderr)
    assert json.loads(first.stdout)["doneAt"] == json.loads(again.stdout)["doneAt"]


def test_unknown_action_exits_5_and_lists_the_known_ones(stack: LocalStack) -> None:
    # WHEN a script asks for an action the device does not advertise
    done = run_cli("send", "sim-1", "dance", *_dir(stack))
    # THEN exit 5, and stderr says which actions exist
    assert done.returncode == 5
    assert "UNKNOWN_ACTION" in done.stderr
    assert "ping" in done.stderr and "led" in done.stderr


def test_bad_params_and_unknown_device_exit_5(stack: LocalStack) -> None:
    # WHEN the params break the advertised spec, or the device does not exist
    bad = run_cli("send", "sim-1", "set_interval", "-p", "seconds=0", "--json", *_dir(stack))
    missing = run_cli("send", "no-such-thing", "ping", *_dir(stack))
    # THEN both exit 5 with the API's code; --json still prints the error body
    assert bad.returncode == 5 and json.loads(bad.stdout)["code"] == "INVALID_PARAMS"
    assert missing.returncode == 5 and "DEVICE_NOT_FOUND" in missing.stderr


def test_a_request_the_schema_refuses_names_the_field(stack: LocalStack) -> None:
    # WHEN a script sends a TTL below the API's minimum (the CLI takes any duration; the API checks the range)
    done = run_cli("send", "sim-1", "ping", "--ttl", "500ms", *_dir(stack))
    # THEN exit 5, and stderr says which field is wrong and why, not only "does not match the schema"
    assert done.returncode == 5, done.stderr
    assert "VALIDATION_ERROR" in done.stderr
    assert "  ttlMs: Input should be greater than or equal to 1000" in done.stderr.splitlines()


def test_wrong_api_key_exits_5(stack: LocalStack) -> None:
    # GIVEN the right URL and a wrong key (flags win over stack.json)
    done = run_cli("devices", "--api-url", stack.config.api_url, "--api-key", "not-the-key")
    # THEN API Gateway's 403 is an API error: exit 5
    assert done.returncode == 5
    assert "403" in done.stderr


def test_unreachable_api_exits_6(tmp_path: Path) -> None:
    # GIVEN an API URL where nothing listens
    url = f"http://127.0.0.1:{free_port()}"
    # WHEN a script sends a command
    done = run_cli("send", "sim-1", "ping", "--api-url", url, "--api-key", "k")
    # THEN exit 6 and a message that names the URL
    assert done.returncode == 6
    assert url in done.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    # WHEN a flag is malformed, or no API is configured anywhere
    no_equals = run_cli("send", "sim-1", "led", "--param", "state", "--api-url", "http://127.0.0.1:9")
    bad_wait = run_cli("send", "sim-1", "ping", "--wait", "soon", "--api-url", "http://127.0.0.1:9")
    nowhere = run_cli("devices", "--data-dir", str(tmp_path / "no-stack"))
    # THEN exit 2, and the message says what to fix
    assert no_equals.returncode == 2 and "key=value" in no_equals.stderr
    assert bad_wait.returncode == 2 and "duration" in bad_wait.stderr
    assert nowhere.returncode == 2 and "IOTBRIDGE_API_URL" in nowhere.stderr


def test_environment_configures_the_api_and_flags_override_it(stack: LocalStack, tmp_path: Path) -> None:
    # GIVEN IOTBRIDGE_API_URL/KEY in the environment and no stack.json in the data dir
    env = cli_env(IOTBRIDGE_API_URL=stack.config.api_url, IOTBRIDGE_API_KEY=stack.config.api_key)
    empty = ["--data-dir", str(tmp_path)]
    # WHEN devices runs with the environment alone, and with a --api-url that points nowhere
    from_env = run_cli("devices", "--json", *empty, env=env)
    overridden = run_cli("devices", *empty, "--api-url", f"http://127.0.0.1:{free_port()}", env=env)
    # THEN the environment is used, and the flag wins over it
    assert from_env.returncode == 0, from_env.stderr
    assert {d["thing"] for d in json.loads(from_env.stdout)["devices"]} >= {"sim-1", "sim-2"}
    assert overridden.returncode == 6


def test_desired_state_waits_until_reported(stack: LocalStack) -> None:
    # WHEN a script sets sim-1's desired relay state and waits
    done = run_cli("desired", "sim-1", "relay=true", "--wait", "10s", *_dir(stack))
    # THEN the device applied it: exit 0 and the reported value is shown
    assert done.returncode == 0, done.stdout + done.stderr
    assert "relay=true" in done.stdout
    reported = json.loads(run_cli("shadow", "sim-1", "--json", *_dir(stack)).stdout)["shadow"]["state"]["reported"]
    assert reported["relay"] is True


def test_devices_lists_presence_and_state(stack: LocalStack) -> None:
    # WHEN a person lists the devices
    done = run_cli("devices", *_dir(stack))
    # THEN one line per device says it is online and shows its LED
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert set(lines) >= {"sim-1", "sim-2"}
    assert all(" yes " in lines[t] and "led=" in lines[t] for t in ("sim-1", "sim-2"))


def test_shadow_shows_a_named_shadow(stack: LocalStack) -> None:
    # WHEN the presence shadow is asked for, as JSON and as text
    as_json = run_cli("shadow", "sim-2", "--name", "presence", "--json", *_dir(stack))
    as_text = run_cli("shadow", "sim-2", "--name", "presence", *_dir(stack))
    # THEN it is that named shadow, saying the device is connected
    assert as_json.returncode == as_text.returncode == 0
    body = json.loads(as_json.stdout)
    assert body["shadowName"] == "presence"
    assert body["shadow"]["state"]["reported"]["connected"] is True
    assert as_text.stdout.startswith("sim-2 shadow 'presence'")


def test_job_on_listed_devices_waits_for_all(stack: LocalStack) -> None:
    # WHEN a script pings two devices as one job and waits
    done = run_cli("job", "ping", "--things", "sim-1,sim-2", "--wait", "20s", "--json", *_dir(stack))
    # THEN exit 0 and every target SUCCEEDED
    assert done.returncode == 0, done.stdout + done.stderr
    body = json.loads(done.stdout)
    assert body["complete"] is True
    assert body["counts"] == {"SUCCEEDED": 2}


def test_job_on_all_devices_then_follow_it(stack: LocalStack) -> None:
    # GIVEN a job on every device, started without waiting
    started = run_cli("job", "read_sensors", "--all", "--json", *_dir(stack))
    assert started.returncode == 0, started.stderr
    job_id = json.loads(started.stdout)["jobId"]
    # WHEN its progress is followed
    followed = run_cli("job-status", job_id, "--wait", "20s", *_dir(stack))
    # THEN it completes with every device done
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert f"job {job_id} read_sensors:" in followed.stdout
    assert "SUCCEEDED" in followed.stdout


def test_offline_device_fail_fast_queue_and_expire(stack: LocalStack) -> None:
    # GIVEN sim-2 stopped, and the API knowing it is offline
    stack.stop_device("sim-2")
    try:
        wait_until(lambda: not _connected(stack, "sim-2"), 20, "the API sees sim-2 offline")
        # WHEN a script asks to fail fast
        fail = run_cli("send", "sim-2", "ping", "--if-offline", "fail", *_dir(stack))
        # THEN exit 4, naming the device as offline
        assert fail.returncode == 4
        assert "DEVICE_OFFLINE" in fail.stderr
        # WHEN two commands are queued instead: one with a long TTL, one with a 1 s TTL
        kept = run_cli("send", "sim-2", "led", "-p", "state=toggle", "--wait", "500ms", "--json", *_dir(stack))
        short = run_cli("send", "sim-2", "ping", "--ttl", "1s", "--wait", "0s", "--json", *_dir(stack))
        # THEN both exit 3 (still pending) with their ids
        assert kept.returncode == short.returncode == 3, (kept.stderr, short.stderr)
        kept_view, short_view = json.loads(kept.stdout), json.loads(short.stdout)
        assert kept_view["state"] == short_view["state"] == "QUEUED"
        # WHEN desired state is changed while it is offline THEN it is not reported in time: exit 3
        desired = run_cli("desired", "sim-2", "relay=true", "--wait", "300ms", *_dir(stack))
        assert desired.returncode == 3, desired.stdout + desired.stderr
        assert "not yet reported" in desired.stdout
        # WHEN the short one's TTL has passed and the device comes back
        wait_until(lambda: time.time() * 1000 > short_view["expiresAt"] + 1500, 10, "the short TTL passes")
        stack.start_device("sim-2")
        # THEN following the kept one ends in SUCCEEDED (exit 0), the expired one in EXPIRED (exit 1)
        ok = run_cli("command", "sim-2", kept_view["id"], "--wait", "20s", *_dir(stack))
        expired = run_cli("command", "sim-2", short_view["id"], "--wait", "20s", "--json", *_dir(stack))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "SUCCEEDED" in ok.stdout
        assert expired.returncode == 1, expired.stdout + expired.stderr
        assert json.loads(expired.stdout)["state"] == "EXPIRED"
        # AND the desired relay state set while offline was applied on reconnect
        wait_until(lambda: _reported(stack, "sim-2").get("relay") is True, 20, "sim-2 applies desired relay=true")
    finally:
        if not stack.child_alive("device-sim-2"):
            stack.start_device("sim-2")
        stack.wait_devices_ready(timeout=30)
