"""End to end: boto3 iot-data -> the local shadow service (iotcore) -> Mosquitto -> the firmware, and back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from iotbridge_local.broker import Broker
from iotbridge_local.config import StackConfig
from tests.micropython.conftest import StartFirmware
from tests.micropython.harness import (
    IotCoreProcess,
    command,
    outcome_in_shadow,
    queue_command,
    read_shadow,
    wait_until,
)

pytestmark = pytest.mark.micropython
THING = "esp32-test"


@pytest.fixture
def iotcore(broker: Broker, stack_config: StackConfig) -> Iterator[IotCoreProcess]:
    core = IotCoreProcess(stack_config.data_dir / "iotcore", broker.service_endpoint(), stack_config.iot_http_port)
    core.start()
    yield core
    core.stop()


@pytest.fixture
def iot_data(iotcore: IotCoreProcess) -> Any:
    return iotcore.iot_data()


def test_command_completes_through_the_shadow_service(start_firmware: StartFirmware, device_config, iot_data) -> None:
    # GIVEN the firmware connected to the broker the shadow service uses
    start_firmware(device_config)
    # WHEN a command is queued in the commands shadow's desired state, as the API does
    queue_command(iot_data, THING, "e2e-1", command("led", {"state": "on"}))
    # THEN its outcome lands in reported and its desired entry is gone
    out = wait_until(lambda: outcome_in_shadow(iot_data, THING, "e2e-1"), "the outcome in the shadow")
    assert out["state"] == "SUCCEEDED"
    assert out["result"] == {"led": "on"}
    # AND the classic shadow shows the new state and the advertised actions
    classic = wait_until(
        lambda: (r := read_shadow(iot_data, THING)["state"]["reported"]).get("led") == "on" and r, "led on reported"
    )
    assert set(classic["actions"]) == {"led", "relay", "ping", "read_sensors", "reboot", "set_interval"}


def test_commands_queued_while_offline_run_on_connect_unless_expired(
    start_firmware: StartFirmware, device_config, iot_data
) -> None:
    # GIVEN a device that is offline, with one live and one short-lived command queued for it
    queue_command(iot_data, THING, "live", command("relay", {"on": True}))
    queue_command(iot_data, THING, "short", command("led", {"state": "on"}, ttl_ms=-1000))
    # WHEN it connects (and reads its commands shadow)
    start_firmware(device_config)
    # THEN the live one runs and the expired one is reported EXPIRED, not run
    assert wait_until(lambda: outcome_in_shadow(iot_data, THING, "live"), "live")["state"] == "SUCCEEDED"
    expired = wait_until(lambda: outcome_in_shadow(iot_data, THING, "short"), "short")
    assert expired["state"] == "EXPIRED"
    reported = read_shadow(iot_data, THING)["state"]["reported"]
    assert reported["relay"] is True
    assert reported["led"] == "off"


def test_desired_state_set_while_offline_is_applied_on_connect(
    start_firmware: StartFirmware, device_config, iot_data
) -> None:
    # GIVEN desired state written while the device is offline
    import json

    iot_data.update_thing_shadow(thingName=THING, payload=json.dumps({"state": {"desired": {"led": "on"}}}))
    # WHEN it connects
    start_firmware(device_config)
    # THEN it applies and reports it, and the delta disappears
    shadow = wait_until(
        lambda: (d := read_shadow(iot_data, THING)).get("state", {}).get("reported", {}).get("led") == "on" and d,
        "led on reported",
    )
    assert "delta" not in shadow["state"]


def test_a_desired_value_the_esp32_refuses_does_not_start_an_update_storm(
    start_firmware: StartFirmware, device_config, iot_data
) -> None:
    # GIVEN the firmware connected and reporting
    import json
    import time

    start_firmware(device_config)
    wait_until(lambda: read_shadow(iot_data, THING)["state"].get("reported", {}).get("actions"), "first report")
    # WHEN desired gets a value it cannot apply and a key it does not have, next to a good one
    desired = {"led": "purple", "colour": "red", "relay": True}
    iot_data.update_thing_shadow(thingName=THING, payload=json.dumps({"state": {"desired": desired}}))
    # THEN it applies the good one and leaves the refused ones in the delta
    wait_until(lambda: read_shadow(iot_data, THING)["state"]["reported"].get("relay") is True, "relay reported on")
    time.sleep(0.5)
    settled = read_shadow(iot_data, THING)
    assert settled["state"]["delta"] == {"led": "purple", "colour": "red"}
    # AND the delta that follows each of its reports (AWS publishes one after any update that
    # leaves one) is not answered with another report: the version stays where it is
    time.sleep(1.5)
    assert read_shadow(iot_data, THING)["version"] == settled["version"]


def test_compiled_firmware_completes_100_commands_and_a_reconnect_to_a_full_commands_shadow_in_a_small_heap(
    start_firmware: StartFirmware, device_config, iot_data
) -> None:
    # GIVEN the firmware compiled with mpy-cross, as deployed, in a 56 KB Python heap. The
    # smallest that works is a benchmark figure (docs/benchmarks.md, `make bench`: 48 KB with the
    # API's ids, 49 KB with these longer ones; device/esp32/tools/heap_probe.py): near it,
    # whether the heap's holes line up with an allocation depends on message timing, so a
    # test pinned there flakes. 56 KB leaves 7 KB
    # and still fails a firmware that needs ~12% more heap, or leaks across 100 commands.
    fw = start_firmware(device_config, heap="56k")
    # WHEN 100 commands with 32-hex-digit ids (a caller's uuid4().hex; the API's own are 26
    # characters) are queued, up to 10 pending at a time
    done: dict[str, dict[str, Any]] = {}
    for batch in range(10):
        ids = [f"{batch:02d}{i:02d}" + uuid.uuid4().hex[4:] for i in range(10)]
        for cid in ids:
            queue_command(iot_data, THING, cid, command("led", {"state": "toggle"}))
        for cid in ids:
            done[cid] = wait_until(lambda c=cid: fw.alive() and outcome_in_shadow(iot_data, THING, c), cid)
    # THEN every one succeeded, the toggles alternate, and the history holds 16
    assert all(o["state"] == "SUCCEEDED" for o in done.values())
    assert [o["result"]["led"] for o in done.values()][:4] == ["on", "off", "on", "off"]
    assert len(read_shadow(iot_data, THING, "commands")["state"]["reported"]) == 16
    # WHEN it restarts to the largest commands document: 16 outcomes and 10 pending
    fw.stop()
    later = [uuid.uuid4().hex for _ in range(10)]
    for cid in later:
        queue_command(iot_data, THING, cid, command("ping"))
    fw.start()
    # THEN it reads it and runs all 10, still alive, and the history is pruned back to 16
    for cid in later:
        assert wait_until(lambda c=cid: fw.alive() and outcome_in_shadow(iot_data, THING, c), cid)["state"] == "SUCCEEDED"
    reported = read_shadow(iot_data, THING, "commands")["state"]["reported"]
    assert set(later) <= set(reported) and len(reported) == 16
    assert fw.alive()


def test_a_command_is_not_undone_by_an_older_desired_value(start_firmware: StartFirmware, device_config, iot_data) -> None:
    import json

    # GIVEN a device whose classic shadow wants the led off (and it is off)
    start_firmware(device_config)
    iot_data.update_thing_shadow(thingName=THING, payload=json.dumps({"state": {"desired": {"led": "off"}}}))
    # WHEN a command turns the led on
    queue_command(iot_data, THING, "on-1", command("led", {"state": "on"}))
    assert wait_until(lambda: outcome_in_shadow(iot_data, THING, "on-1"), "on-1")["state"] == "SUCCEEDED"
    # THEN, once a later command has completed too, the led is still on and nothing wants it off
    queue_command(iot_data, THING, "after", command("ping"))
    wait_until(lambda: outcome_in_shadow(iot_data, THING, "after"), "after")
    state = read_shadow(iot_data, THING)["state"]
    assert state["reported"]["led"] == "on"
    assert "led" not in state.get("desired", {})
    assert "delta" not in state


@pytest.fixture
def api(iotcore: IotCoreProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The API function, in-process, on the local shadow service (only its endpoint differs from AWS)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_IOT_DATA_PLANE", iotcore.url)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "iotbridge-test")
    from iotbridge_api import iot, waiting
    from iotbridge_local.testclient import ApiClient

    iot._clients.clear()
    waiting.forget()
    yield ApiClient()
    iot._clients.clear()
    waiting.forget()


def test_the_api_refuses_a_retry_with_other_params_of_a_command_the_esp32_finished(
    start_firmware: StartFirmware, device_config, iot_data, api
) -> None:
    from iotbridge_contract.commands import params_digest

    # GIVEN the firmware connected, and a toggle with a caller-chosen id that it finished through the API
    fw = start_firmware(device_config)
    wait_until(lambda: "actions" in read_shadow(iot_data, THING)["state"].get("reported", {}), "actions reported")
    body = {"action": "led", "params": {"state": "toggle"}, "id": "esp-toggle-1"}
    done = api.post(f"/devices/{THING}/commands", json=body)
    assert done.status == 200 and done.json["state"] == "SUCCEEDED", done.body
    # THEN its outcome carries the digest of its params, as iotbridge_contract defines it
    assert outcome_in_shadow(iot_data, THING, "esp-toggle-1")["paramsDigest"] == params_digest({"state": "toggle"})
    # WHEN the same id is posted again with other params
    other = api.post(f"/devices/{THING}/commands", json={**body, "params": {"state": "on"}})
    # THEN the API refuses it as a conflict (it compares params, not only the action)
    assert other.status == 409 and other.json["code"] == "ID_CONFLICT", other.body
    # AND a true retry (same params) gets the same outcome, and the toggle did not run again
    again = api.post(f"/devices/{THING}/commands", json=body)
    assert again.status == 200 and again.json["result"] == done.json["result"] == {"led": "on"}, again.body
    assert sum("done esp-toggle-1" in line for line in fw.lines) == 1


def test_a_restart_to_more_outcomes_than_it_keeps_prunes_the_oldest_by_their_done_time(
    start_firmware: StartFirmware, device_config, iot_data
) -> None:
    import json

    # GIVEN a commands shadow holding 20 outcomes (more than the 16 a device keeps), whose doneAt
    # order is neither their ids' order nor the order they were written in; two finished in the same ms
    done_at = {f"o{i:02d}": 1_700_000_000_000 + (i * 7) % 20 for i in range(20)}
    done_at["o19"] = done_at["o18"]
    outcomes = {cid: {"state": "SUCCEEDED", "action": "ping", "result": {"pong": True}, "doneAt": t}
                for cid, t in done_at.items()}  # fmt: skip
    iot_data.update_thing_shadow(thingName=THING, shadowName="commands",
                                 payload=json.dumps({"state": {"reported": outcomes}}))  # fmt: skip
    by_age = sorted(done_at, key=lambda c: (done_at[c], c))
    # WHEN the firmware starts and reads it
    start_firmware(device_config)
    # THEN it nulls the 4 that finished first, and keeps the 16 newest
    kept = wait_until(lambda: len(r := read_shadow(iot_data, THING, "commands")["state"]["reported"]) == 16 and r,
                      "the outcomes pruned to 16")  # fmt: skip
    assert set(kept) == set(by_age[4:])
    # AND its next outcome nulls the oldest of those, by doneAt (then id), not another
    queue_command(iot_data, THING, "next", command("ping"))
    assert wait_until(lambda: outcome_in_shadow(iot_data, THING, "next"), "next")["state"] == "SUCCEEDED"
    assert set(read_shadow(iot_data, THING, "commands")["state"]["reported"]) == set(by_age[5:]) | {"next"}


@pytest.fixture
def throttled_iotcore(broker: Broker, stack_config: StackConfig) -> Iterator[IotCoreProcess]:
    """The shadow service with AWS IoT's limit on: 20 requests/s per thing (429 beyond)."""
    core = IotCoreProcess(stack_config.data_dir / "iotcore", broker.service_endpoint(), stack_config.iot_http_port,
                          max_rate=20)
    core.start()
    yield core
    core.stop()


