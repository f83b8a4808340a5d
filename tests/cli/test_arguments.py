"""How the CLI reads what a person types: --param values, durations, and where the API is."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from iotbridge_contract.stopflag import StopFlag
from iotbridge_local.apiclient import NoApiConfigured, resolve_target
from iotbridge_local.apicommands import duration_ms, parse_param
from iotbridge_local.apigw.environments import InvocationError
from iotbridge_local.broker import BrokerError
from iotbridge_local.cli import _PORTS, _only_stack_in, _run_stack, build_parser
from iotbridge_local.config import StackConfig


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("on=true", ("on", True)),
        ("seconds=5", ("seconds", 5)),
        ("ratio=0.5", ("ratio", 0.5)),
        ('state="on"', ("state", "on")),
        ("state=on", ("state", "on")),  # not JSON: the text itself
        ("note=a=b", ("note", "a=b")),  # only the first = separates
        ("empty=", ("empty", "")),
        ("v=NaN", ("v", "NaN")),  # JSON the API could not take stays a string
        ('rgb={"r":1}', ("rgb", {"r": 1})),
    ],
)
def test_param_values_are_json_when_they_parse(text: str, expected: tuple[str, object]) -> None:
    # WHEN a --param is parsed THEN its value is JSON when it parses, else the string
    assert parse_param(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=5"])
def test_param_without_a_key_is_a_usage_error(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_param(text)


@pytest.mark.parametrize(("text", "ms"), [("5s", 5000), ("500ms", 500), ("2m", 120_000), ("1h", 3_600_000), ("3", 3000),
                                          ("0s", 0), ("1.5s", 1500)])  # fmt: skip
def test_durations(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("text", ["soon", "-1s", "5d", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration_ms(text)


def _stack_json(data_dir: Path, url: str, key: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "stack.json").write_text(json.dumps({"api": url, "apiKey": key}))


def test_flags_beat_environment_beat_stack_json(tmp_path: Path) -> None:
    # GIVEN a local stack's stack.json and environment variables
    _stack_json(tmp_path, "http://127.0.0.1:3000", "stack-key")
    env = {"IOTBRIDGE_API_URL": "https://env.example/prod/", "IOTBRIDGE_API_KEY": "env-key"}
    # THEN flags win, then the environment, then the stack (whose key comes with its URL)
    assert resolve_target("https://flag.example", "flag-key", tmp_path, env).url == "https://flag.example"
    from_env = resolve_target(None, None, tmp_path, env)
    assert (from_env.url, from_env.key) == ("https://env.example/prod", "env-key")
    from_stack = resolve_target(None, None, tmp_path, {})
    assert (from_stack.url, from_stack.key) == ("http://127.0.0.1:3000", "stack-key")
    # AND a key given alone is used with the stack's URL
    assert resolve_target(None, "my-key", tmp_path, {}).key == "my-key"


def test_nothing_configured_says_how_to_configure(tmp_path: Path) -> None:
    with pytest.raises(NoApiConfigured, match="--api-url"):
        resolve_target(None, None, tmp_path, {})
    with pytest.raises(NoApiConfigured, match="http"):
        resolve_target("ftp://x", None, tmp_path, {})


def test_the_existing_subcommands_keep_their_flags() -> None:
    # GIVEN the parser WHEN `up` and `status` are parsed THEN their flags are as before
    up = build_parser().parse_args(["up", "--devices", "3", "--data-dir", "d", "--api-port", "3001", "--no-tls"])
    assert (up.devices, up.data_dir, up.api_port, up.no_tls) == (3, "d", 3001, True)
    assert build_parser().parse_args(["status", "--data-dir", "d"]).data_dir == "d"


def test_the_stack_that_up_starts_throttles_each_thing_as_aws_does_unless_told_not_to(tmp_path: Path) -> None:
    # GIVEN `iotbridge up` (what make run starts), with and without --shadow-rate 0
    from iotbridge_local.cli import _config

    for argv, rate in ((["up"], 20), (["up", "--shadow-rate", "0"], None), (["up", "--shadow-rate", "5"], 5)):
        args = build_parser().parse_args([*argv, "--data-dir", str(tmp_path)])
        # WHEN its configuration is made THEN its shadow service allows that many requests a second per thing
        assert _config(args).shadow_rate == rate, argv


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["send", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for line in ("0  SUCCEEDED", "3  still pending", "4  the device is offline", "6  the API is unreachable"):
        assert line in text


def test_a_status_check_holding_the_lock_for_a_moment_does_not_stop_up_from_starting(tmp_path: Path) -> None:
    import fcntl
    import threading

    # GIVEN a data dir whose lock a `status` check holds (shared) for a moment, as it does for a dead stack
    (tmp_path / ".lock").write_text("12345")
    checking = open(tmp_path / ".lock")  # noqa: SIM115 - released by the timer below
    fcntl.flock(checking, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.1, checking.close).start()
    # WHEN `iotbridge up` starts on it meanwhile / THEN it waits that moment out and starts
    with _only_stack_in(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_a_second_stack_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    # GIVEN a stack running from a data dir (it holds the dir's lock and wrote stack.json)
    (tmp_path / "stack.json").write_text('{"dashboard": "http://127.0.0.1:8080"}')
    # WHEN another `iotbridge up` starts on it
    with _only_stack_in(tmp_path), pytest.raises(SystemExit) as refused, _only_stack_in(tmp_path):
        pass
    # THEN it is refused, saying where the running one is, instead of sharing its broker and shadows
    assert "already running" in str(refused.value) and "127.0.0.1:8080" in str(refused.value)
    # AND once that stack stopped, the dir is free again
    with _only_stack_in(tmp_path):
        pass


@pytest.mark.parametrize("count", ["0", "-1", "many"])
def test_simulating_no_devices_is_a_usage_error(count: str, capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN a fleet of no (or a negative number of) devices is asked for
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["simulate", "--devices", count])
    # THEN argparse refuses it (exit 2) naming the flag, instead of an IndexError once running
    assert refused.value.code == 2
    assert "--devices" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "port"),
    [*(("--" + name.replace("_", "-"), "70000") for name in _PORTS), *(("--api-port", p) for p in ("65536", "0", "-1", "x"))],
)
def test_a_port_outside_1_to_65535_is_a_usage_error(flag: str, port: str, capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN `up` is given a port no socket can bind (70000 raised OverflowError while starting)
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["up", flag, port])
    # THEN argparse refuses it (exit 2), naming the flag
    assert refused.value.code == 2
    assert flag in capsys.readouterr().err


@pytest.mark.parametrize("port", ["1", "65535"])
def test_ports_at_the_ends_of_the_range_are_accepted(port: str) -> None:
    assert build_parser().parse_args(["up", "--api-port", port]).api_port == int(port)


class _FailingStack:
    """A stack whose start fails as Mosquitto or a service can, before anything runs."""

    def __init__(self, error: Exception, logs: Path) -> None:
        self.error, self.logs, self.things, self.stopped = error, logs, ["sim-1"], False

    def start(self) -> None:
        raise self.error

    def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize(
    "error",
    [BrokerError("mosquitto did not start"), RuntimeError("the rules process exited at start"),
     InvocationError("the function failed to initialise"), OSError("Address already in use")],
)  # fmt: skip
def test_a_stack_that_cannot_start_says_why_in_one_line(
    error: Exception, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN `up` whose stack fails to start
    stack = _FailingStack(error, tmp_path / "logs")
    # WHEN it runs
    code = _run_stack(stack, StackConfig(data_dir=tmp_path), StopFlag())  # type: ignore[arg-type]
    # THEN it exits 1 with one line naming the error and the logs, not a traceback, and everything is stopped
    assert code == 1 and stack.stopped
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == f"iotbridge: the local stack could not start: {error} (logs: {tmp_path / 'logs'})"
