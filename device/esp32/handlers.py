"""What the device can do: the actions it advertises and the handlers behind them.

Handlers change device state and return a small result; they never talk to
MQTT. The main loop reports outcomes and state.
"""

import gc
from time import ticks_add, ticks_diff, ticks_ms

import hw

# Advertised in the classic shadow's reported.actions (docs/protocol.md).
ACTIONS = {
    "led": {"state": "enum:on|off|toggle"},
    "relay": {"on": "bool"},
    "ping": {},
    "read_sensors": {},
    "reboot": {"delayMs": "int:0..10000?"},
    "set_interval": {"seconds": "int:1..3600"},
}
DEADLINE_MS = 5000  # a handler that runs longer is reported TIMED_OUT


class Device:
    def __init__(self, pins):
        self.led_pin = hw.output_pin(pins.get("led", 2))
        self.relay_pin = hw.output_pin(pins.get("relay", 4))
        self.interval = 60  # telemetry period, seconds
        self.reboot_in = None  # ms; set by the reboot handler, acted on by the main loop
        self.up_s = 0  # whole seconds since boot, added up as they pass (uptime_s)
        self.up_at = ticks_ms()

    # -- state, as reported in the classic shadow ------------------------------
    def state(self):
        return {
            "led": "on" if self.led_pin.value() else "off",
            "relay": bool(self.relay_pin.value()),
            "interval": self.interval,
        }

    def apply_desired(self, desired):
        """Apply the known keys of a classic-shadow delta; returns the keys applied."""
        applied = []
        led = desired.get("led")
        if led in ("on", "off"):
            self.led_pin.value(led == "on")
            applied.append("led")
        relay = desired.get("relay")
        if isinstance(relay, bool):
            self.relay_pin.value(relay)
            applied.append("relay")
        interval = desired.get("interval")
        if isinstance(interval, int) and not isinstance(interval, bool) and 1 <= interval <= 3600:
            self.interval = interval
            applied.append("interval")
        return applied

    def telemetry(self):
        gc.collect()
        return {
            "temperature": hw.mcu_temperature(),
            "uptimeS": self.uptime_s(),
            "memFree": gc.mem_free(),
        }

    def uptime_s(self):
        # ticks_ms wraps (every 2**30 ms, 12.4 days, on the ESP32) and ticks_diff is right for
        # half that: seconds are added up at each call, which the main loop makes at least hourly.
        s = ticks_diff(ticks_ms(), self.up_at) // 1000
        self.up_s += s
        self.up_at = ticks_add(self.up_at, s * 1000)
        return self.up_s

    # -- handlers -------------------------------------------------------------
    def run(self, action, p):
        """Run a validated command; returns its result or raises (FAILED).

        One method, not one per action: on a small heap every function object costs.
        """
        if action == "led":
            s = p["state"]
            on = (not self.led_pin.value()) if s == "toggle" else s == "on"
            self.led_pin.value(on)
            return {"led": "on" if on else "off"}
        if action == "relay":
            self.relay_pin.value(p["on"])
            return {"relay": p["on"]}
        if action == "ping":
            return {"pong": True}
        if action == "read_sensors":
            return self.telemetry()
        if action == "reboot":
            self.reboot_in = p.get("delayMs", 0)
            return {"rebooting": True, "delayMs": self.reboot_in}
        if action == "set_interval":
            self.interval = p["seconds"]
            return {"interval": self.interval}
        raise ValueError("no handler for " + action)
