"""The firmware's clocks across the wrap of the board's millisecond ticks, under the MicroPython unix port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.micropython.harness import run_mpy

pytestmark = pytest.mark.micropython

# The ESP32's ticks: milliseconds modulo 2**30, with ticks_diff/ticks_add as MicroPython defines them
# there (the unix port's period is 2**62, so its own ticks never wrap in a test).
_ESP32_TICKS = """
import app
import handlers
PERIOD = 1 << 30
clock = [PERIOD - 5000]  # the ticks wrap 5 s after boot
for module in (app, handlers):
    module.ticks_ms = lambda: clock[0] % PERIOD
    module.ticks_diff = lambda a, b: ((a - b + PERIOD // 2) % PERIOD) - PERIOD // 2
    module.ticks_add = lambda a, d: (a + d) % PERIOD
"""


def test_uptime_keeps_counting_past_the_wrap_of_the_boards_millisecond_ticks(tmp_path: Path) -> None:
    # GIVEN a device on a board whose millisecond ticks wrap every 12.4 days
    script = _ESP32_TICKS + """
import json
device = handlers.Device({})
seen = []
# WHEN it reports telemetry every hour (its longest interval) for 30 days
for hour in range(1, 30 * 24 + 1):
    clock[0] += 3_600_000
    seen.append(device.telemetry()["uptimeS"])
print(json.dumps(seen))
"""
    (seen,) = run_mpy(script, tmp_path)
    # THEN its uptime is the time since boot at every report, through the wraps (day 12.4 and 24.9)
    assert seen == [hour * 3600 for hour in range(1, 30 * 24 + 1)]



def test_the_service_clock_keeps_time_past_the_wrap_of_the_boards_millisecond_ticks(tmp_path: Path) -> None:
    # GIVEN a firmware that took the service's clock from a shadow document at boot
    script = _ESP32_TICKS + """
import json
class Clock:
    svc_ms = 1_795_000_000_999
    svc_at = app.ticks_ms()
firmware = Clock()
seen = []
# WHEN it reads the clock every hour (its telemetry's longest interval) for 30 days, with no
# shadow document in between (an idle device) to set it again
for hour in range(1, 30 * 24 + 1):
    clock[0] += 3_600_000
    seen.append(app.Firmware.now_ms(firmware) - 1_795_000_000_999)
print(json.dumps(seen))
"""
    (seen,) = run_mpy(script, tmp_path)
    # THEN it tells the service's time at every hour: commands are judged expired or not by it, and
    # a clock that fell back days would take an old delta's timestamp and run a long-expired command
    assert seen == [hour * 3_600_000 for hour in range(1, 30 * 24 + 1)]


# The firmware, with a stand-in for its MQTT client in connect and tick that records what it sends.
_FIRMWARE = """
import json
import config
cfg = config.load("config.json")
app.log = lambda *args: None  # its log lines are not JSON
firmware = app.Firmware(cfg)
class Client:
    def __init__(self):
        self.sent = []
        self.last_rx = self.last_io = app.ticks_ms()
    def connect(self, clean_session):
        self.clean = clean_session
        self.last_rx = self.last_io = app.ticks_ms()
        return False
    def disconnect(self):
        self.sent.append("disconnect")
    def subscribe(self, topics, qos):
        self.sent.append("subscribe")
    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append(topic.split("/")[-1])
        self.last_io = app.ticks_ms()
    def ping(self):
        self.sent.append("ping")
        self.last_io = app.ticks_ms()
    def pong(self):
        self.last_rx = app.ticks_ms()
firmware.client = client = Client()
"""


def test_after_days_offline_the_firmware_pings_and_reports_telemetry_again(tmp_path: Path) -> None:
    # GIVEN a firmware that ran connected for a minute, then lost the broker for 8 days
    (tmp_path / "config.json").write_text('{"thing": "esp32-ticks", "keepalive": 60}')
    script = _ESP32_TICKS + _FIRMWARE + """
firmware._connect()
for second in range(60):
    clock[0] += 1000
    firmware._tick()
    client.pong()
clock[0] += 8 * 86_400_000
# WHEN it connects again and runs for two minutes, the broker answering each ping
firmware._connect()
client.sent.clear()
for second in range(120):
    clock[0] += 1000
    firmware._tick()
    if client.sent and client.sent[-1] == "ping":
        client.pong()
print(json.dumps(client.sent))
"""
    (sent,) = run_mpy(script, tmp_path)
    # THEN it reports telemetry at once and a minute later, and pings the broker, whose answers keep
    # the connection (its own "broker silent" check would raise in the loop and end the script):
    # before, both stamps read as days in the future, and nothing was sent until the broker dropped it
    assert sent[0] == "update" and sent.count("update") == 2, sent
    assert sent.count("ping") >= 2, sent


# The service's time, and the commands documents it stamps with it (a get's answer, a delta).
_SERVICE_DOCS = """
GOT, DELTA = 4, 3  # app._C_GOT, app._C_DELTA: const() names with a leading _ are not module attributes
true_ms = 1_795_000_000_000
def doc(ts_s):
    return json.dumps({"state": {}, "timestamp": ts_s, "version": 1})
"""


def test_a_board_whose_crystal_runs_fast_keeps_the_service_clock_and_runs_commands_for_months(tmp_path: Path) -> None:
    # GIVEN a board whose ticks run 20 ppm fast (an ESP32's crystal is specified to 10 ppm), that took the
    # service's clock from its get at boot
    (tmp_path / "config.json").write_text('{"thing": "esp32-drift"}')
    script = _ESP32_TICKS + _FIRMWARE + _SERVICE_DOCS + """
firmware._connect()
firmware._parse(GOT, doc(true_ms // 1000))
most = least = backwards = back = 0
retaken = []
# WHEN for 120 days its loop runs and a commands delta arrives every hour, stamped with the service's time
for hour in range(120 * 24):
    true_ms += 3_600_000
    clock[0] += 3_600_072  # 20 ppm fast
    client.pong()
    client.sent.clear()
    before = firmware.now_ms()
    try:
        firmware._tick()
    except app.MQTTError as e:  # the loop connects again, and reads its shadows
        firmware._connect()
        retaken.append([str(e), client.clean, "disconnect" in client.sent])
        firmware._parse(GOT, doc(true_ms // 1000))
    firmware._parse(DELTA, doc(true_ms // 1000))
    now = firmware.now_ms()
    backwards += now < before
    back = max(back, before - now)
    most, least = max(most, now - true_ms), min(least, now - true_ms)
print(json.dumps([most, least, backwards, back, len(retaken), retaken[:1]]))
"""
    (figures,) = run_mpy(script, tmp_path)
    most_ahead, least_ahead, backwards, back, times, first = figures
    # THEN once a day it says goodbye and connects again with a clean session (nothing held for it can
    # carry an old clock), and takes the clock from its get's answer, so the clock stays within a day's
    # drift (1.7 s) and the second AWS stamps: before, it only ever moved forward and ran 3.5 minutes
    # ahead by then, so every command with the default 60 s ttl was answered EXPIRED on arrival
    assert first == [["resync", True, True]] and 115 <= times <= 120, figures
    assert most_ahead < 3_000 and least_ahead >= 0, figures
    # AND it went back only when it took the clock afresh, by at most the day's drift and the rounding
    # (an outcome then may carry a doneAt that much before the one before it)
    assert backwards <= times and back < 3_000, figures


def test_a_backlog_of_deltas_that_waited_in_the_broker_never_takes_the_service_clock_back(tmp_path: Path) -> None:
    # GIVEN a firmware that took the service's clock from its get, then was away an hour
    (tmp_path / "config.json").write_text('{"thing": "esp32-backlog"}')
    script = _ESP32_TICKS + _FIRMWARE + _SERVICE_DOCS + """
firmware._parse(GOT, doc(true_ms // 1000))
clock[0] += 3_600_000
true_ms += 3_600_000
# WHEN on its return the broker delivers 60 deltas queued for its session while it was away, oldest first
before = firmware.now_ms()
for i in range(60):
    firmware._parse(DELTA, doc((true_ms - 3_600_000 + i * 60_000) // 1000))
print(json.dumps([firmware.now_ms() - before, before - true_ms]))
"""
    (figures,) = run_mpy(script, tmp_path)
    moved, ahead = figures
    # THEN its clock has not moved back at all: set back a second per delta, it fell a minute behind
    # the service, and a command that expired within that minute would have run
    assert moved == 0 and 0 <= ahead < 1000, figures
