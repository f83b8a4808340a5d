"""`iotbridge provision --local` against a running local stack: the bundle it writes is enough for the
real Pi agent and the real ESP32 firmware (MicroPython unix port) to connect over mutual TLS and answer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from iotbridge_local.apiclient import ApiClient, ApiTarget
from iotbridge_local.pki import common_name
from iotbridge_local.stack import LocalStack
from tests.cli.conftest import run_cli, wait_until
from tests.micropython.harness import MICROPYTHON, compile_firmware

pytestmark = pytest.mark.stack


def _dir(stack: LocalStack) -> list[str]:
    return ["--data-dir", str(stack.data_dir)]


def _connected(stack: LocalStack, thing: str) -> bool:
    body = ApiClient(ApiTarget(stack.config.api_url, stack.config.api_key, "test")).get_device(thing).body
    return bool(isinstance(body, dict) and body.get("connected"))


@contextmanager
def _running(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    log = open(cwd / "device.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_pi_agent_runs_from_the_bundle(stack: LocalStack, tmp_path: Path) -> None:
    bundle = tmp_path / "lab-pi"
    # GIVEN a new device provisioned on the running stack
    done = run_cli("provision", "lab-pi", "--local", "--out", str(bundle), *_dir(stack))
    assert done.returncode == 0, done.stderr
    assert common_name(bundle / "cert.pem") == "lab-pi"
    # WHEN the Pi agent starts with nothing but the bundle's agent.toml
    with _running([sys.executable, "-m", "iotbridge_pi", "--config", "agent.toml"], cwd=bundle):
        wait_until(lambda: _connected(stack, "lab-pi"), 30, f"lab-pi connects; see {bundle / 'device.log'}")
        # THEN the device is listed online and answers a command sent through the API
        listed = run_cli("devices", *_dir(stack))
        assert any(line.split()[:2] == ["lab-pi", "yes"] for line in listed.stdout.splitlines()), listed.stdout
        wait_until(lambda: run_cli("shadow", "lab-pi", "--json", *_dir(stack)).stdout.count('"ping"') > 0, 30,
                   "lab-pi advertises its actions")  # fmt: skip
        sent = run_cli("send", "lab-pi", "ping", *_dir(stack))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "SUCCEEDED" in sent.stdout


@pytest.mark.micropython
def test_esp32_firmware_runs_from_the_bundle(stack: LocalStack, tmp_path: Path) -> None:
    bundle = tmp_path / "lab-esp"
    # GIVEN a device provisioned for the ESP32: config.json with DER certificate, key and CA
    done = run_cli("provision", "lab-esp", "--out", str(bundle), *_dir(stack))
    assert done.returncode == 0, done.stderr
    # WHEN the compiled firmware runs under MicroPython from the bundle directory, as it would from flash
    image = compile_firmware(tmp_path / "image")
    env = {**os.environ, "MICROPYPATH": f"{image}:.frozen"}
    argv = [str(MICROPYTHON), "-X", "heapsize=64k", str(image / "main.py"), "config.json"]
    with _running(argv, cwd=bundle, env=env):
        wait_until(lambda: _connected(stack, "lab-esp"), 30, f"lab-esp connects; see {bundle / 'device.log'}")
        wait_until(lambda: run_cli("shadow", "lab-esp", "--json", *_dir(stack)).stdout.count('"ping"') > 0, 30,
                   "lab-esp advertises its actions")  # fmt: skip
        # THEN it answers a command sent with the CLI
        sent = run_cli("send", "lab-esp", "led", "-p", "state=on", "--json", *_dir(stack))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert json.loads(sent.stdout)["state"] == "SUCCEEDED"


def test_rerun_keeps_the_certificate_and_rotate_replaces_it(stack: LocalStack, tmp_path: Path) -> None:
    bundle = tmp_path / "lab-2"
    # GIVEN a provisioned device
    assert run_cli("provision", "lab-2", "--out", str(bundle), *_dir(stack)).returncode == 0
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    # WHEN provisioning runs again, and once more into another directory
    again = run_cli("provision", "lab-2", "--out", str(bundle), *_dir(stack))
    copy = run_cli("provision", "lab-2", "--out", str(tmp_path / "copy"), "--json", *_dir(stack))
    # THEN the bundle is untouched, and the other directory gets the same certificate (no second one)
    assert again.returncode == 0 and "already provisioned" in again.stdout
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before
    assert copy.returncode == 0 and json.loads(copy.stdout)["status"] == "exported"
    assert (tmp_path / "copy" / "cert.pem").read_bytes() == before["cert.pem"]
    # WHEN asked to rotate THEN a new certificate replaces it, and the old bundle is kept aside
    rotated = run_cli("provision", "lab-2", "--out", str(bundle), "--rotate", "--json", *_dir(stack))
    assert rotated.returncode == 0 and json.loads(rotated.stdout)["status"] == "rotated"
    assert (bundle / "cert.pem").read_bytes() != before["cert.pem"]
    [kept] = [p for p in bundle.iterdir() if p.name.startswith("previous-")]
    assert (kept / "cert.pem").read_bytes() == before["cert.pem"]
    # AND the thing is in the stack's registry
    assert stack.boto3_client("iot").describe_thing(thingName="lab-2")["thingName"] == "lab-2"


def test_no_running_stack_is_a_usage_error(tmp_path: Path) -> None:
    # WHEN there is no stack.json in the data dir THEN exit 2 with how to start one
    done = run_cli("provision", "lab-3", "--data-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "b"))
    assert done.returncode == 2
    assert "iotbridge up" in done.stderr
    assert not (tmp_path / "b").exists()
