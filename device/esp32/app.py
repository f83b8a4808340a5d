"""The firmware's main loop: connect, sync both shadows, run commands one at a time.

The MQTT callback only records messages into a short inbox; everything else
(parsing, running handlers, publishing) happens here, in one loop, in order.
Log lines on stdout start with "iotbridge:"; the tests read them.
"""

import gc
import json
import os
import sys

try:
    from time import sleep_ms, ticks_diff, ticks_ms
except ImportError:  # CPython tools only
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        time.sleep(ms / 1000)


import config
import hw
import net
from handlers import ACTIONS, DEADLINE_MS, Device
from ledger import Ledger
from mqtt import MQTTClient, MQTTError
from protocol import (
    COMMANDS,
    EXPIRED,
    FAILED,
    MAX_QUEUE,
    REJECTED,
    SUCCEEDED,
    TIMED_OUT,
    History,
    ServiceClock,
    check_params,
    expired,
    outcome,
    outcome_update,
    pending_commands,
    shadow_topic,
)

VERSION = "0.1.0"
INBOX_MAX = 4  # recorded messages awaiting the loop; beyond this we re-read the shadows
BACKOFF_BASE_MS = 500
BACKOFF_CAP_MS = 30000
SEP = (",", ":")  # compact JSON: fewer bytes on air and in the heap


def log(*args):
    print("iotbridge:", *args)


def tls_context(cfg):
    """Mutual TLS from DER files (MicroPython's ssl takes DER bytes, not PEM)."""
    import ssl

    def read(name):
        with open(name, "rb") as f:
            return f.read()

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(read(cfg["cert"]), read(cfg["key"]))
    ctx.load_verify_locations(cadata=read(cfg["ca"]))
    return ctx