def test_the_esp32_works_through_ten_queued_commands_without_being_throttled(
    start_firmware: StartFirmware, device_config, throttled_iotcore: IotCoreProcess, broker: Broker
) -> None:
    import json
    import threading

    from iotbridge_contract import topics
    from iotbridge_contract.commands import COMMANDS_SHADOW
    from iotbridge_contract.mqtt import make_client

    iot_data = throttled_iotcore.iot_data()
    # GIVEN an ESP32 connected to a shadow service that throttles as AWS does, and a listener
    # for the rejections of its MQTT requests (the service publishes those on .../rejected)
    throttled: list[dict[str, Any]] = []
    subscribed = threading.Event()
    listener = make_client("iotbridge.rejections", broker.service_endpoint())
    listener.on_subscribe = lambda *a: subscribed.set()
    listener.on_message = lambda c, u, m: throttled.append(doc) if (doc := json.loads(m.payload)).get("code") == 429 else None
    listener.connect(broker.service_endpoint().host, broker.service_endpoint().port)
    shadows = topics.shadow_topic(THING, "update").removesuffix("/update")
    listener.subscribe([(f"{shadows}/+/rejected", 1), (f"{shadows}/name/{COMMANDS_SHADOW}/+/rejected", 1)])
    listener.loop_start()
    try:
        assert subscribed.wait(5)
        start_firmware(device_config)
        wait_until(lambda: "actions" in read_shadow(iot_data, THING)["state"].get("reported", {}), "actions reported",
                   every=0.5)
        time.sleep(1.5)  # the bucket refills after the connect's own requests
        # WHEN ten commands that each change its state (a state update and an outcome update
        # each: twenty requests) are queued at once, in one update
        entries = {f"burst-{i}": command("led", {"state": "toggle"}) for i in range(10)}
        iot_data.update_thing_shadow(thingName=THING, shadowName=COMMANDS_SHADOW,
                                     payload=json.dumps({"state": {"desired": entries}}))
        # THEN all ten succeed (read twice a second: the reads count against the thing's limit too)
        outcomes = [wait_until(lambda c=cid: outcome_in_shadow(iot_data, THING, c), cid, every=0.5) for cid in entries]
        assert [o["state"] for o in outcomes] == ["SUCCEEDED"] * 10
        time.sleep(1)
        # AND the device paced itself: none of its requests was refused for the rate
        assert throttled == []
    finally:
        listener.loop_stop()
        listener.disconnect()
