"""The hardware shim: machine.Pin on a board, a simulated pin elsewhere (the unix port).

Everything the handlers touch goes through here, so the same handlers run on
an ESP32 and under `micropython` on a PC.
"""

import sys

try:
    import machine
except ImportError:
    machine = None

SIMULATED = machine is None or not hasattr(machine, "Pin")


class SimPin:
    """Stands in for machine.Pin(n, Pin.OUT): remembers its value."""

    def __init__(self, num):
        self.num = num
        self._v = 0

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = 1 if v else 0
        return None


def output_pin(num):
    if SIMULATED:
        return SimPin(num)
    return machine.Pin(num, machine.Pin.OUT)


class Reboot(Exception):
    """Raised by reset() when simulated: main.py starts the firmware again, as a reboot would."""


def reset():
    if SIMULATED:
        raise Reboot()
    machine.reset()


def mcu_temperature():
    """The chip's own temperature in °C (ESP32 has a sensor; simulated: a fixed 21.5)."""
    if not SIMULATED:
        try:
            import esp32

            if hasattr(esp32, "mcu_temperature"):
                return esp32.mcu_temperature()
            return round((esp32.raw_temperature() - 32) / 1.8, 1)
        except (ImportError, AttributeError, OSError):
            pass
    return 21.5


def unique_id():
    if not SIMULATED and hasattr(machine, "unique_id"):
        return "".join("%02x" % b for b in machine.unique_id())
    return "sim-" + sys.platform
