"""A fleet of simulated devices in one process, each a real MQTT connection.

Every virtual device is a `DeviceSession` (the agent's own code) with
simulated hardware, its own executed log under `state_dir/{thing}/`, and its
own paho client; one `Pump` (a selector loop) drives them all, so thousands fit
on two cores. Connections are opened at `connect_rate` per second so a big fleet
does not hit the broker and the shadow service with one storm.

    stop = threading.Event()
    run_fleet(endpoint_factory=lambda thing: Endpoint(host=..., port=...),
              things=["sim-0001", "sim-0002"], state_dir=Path(".iotbridge/fleet"), stop_event=stop)
"""

from __future__ import annotations

import contextlib
import logging
import random
import resource
import threading
from collections.abc import Callable
from pathlib import Path

from iotbridge_contract import names
from iotbridge_contract.mqtt import Endpoint
from iotbridge_contract.stopflag import StopFlag
from iotbridge_pi.executed_log import ExecutedLog
from iotbridge_pi.handlers import Registry, default_registry
from iotbridge_pi.hardware import Sensors, simulated_hardware
from iotbridge_pi.model import DeviceModel
from iotbridge_pi.pump import Pump
from iotbridge_pi.runner import start_inline
from iotbridge_pi.session import DeviceSession, SessionOptions

log = logging.getLogger(__name__)


def _raise_fd_limit() -> None:
    """One socket per device: lift the soft descriptor limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Fleet:
    def __init__(
        self,
        *,
        endpoint_factory: Callable[[str], Endpoint],
        things: list[str],
        state_dir: Path,
        telemetry_interval: int = 60,
        connect_rate: float = 200.0,
        keepalive: int = 60,
        registry_factory: Callable[[], Registry] = default_registry,
    ) -> None:
        for thing in things:
            names.thing_name(thing)
        if len(set(things)) != len(things):
            raise ValueError("thing names in a fleet must be unique")
        _raise_fd_limit()
        self.pump = Pump()
        self.sessions: dict[str, DeviceSession] = {}
        for i, thing in enumerate(things):
            device_dir = Path(state_dir) / thing
            device = DeviceModel(
                simulated_hardware(sensors=Sensors(thermal_zone=None, rng=random.Random(thing))),
                interval_s=telemetry_interval,
            )
            session = DeviceSession(
                thing,
                endpoint_factory(thing),
                # fsync off: thousands of devices share one disk; a killed process still leaves a readable log.
                state_dir_log=lambda d=device_dir: ExecutedLog(d, fsync=False),  # type: ignore[misc]
                device=device,
                registry=registry_factory(),
                start_job=start_inline,
                options=SessionOptions(keepalive=keepalive, kind="fleet-sim", first_connect_delay=i / connect_rate),
            )
            self.sessions[thing] = session
            self.pump.add(session)

    @property
    def connected(self) -> int:
        return sum(1 for s in self.sessions.values() if s.connected)

    @property
    def commands_run(self) -> int:
        return sum(s.commands_run for s in self.sessions.values())

    def run(self, stop_event: threading.Event | StopFlag) -> None:
        log.info("fleet of %d simulated devices starting", len(self.sessions))
        try:
            self.pump.run(stop_event)
        finally:
            self.pump.close()

    def wake(self) -> None:
        """Make a stop request noticed at once (from any thread)."""
        self.pump.notify_threadsafe()


def run_fleet(
    *,
    endpoint_factory: Callable[[str], Endpoint],
    things: list[str],
    state_dir: Path,
    stop_event: threading.Event | StopFlag,
    telemetry_interval: int = 60,
    connect_rate: float = 200.0,
) -> None:
    """Run the fleet until `stop_event` is set (noticed within half a second), then disconnect cleanly."""
    Fleet(
        endpoint_factory=endpoint_factory,
        things=things,
        state_dir=state_dir,
        telemetry_interval=telemetry_interval,
        connect_rate=connect_rate,
    ).run(stop_event)
