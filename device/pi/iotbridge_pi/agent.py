"""The Raspberry Pi agent: one device session on one selector loop.

agent = Agent(AgentConfig(...))       # or Agent(config.load(path))
agent.run_forever()                   # until agent.stop() (any thread) or SIGTERM via main()
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from iotbridge_contract.stopflag import StopFlag
from iotbridge_pi.config import AgentConfig
from iotbridge_pi.executed_log import ExecutedLog
from iotbridge_pi.handlers import Registry, default_registry
from iotbridge_pi.hardware import Hardware, open_hardware
from iotbridge_pi.model import DeviceModel
from iotbridge_pi.pump import Pump
from iotbridge_pi.runner import threaded_starter
from iotbridge_pi.session import DeviceSession, SessionOptions

log = logging.getLogger(__name__)


def _system_reboot() -> bool:
    """Whether the system took the reboot. Its outcome (SUCCEEDED, "rebooting") is already in the
    shadow; if the system refuses (no polkit rule, see docs/devices.md) the agent says so and goes on."""
    try:
        result = subprocess.run(["systemctl", "reboot"], check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("reboot failed: %s", exc)
        return False
    if result.returncode != 0:
        log.error("reboot refused (exit %d): %s", result.returncode, result.stderr.strip())
        return False
    return True


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        registry: Registry | None = None,
        hardware: Hardware | None = None,
    ) -> None:
        self.config = config
        self.stop_event = StopFlag()  # set from signal handlers: no lock (see StopFlag)
        self.pump = Pump()
        state_dir = Path(config.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        hw = hardware or open_hardware(config.hardware, led_pin=config.led_pin, relay_pin=config.relay_pin)
        self.device = DeviceModel(hw, interval_s=config.telemetry_interval)
        self.session = DeviceSession(
            config.thing,
            config.endpoint,
            state_dir_log=lambda: ExecutedLog(state_dir),
            device=self.device,
            registry=registry or default_registry(),
            start_job=threaded_starter(lambda: self.pump.notify_threadsafe(self.session)),
            options=SessionOptions(
                keepalive=config.keepalive,
                kind="pi-agent",
                reboot=_system_reboot if config.reboot == "system" else None,
            ),
        )
        self.pump.add(self.session)

    def run_forever(self) -> None:
        """Run until `stop()`; then finish a running command, report it, and disconnect cleanly."""
        log.info("agent %s -> %s:%d", self.config.thing, self.config.endpoint.host, self.config.endpoint.port)
        try:
            self.pump.run(self.stop_event)
        finally:
            self.pump.close()

    def stop(self) -> None:
        """Safe from any thread and from a signal handler, also re-entered by a second signal."""
        self.stop_event.set()
        self.pump.notify_threadsafe()

    @property
    def connected(self) -> bool:
        return self.session.connected
