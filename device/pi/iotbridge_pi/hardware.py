"""The device's hardware behind a small interface: real GPIO on a Pi, simulated elsewhere.

Which one is used follows from what exists (gpiozero importable and able to
drive a pin) or from configuration (`hardware = "gpio" | "simulated"`), never
from a notion of "local".
"""

from __future__ import annotations

import logging
import os
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


class Switch(Protocol):
    """A digital output: an LED or a relay coil."""

    @property
    def is_on(self) -> bool: ...

    def set(self, on: bool) -> None: ...


class SimulatedSwitch:
    def __init__(self) -> None:
        self._on = False

    @property
    def is_on(self) -> bool:
        return self._on

    def set(self, on: bool) -> None:
        self._on = on


class GpioSwitch:
    """A gpiozero output device on a BCM pin."""

    def __init__(self, pin: int) -> None:
        from gpiozero import DigitalOutputDevice  # only on a Pi

        self._dev: Any = DigitalOutputDevice(pin, initial_value=False)

    @property
    def is_on(self) -> bool:
        return bool(self._dev.value)

    def set(self, on: bool) -> None:
        if on:
            self._dev.on()
        else:
            self._dev.off()


class Sensors:
    """CPU temperature from the kernel's thermal zone when there is one, simulated when not."""

    def __init__(self, thermal_zone: Path | None = THERMAL_ZONE, rng: random.Random | None = None) -> None:
        self.thermal_zone = thermal_zone if thermal_zone is not None and thermal_zone.exists() else None
        self._rng = rng or random.Random()
        self._started = time.monotonic()

    @property
    def simulated(self) -> bool:
        return self.thermal_zone is None

    def cpu_temperature_c(self) -> float:
        if self.thermal_zone is not None:
            try:
                return round(int(self.thermal_zone.read_text().strip()) / 1000.0, 1)
            except (OSError, ValueError):
                pass
        return round(45.0 + self._rng.uniform(-3.0, 3.0), 1)

    def uptime_s(self) -> int:
        try:
            return int(float(Path("/proc/uptime").read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            return int(time.monotonic() - self._started)

    def load1(self) -> float:
        try:
            return round(os.getloadavg()[0], 2)
        except OSError:
            return 0.0

    def read(self) -> dict[str, Any]:
        return {
            "cpuTempC": self.cpu_temperature_c(),
            "uptimeS": self.uptime_s(),
            "load1": self.load1(),
            "simulatedTemp": self.simulated,
        }


@dataclass
class Hardware:
    led: Switch
    relay: Switch
    sensors: Sensors
    kind: str  # "gpio" or "simulated", reported in the shadow so nobody is misled


def simulated_hardware(*, sensors: Sensors | None = None) -> Hardware:
    return Hardware(SimulatedSwitch(), SimulatedSwitch(), sensors or Sensors(thermal_zone=None), "simulated")


def open_hardware(mode: str, *, led_pin: int, relay_pin: int) -> Hardware:
    """`gpio`: must work; `simulated`: never touches pins; `auto`: GPIO if it can be driven."""
    if mode not in ("auto", "gpio", "simulated"):
        raise ValueError(f"hardware must be auto, gpio or simulated, not {mode!r}")
    if mode != "simulated":
        try:
            with warnings.catch_warnings():
                if mode == "auto":  # gpiozero warns about each pin library it tries; one line below says it all
                    warnings.simplefilter("ignore")
                hw = Hardware(GpioSwitch(led_pin), GpioSwitch(relay_pin), Sensors(), "gpio")
            log.info("GPIO: LED on BCM %d, relay on BCM %d", led_pin, relay_pin)
            return hw
        except Exception as exc:  # ImportError, or gpiozero finding no pin factory
            if mode == "gpio":
                raise RuntimeError(f"GPIO requested but unavailable: {exc}") from exc
            log.info("no GPIO (%s): simulated LED and relay", exc)
    return Hardware(SimulatedSwitch(), SimulatedSwitch(), Sensors(), "simulated")