class Firmware:
    def __init__(self, cfg):
        self.cfg = cfg
        thing = cfg["thing"]
        self.device = Device(cfg["pins"])
        self.ledger = Ledger(cfg["state"])
        self.clock = ServiceClock()
        self.history = History()
        self.inbox = []  # (topic, payload) recorded by the callback
        self.queue = []  # (id, entry): pending commands, run one at a time
        self.resync = False  # the inbox overflowed or the queue was full: re-read the shadows
        self.reboot_at = None
        self.telemetry_at = 0
        self.t_update = shadow_topic(thing, "update")
        self.t_get = shadow_topic(thing, "get")
        self.t_delta = shadow_topic(thing, "update/delta")
        self.t_got = shadow_topic(thing, "get/accepted")
        self.c_update = shadow_topic(thing, "update", COMMANDS)
        self.c_get = shadow_topic(thing, "get", COMMANDS)
        self.c_delta = shadow_topic(thing, "update/delta", COMMANDS)
        self.c_got = shadow_topic(thing, "get/accepted", COMMANDS)
        self.client = MQTTClient(
            thing, cfg["host"], cfg["port"], keepalive=cfg["keepalive"], user=cfg["user"],
            password=cfg["password"], ssl_context=tls_context(cfg) if cfg["tls"] else None,
            server_hostname=cfg["server_hostname"],
        )
        self.client.set_callback(self._record)

    # -- the callback: record only ---------------------------------------------
    def _record(self, topic, payload):
        if len(self.inbox) >= INBOX_MAX:
            self.resync = True
            return
        self.inbox.append((topic, payload))

    # -- connection ---------------------------------------------------------------
    def run(self):
        attempt = 0
        while True:
            try:
                net.connect_wifi(self.cfg)
                self._connect()
                attempt = 0
                self._serve()
            except (OSError, MQTTError) as e:
                log("disconnected:", repr(e))
            self.client.close()
            self.inbox = []
            ceiling = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << min(attempt, 6))
            attempt += 1
            # Half fixed, half random: a fleet that lost its broker does not return in lockstep.
            jitter = (os.urandom(2)[0] << 8 | os.urandom(1)[0]) * (ceiling // 2) // 65536
            sleep_ms(ceiling // 2 + jitter)

    def _connect(self):
        kept = self.client.connect(clean_session=False)
        self.client.subscribe([self.t_delta, self.t_got, self.c_delta, self.c_got], qos=1)
        self._publish(self.t_update, {"state": {"reported": self._full_report()}})
        self._request_shadows()
        log("ready", "session-kept" if kept else "new-session")

    def _request_shadows(self):
        # An empty message asks for the whole document (AWS IoT: publish to …/get).
        self.client.publish(self.t_get, b"", qos=1)
        self.client.publish(self.c_get, b"", qos=1)
        self.resync = False

    def _publish(self, topic, doc, qos=1):
        self.client.publish(topic, json.dumps(doc, separators=SEP), qos=qos)

    # -- the loop -------------------------------------------------------------------
    def _serve(self):
        c = self.client
        while True:
            c.check_msg(0 if (self.queue or self.inbox) else 200)
            while len(self.inbox) < INBOX_MAX and c.check_msg(0):
                pass
            while self.inbox:
                topic, payload = self.inbox.pop(0)
                self._handle(topic, payload)
                del payload
            if self.resync and not self.queue:
                self._request_shadows()
            if self.queue:
                self._run_next()
            gc.collect()
            self._tick()

    def _tick(self):
        now = ticks_ms()
        c = self.client
        if self.reboot_at is not None and ticks_diff(now, self.reboot_at) >= 0:
            log("rebooting")
            c.disconnect()
            hw.reset()
        if ticks_diff(now, c.last_rx) > self.cfg["keepalive"] * 1500:
            raise MQTTError("broker silent past keepalive")
        if ticks_diff(now, c.last_io) > self.cfg["keepalive"] * 500:
            c.ping()
        if ticks_diff(now, self.telemetry_at) >= 0:
            self.telemetry_at = now + self.device.interval * 1000
            self._publish(self.t_update, {"state": {"reported": {"telemetry": self.device.telemetry()}}}, qos=0)

    def _handle(self, topic, payload):
        try:
            doc = json.loads(payload)
        except ValueError:
            log("ignored non-JSON on", topic)
            return
        if not isinstance(doc, dict):
            return
        self.clock.observe(doc)
        state = doc.get("state")
        if not isinstance(state, dict):
            state = {}
        if topic == self.c_delta:
            self._enqueue(state)
        elif topic == self.c_got:
            self.history.reset(state.get("reported"))
            self._enqueue(state.get("delta"))
        elif topic == self.t_delta:
            self._apply(state)
        elif topic == self.t_got:
            delta = state.get("delta")
            if isinstance(delta, dict):
                self._apply(delta)

    def _apply(self, delta):
        applied = self.device.apply_desired(delta)
        if applied:
            now = self.device.state()
            self._publish(self.t_update, {"state": {"reported": {k: now[k] for k in applied}}})
            log("applied", ",".join(applied))

    def _enqueue(self, section):
        for cid, entry in pending_commands(section):
            if any(q[0] == cid for q in self.queue):
                continue  # already waiting: a repeated delta or a redelivery
            if len(self.queue) >= MAX_QUEUE:
                self.resync = True  # the rest comes back with the next get
                return
            self.queue.append((cid, entry))

    # -- commands ------------------------------------------------------------------
    def _run_next(self):
        cid, entry = self.queue.pop(0)
        out = self.ledger.get(cid)
        if out is None:
            before = self.device.state()
            out = self._execute(cid, entry)
            self.ledger.done(cid, out)
            if self.device.state() != before:
                self._publish(self.t_update, {"state": {"reported": self.device.state()}})
        else:
            log("duplicate", cid)
        drop = self.history.add(cid)
        self._publish(self.c_update, outcome_update(cid, out, drop))
        log("done", cid, out["state"])
        if self.device.reboot_in is not None:
            self.reboot_at = ticks_ms() + self.device.reboot_in
            self.device.reboot_in = None

    def _execute(self, cid, entry):
        action = entry.get("action")
        now = self.clock.now_ms()
        if expired(entry, now):
            return outcome(EXPIRED, str(action), now, error="expired before the device could start it")
        specs = ACTIONS.get(action) if isinstance(action, str) else None
        if specs is None:
            return outcome(REJECTED, str(action), now, error="unknown action; known: " + ", ".join(sorted(ACTIONS)))
        params = entry.get("params")
        err = check_params(specs, {} if params is None else params)
        if err:
            return outcome(REJECTED, action, now, error=err)
        self.ledger.start(cid)  # from here on a restart must not start it again
        t0 = ticks_ms()
        result = error = None
        try:
            result = self.device.run(action, params or {})
            state = SUCCEEDED
        except Exception as e:  # a handler's failure is the command's outcome, not the loop's
            state, error = FAILED, "%s: %s" % (type(e).__name__, e)
        if ticks_diff(ticks_ms(), t0) > DEADLINE_MS:
            state = TIMED_OUT
        return outcome(state, action, self.clock.now_ms(), result, error)

    def _full_report(self):
        rep = self.device.state()
        rep["actions"] = ACTIONS
        rep["agent"] = {
            "kind": "esp32",
            "firmware": VERSION,
            "micropython": "%d.%d.%d" % sys.implementation.version[:3],
            "platform": sys.platform,
            "id": hw.unique_id(),
        }
        return rep


def main(config_path="config.json"):
    cfg = config.load(config_path)
    while True:
        try:
            Firmware(cfg).run()
        except hw.Reboot:
            log("reboot (simulated): starting again")
            gc.collect()
