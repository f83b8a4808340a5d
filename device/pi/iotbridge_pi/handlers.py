"""Command handlers, looked up by action name in a registry.

The registry is also the device's advertisement (`reported.actions`): an
action exists on the device exactly when it is registered here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from iotbridge_pi.model import DeviceModel, RebootRequest

HandlerFn = Callable[[DeviceModel, dict[str, Any]], Any]


@dataclass(frozen=True)
class Action:
    name: str
    params: dict[str, str]  # param -> spec (iotbridge_contract.actions)
    handler: HandlerFn
    deadline_s: float = 5.0  # past this the outcome is TIMED_OUT


class Registry:
    def __init__(self, actions: list[Action] | None = None) -> None:
        self._actions: dict[str, Action] = {}
        for action in actions or []:
            self.add(action)

    def add(self, action: Action) -> None:
        self._actions[action.name] = action

    def get(self, name: str) -> Action | None:
        return self._actions.get(name)

    def __iter__(self) -> Iterator[Action]:
        return iter(self._actions.values())

    def advertisement(self) -> dict[str, dict[str, str]]:
        """`reported.actions` of the classic shadow."""
        return {a.name: dict(a.params) for a in self._actions.values()}


def _led(device: DeviceModel, params: dict[str, Any]) -> Any:
    return {"led": device.set_led(params["state"])}


def _relay(device: DeviceModel, params: dict[str, Any]) -> Any:
    return {"relay": device.set_relay(params["on"])}


def _ping(device: DeviceModel, params: dict[str, Any]) -> Any:
    return {"pong": True}


def _read_sensors(device: DeviceModel, params: dict[str, Any]) -> Any:
    return device.hardware.sensors.read()


def _reboot(device: DeviceModel, params: dict[str, Any]) -> Any:
    # The outcome is reported first; the session reboots once it is sent.
    delay_ms = int(params.get("delayMs", 0))
    device.reboot = RebootRequest(delay_ms)
    return {"rebooting": True, "delayMs": delay_ms}


def _set_interval(device: DeviceModel, params: dict[str, Any]) -> Any:
    device.interval_s = int(params["seconds"])
    return {"interval": device.interval_s}


def default_registry() -> Registry:
    return Registry(
        [
            Action("led", {"state": "enum:on|off|toggle"}, _led, deadline_s=2.0),
            Action("relay", {"on": "bool"}, _relay, deadline_s=2.0),
            Action("ping", {}, _ping, deadline_s=1.0),
            Action("read_sensors", {}, _read_sensors, deadline_s=3.0),
            Action("reboot", {"delayMs": "int:0..10000?"}, _reboot, deadline_s=1.0),
            Action("set_interval", {"seconds": "int:1..3600"}, _set_interval, deadline_s=1.0),
        ]
    )
