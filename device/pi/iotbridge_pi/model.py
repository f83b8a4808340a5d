"""The device's own state: what it reports in the classic shadow and what `desired` may change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iotbridge_pi.hardware import Hardware

# Specs of the classic shadow keys that `desired` may set (same language as actions).
DESIRED_SPECS = {"led": "enum:on|off", "relay": "bool", "interval": "int:1..3600"}


@dataclass
class RebootRequest:
    delay_ms: int


class DeviceModel:
    def __init__(self, hardware: Hardware, *, interval_s: int) -> None:
        self.hardware = hardware
        self.interval_s = interval_s
        self.reboot: RebootRequest | None = None  # set by the reboot handler, acted on by the session

    @property
    def led(self) -> str:
        return "on" if self.hardware.led.is_on else "off"

    def set_led(self, state: str) -> str:
        on = not self.hardware.led.is_on if state == "toggle" else state == "on"
        self.hardware.led.set(on)
        return self.led

    @property
    def relay(self) -> bool:
        return self.hardware.relay.is_on

    def set_relay(self, on: bool) -> bool:
        self.hardware.relay.set(on)
        return self.relay

    def state(self) -> dict[str, Any]:
        """The keys `desired` can target, as they are now."""
        return {"led": self.led, "relay": self.relay, "interval": self.interval_s}

    def apply(self, changes: dict[str, Any]) -> None:
        """Apply already validated desired changes (see protocol.desired_changes)."""
        if "led" in changes:
            self.set_led(changes["led"])
        if "relay" in changes:
            self.set_relay(changes["relay"])
        if "interval" in changes:
            self.interval_s = int(changes["interval"])
