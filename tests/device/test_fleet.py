"""The fleet simulator: many devices in one process, each a real mutual-TLS MQTT connection."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from iotbridge_local.broker import Broker
from iotbridge_pi.fleet import Fleet

from .conftest import Shadows, wait_for

StartFleet = Callable[[list[str]], Fleet]


@pytest.fixture
def start_fleet(broker: Broker, tmp_path: Path) -> Iterator[StartFleet]:
    running: list[tuple[Fleet, threading.Event, threading.Thread]] = []

    def start(things: list[str]) -> Fleet:
        fleet = Fleet(endpoint_factory=broker.device_endpoint, things=things, state_dir=tmp_path / "fleet")
        stop = threading.Event()
        thread = threading.Thread(target=fleet.run, args=(stop,), daemon=True)
        thread.start()
        running.append((fleet, stop, thread))
        return fleet

    yield start
    for fleet, stop, thread in running:
        stop.set()
        fleet.wake()
        thread.join(30)


def test_every_simulated_device_connects_and_advertises_itself(start_fleet: StartFleet, shadows: Shadows) -> None:
    # GIVEN a fleet of 300 simulated devices
    things = [f"sim-{i:03d}" for i in range(300)]

    # WHEN it runs
    fleet = start_fleet(things)

    # THEN every device holds its own connection and reports its actions, marked as simulated
    wait_for(lambda: fleet.connected == len(things), "all devices connected", timeout=120)
    wait_for(lambda: all(shadows.reported(t).get("actions") for t in things), "all advertised", timeout=120)
    agent = shadows.reported("sim-299")["agent"]
    assert agent["kind"] == "fleet-sim" and agent["hardware"] == "simulated"
    assert fleet.pump.open_connections == len(things)


def test_commands_reach_the_right_simulated_device(start_fleet: StartFleet, shadows: Shadows) -> None:
    # GIVEN a running fleet
    things = [f"sim-{i}" for i in range(10)]
    fleet = start_fleet(things)
    wait_for(lambda: fleet.connected == len(things), "all devices connected")

    # WHEN two devices get different commands
    shadows.add_command("sim-3", "f-led", "led", {"state": "on"})
    shadows.add_command("sim-7", "f-relay", "relay", {"on": True})

    # THEN each answers its own, and only its own state changed
    assert shadows.outcome("sim-3", "f-led")["result"] == {"led": "on"}
    assert shadows.outcome("sim-7", "f-relay")["result"] == {"relay": True}
    assert fleet.sessions["sim-3"].device.led == "on" and fleet.sessions["sim-7"].device.led == "off"
    assert fleet.sessions["sim-7"].device.relay is True and fleet.sessions["sim-3"].device.relay is False
    assert fleet.commands_run == 2


def test_a_restarted_fleet_does_not_rerun_done_commands(broker: Broker, tmp_path: Path, shadows: Shadows) -> None:
    # GIVEN a fleet whose device sim-1 toggled its LED for command once-1, then the fleet stopped
    def run(stop: threading.Event) -> tuple[Fleet, threading.Thread]:
        fleet = Fleet(endpoint_factory=broker.device_endpoint, things=["sim-1"], state_dir=tmp_path / "fleet")
        thread = threading.Thread(target=fleet.run, args=(stop,), daemon=True)
        thread.start()
        wait_for(lambda: fleet.connected == 1, "sim-1 connected")
        return fleet, thread

    stop = threading.Event()
    first, thread = run(stop)
    shadows.add_command("sim-1", "once-1", "led", {"state": "toggle"})
    outcome = shadows.outcome("sim-1", "once-1")
    stop.set()
    first.wake()
    thread.join(30)
    assert not thread.is_alive()

    # WHEN the same id is pending again and the fleet starts over on the same state dir
    shadows.add_command("sim-1", "once-1", "led", {"state": "toggle"})
    stop = threading.Event()
    second, thread = run(stop)
    try:
        # THEN the logged outcome is re-reported and the LED is not toggled again
        wait_for(lambda: "once-1" not in shadows.commands("sim-1").get("desired", {}), "once-1 answered")
        assert shadows.commands("sim-1")["reported"]["once-1"] == outcome
        assert second.commands_run == 0
    finally:
        stop.set()
        second.wake()
        thread.join(30)
