"""The firmware's main loop: connect, sync both shadows, run commands one at a time.

The MQTT callback only records messages into a short inbox; parsing, running
handlers and publishing happen here, in one loop, in order. Log lines on
stdout start with "iotbridge:"; the tests read them.
"""

import gc
import io
import json
import os
import sys
from array import array
from time import sleep_ms, ticks_add, ticks_diff, ticks_ms

from micropython import const

# The commands document's buffer: a get with 10 pending commands and 16 outcomes (kept
# as id: doneAt) takes ~1.5-2 KB with 32-character ids; a larger document is read
# into a larger, short-lived block.
_DOC_BYTES = const(2048)
_IDS_SLOTS = const(16)  # protocol.HISTORY
_LEDGER_KEEP = const(256)
# The large buffers are allocated first, while the heap is still one free block: the
# modules imported below load into what follows and leave small holes behind them.
# One set per boot, reused by every Firmware (a simulated reboot makes a new one).
_DOC = bytearray(_DOC_BYTES)  # commands documents as read
_PIECE = bytearray(256)  # socket reads of a payload
_SMALL = bytearray(256)  # classic shadow documents and get/rejected as read (taken in at once)
_IDS = bytearray(65 * _IDS_SLOTS)  # the history's ids (protocol.Ids)
_HASHES = array("H", range(2 * _LEDGER_KEEP))  # the ledger's id hashes (ledger.Ledger)

import hw  # noqa: E402
import net  # noqa: E402
from handlers import ACTIONS, DEADLINE_MS, Device  # noqa: E402
from ledger import Ledger  # noqa: E402
from mqtt import MQTTClient, MQTTError  # noqa: E402
from protocol import (  # noqa: E402
    COMMANDS,
    EXPIRED,
    FAILED,
    HISTORY,
    REJECTED,
    SUCCEEDED,
    TIMED_OUT,
    Ids,
    check_params,
    next_command,
    outcome,
    params_digest,
    read_trimmed,
    shadow_topic,
)

VERSION = "0.1.0"
FATAL_PAUSE_MS = 2000  # before the reset that follows an unexpected error
_INBOX_MAX = const(4)  # recorded messages awaiting the loop; beyond this we re-read the shadows
_BACKOFF_MS = const(500)
_BACKOFF_CAP_MS = const(30000)
SEP = (",", ":")  # compact JSON
# Members never read, left out while reading (see protocol.read_trimmed).
_TRIM = {1: (b"metadata",)}
_TRIM_CLASSIC_GET = {1: (b"metadata",), 2: (b"reported", b"delta")}  # only desired is read
# Commands get: pending comes from state.delta; of the outcomes in state.reported only
# id: doneAt is kept (history pruning), in dicts of at most 8 (see protocol.read_trimmed).
_TRIM_GET = {1: (b"metadata",), 2: (b"desired",)}
_REPORTED = (2, b"reported")
# What an incoming message is, told by the end of its topic (only our own thing's are
# subscribed): a small int instead of five long topic strings kept on the heap.
_T_DELTA = const(1)
_T_GOT = const(2)
_C_DELTA = const(3)
_C_GOT = const(4)
_C_REJ = const(5)
_T_REJ = const(6)
_CU_REJ = const(7)  # our outcome update refused
_TG_REJ = const(8)  # our classic get refused
_RESTATE_MS = const(1000)  # after a throttled or failed state update
# After a connect, commands wait (at most this long) for the classic shadow's get: a command
# run first would be undone by the older desired value that get then applies.
_CLASSIC_FIRST_MS = const(5000)
_STABLE_MS = const(10000)  # a connection that lasted this long resets the reconnect backoff
_RESYNC_S = const(86400)  # a day: then the service clock is taken again from a get (_tick)
_CLR = "clr:"  # clientToken of a state update that nulls desired keys: "clr:led,relay"
_SETTLE_MS = const(10000)  # no rejection for this long after a clear (or its retry): it landed
# AWS IoT serves a thing at most 20 shadow requests/s and refuses more (429; a refused update
# must be sent again): the firmware sends at most 10/s after a burst of 4 (_publish), leaving the
# rest to the API. A command that changes state is two updates: two such go out at once.
_PACE_MS = const(100)
_BURST_MS = const(300)  # (burst - 1) * _PACE_MS
# [0]: ticks of the last clear sent or refused; [1]: uptime (s) when the service clock was last
# taken afresh (_RESYNC_S); [2]: ticks before which the next publish would exceed the pace, plus
# _BURST_MS. Module-level: one per boot. A list, not an array: ticks_diff reads its
# arguments as small ints, and an array("q") hands back a long int object. One list, not new
# names: every name is a string on the heap, and one more moved where the heap ran out (probe).
_STAMPS = [0, 0, 0]


def _kind(topic):
    # Only our own thing's topics are subscribed, and a thing name has no "/": this part is the
    # commands shadow's. Four suffixes, not eight topics: each string stays on the heap.
    c = "/shadow/name/commands/" in topic
    if topic.endswith("/update/delta"):
        return _C_DELTA if c else _T_DELTA
    if topic.endswith("/get/accepted"):
        return _C_GOT if c else _T_GOT
    if topic.endswith("/get/rejected"):
        return _C_REJ if c else _TG_REJ
    if topic.endswith("/update/rejected"):
        return _CU_REJ if c else _T_REJ
    return 0


class _Sink(io.IOBase):
    """Where json.dump writes a message to publish: the commands buffer, while no document waits there."""

    def __init__(self, buf):
        self.buf = buf
        self.n = 0

    def write(self, b):
        n = self.n + len(b)
        if n > len(self.buf):
            raise OverflowError
        self.buf[self.n:n] = b
        self.n = n
        return len(b)


_SINK = _Sink(_DOC)


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
        t = cfg["thing"]
        self.device = Device(cfg["pins"])
        self.ledger = Ledger(cfg["state"], _LEDGER_KEEP, _HASHES)
        gc.collect()  # the log's lines, read at load: what is kept for good goes below, not past them
        self.inbox = []  # (kind, state to apply) recorded by the callback from the classic shadow
        # Commands documents are read into _DOC, allocated at boot (no new block per
        # message). Pending commands: the latest commands delta (or get) as parsed, {id: entry}.
        # A delta holds the whole pending set, so each one replaces the last wholesale;
        # the old set is let go before the new document is read, so the two never
        # share the heap. Run one at a time, oldest issuedAt first.
        self.raw = None  # (kind, view) a commands get or delta read, not yet taken in
        self.pending = {}
        self.history = Ids(HISTORY, _IDS)  # ids of the outcomes in the commands shadow, oldest first
        self.fresh = 0  # the newest this many of history were reported on this connection
        self.resync = False  # the inbox overflowed or the clock is unknown: read the shadows again
        # The shadow service's clock: last document `timestamp` (ms) and our ticks then.
        # An ESP32 has no RTC; expiry is decided on the service's time.
        self.svc_ms = 0
        self.svc_at = 0
        self.reboot_at = None
        self.restate_at = None  # a state update was throttled or failed: report the state again then
        self.reread_at = None  # a get or an outcome update was: read the shadows again then
        # Desired keys a command nulled, not yet seen gone: its update may be throttled (the
        # rejection can come after a PUBACK, and after a get's answer) or lost with the
        # connection. A get's values for them are stale (nulled again, not applied). They
        # settle with the next get, with a delta naming them (a user's PATCH is newer), or
        # after _SETTLE_MS without a rejection (_tick).
        self.unsure = ()
        self.hold = None  # ticks until which commands wait for this connection's classic get
        self.pver = 0  # version of the commands document the pending set came from
        self.telemetry_sent = None  # ticks_ms of the last telemetry (None: at the first tick)
        self.pinged = ticks_ms()
        self.kind = 0  # of the message being read (see _kind)
        self.t_update = shadow_topic(t, "update")
        self.c_update = shadow_topic(t, "update", COMMANDS)
        self.client = MQTTClient(
            t, cfg["host"], cfg["port"], keepalive=cfg["keepalive"], user=cfg["user"],
            password=cfg["password"], ssl_context=tls_context(cfg) if cfg["tls"] else None,
            server_hostname=cfg["server_hostname"],
        )
        self.client.set_callback(self._record)
        self.client.reader = self._read_payload

    def _read_payload(self, topic, n, fill):
        """How the client reads a payload: in pieces, without the parts never used."""
        self.kind = kind = _kind(topic)
        if kind == _C_DELTA and not self.svc_ms:
            # No trusted clock yet (a delta held in our session, before our get is
            # answered): the get will list these commands too. Read past it.
            piece = memoryview(_PIECE)
            while n:
                k = min(n, len(piece))
                fill(piece[:k])
                n -= k
            return None
        if kind == _C_GOT or kind == _C_DELTA:
            self.pending = {}  # superseded by the document being read
            if kind == _C_GOT:
                return read_trimmed(n, fill, _TRIM_GET, _DOC, _PIECE, _REPORTED)
            return read_trimmed(n, fill, _TRIM, _DOC, _PIECE)
        return read_trimmed(n, fill, _TRIM_CLASSIC_GET if kind == _T_GOT else _TRIM, _SMALL, _PIECE)

    def _record(self, topic, payload):
        """The MQTT callback: record only (the message's kind was found while reading it)."""
        inbox = self.inbox
        kind = self.kind
        if payload is None:  # read past (see _read_payload)
            self.resync = True
            return
        if kind == _C_GOT or kind == _C_DELTA:
            # In the one buffer: it supersedes the commands document waiting there. A get
            # that was overwritten before it was taken in (its clock, its history) is asked again.
            if self.raw is not None and self.raw[0] == _C_GOT and kind == _C_DELTA:
                self.resync = True
            self.raw = (kind, payload)
            return
        if not kind:
            return
        if kind >= _C_REJ:
            # A request of ours throttled (429) or failed (5xx) is lost unless sent again, a
            # second later. A state update: report the state again (else the shadow keeps the
            # old one, and a desired value a command overrode). An outcome update or a get:
            # read the shadows again; the get lists what is still pending, and a command
            # already run is answered from the ledger (a get is authoritative).
            try:
                doc = json.loads(payload)
                code, token = doc.get("code"), doc.get("clientToken")
            except (ValueError, AttributeError):
                code = token = None
            if kind == _TG_REJ and code == 404:
                self.hold = None  # no classic shadow yet: nothing older to apply
            if isinstance(code, int) and (code == 429 or code >= 500):
                if kind == _T_REJ:
                    # The keys this update nulled travel in its token (AWS echoes it): only those.
                    if isinstance(token, str) and token.startswith(_CLR):
                        self._unsure(token[len(_CLR):].split(","))
                    if self.restate_at is None:
                        self.restate_at = ticks_add(ticks_ms(), _RESTATE_MS)
                elif self.reread_at is None:
                    self.reread_at = ticks_add(ticks_ms(), _RESTATE_MS)
            if kind != _C_REJ:
                return
        # Taken in now, so its buffer is free for the next one: the clock (a get/rejected
        # carries it too), and of the classic shadow the state to apply, which the loop
        # applies and reports (publishing is not for a callback).
        state = self._parse(kind, payload)
        del payload
        if kind == _T_GOT:
            # All of desired, not the delta: the delta is against what we reported before
            # this boot, and the pins came up in their reset state.
            state = state.get("desired") if state is not None else None
            self.hold = None
            if state is None:
                state = {}  # applied all the same: it clears what `unsure` holds
        if not isinstance(state, dict) or kind == _C_REJ:
            return
        # A delta holds the whole current delta (AWS; iotbridge_local.shadow.engine)
        # and a get the whole document: a newer one supersedes what is still waiting
        # here (a get: deltas and gets; a delta: deltas).
        i = 0
        while i < len(inbox):
            k = inbox[i][0]
            if k == _T_DELTA or k == kind:
                if k == _T_DELTA and self.unsure:  # a delta's keys are newer than our clears (see unsure)
                    self.unsure = tuple(x for x in self.unsure if x not in inbox[i][1])
                inbox.pop(i)
            else:
                i += 1
        if len(inbox) < _INBOX_MAX:
            inbox.append((kind, state))
        else:
            self.resync = True

    def now_ms(self):
        # Moved forward at each call, as uptime is: ticks_diff is right for 6.2 days on the board.
        if self.svc_ms:
            d = ticks_diff(ticks_ms(), self.svc_at)
            self.svc_ms += d
            self.svc_at = ticks_add(self.svc_at, d)
        return self.svc_ms

    # -- connection ---------------------------------------------------------------
    def run(self):
        attempt = 0
        while True:
            up = None
            try:
                net.connect_wifi(self.cfg)
                self._connect()
                up = ticks_ms()
                self._serve()
            except (OSError, MQTTError) as e:
                log("disconnected:", repr(e))
            self.device.uptime_s()  # telemetry keeps both counting while connected; this, while not
            self.now_ms()
            # Reset only after a while: a connection that keeps failing at once (another board
            # with our thing name takes it over) must back off, not come back twice a second.
            if up is not None and ticks_diff(ticks_ms(), up) >= _STABLE_MS:
                attempt = 0
            self.client.close()
            self.inbox = []
            self.fresh = 0
            self.raw = None
            self.pending = {}  # the get after the reconnect lists them again
            self.pver = 0  # versions are compared within a connection (a local stack may start afresh)
            ceiling = min(_BACKOFF_CAP_MS, _BACKOFF_MS << min(attempt, 6))
            attempt += 1
            # Half fixed, half random: a fleet that lost its broker does not return in lockstep.
            r = os.urandom(2)
            sleep_ms(ceiling // 2 + (r[0] << 8 | r[1]) * (ceiling // 2) // 65536)

    def _connect(self):
        gc.collect()  # what the last connection left, before the largest messages of a connect
        c = self.client
        # Without the service's clock yet (a boot), start clean: an answer to a get from before
        # it, still held in the session, would set an old clock by which long-expired commands
        # look current. Once it has a clock, the session is kept: the clock never goes back.
        kept = c.connect(clean_session=not self.svc_ms)
        # Stamps from before a drop may be days old, past what ticks_diff reads right (6.2 days
        # on the board): a ping or telemetry would look due only far in the future.
        self.pinged = ticks_ms()
        self.telemetry_sent = self.restate_at = self.reread_at = None  # this connect restates and reads all
        if self.reboot_at is not None:
            self.reboot_at = self.pinged  # a reboot that a drop put off: now
        t = self.cfg["thing"]
        # +/rejected: our gets and updates refused (a commands get's 404 before the first
        # command still carries the service's clock). One filter per shadow, not three topics.
        c.subscribe([shadow_topic(t, "update/delta"), shadow_topic(t, "get/accepted"),
                     shadow_topic(t, "update/delta", COMMANDS), shadow_topic(t, "get/accepted", COMMANDS),
                     shadow_topic(t, "+/rejected", COMMANDS), shadow_topic(t, "+/rejected")], qos=1)
        self._report_all(self.unsure)
        self.hold = ticks_add(ticks_ms(), _CLASSIC_FIRST_MS)
        self._request_shadows()
        gc.collect()
        log("ready", "session-kept" if kept else "new-session", "free", gc.mem_free())

    def _request_shadows(self):
        # An empty message asks for the whole document (AWS IoT: publish to …/get).
        self.client.publish(shadow_topic(self.cfg["thing"], "get"), b"", qos=1)
        self.client.publish(shadow_topic(self.cfg["thing"], "get", COMMANDS), b"", qos=1)
        self.resync = False

    def _publish(self, topic, doc, qos=1):
        # Written into the commands buffer, after the document waiting there if there is
        # one: no string of the message's size on the heap. Whatever is read into the
        # buffer while the PUBACK is awaited comes after the message was sent.
        start = 0 if self.raw is None else len(self.raw[1])  # > _DOC_BYTES: it was read elsewhere
        msg = None
        if start <= _DOC_BYTES:
            sink = _SINK
            sink.n = start
            try:
                json.dump(doc, sink, separators=SEP)
                msg = memoryview(_DOC)[start:sink.n]
            except OverflowError:
                pass
        if msg is None:
            msg = json.dumps(doc, separators=SEP)
        # Paced (_PACE_MS): a stamp behind now, or further ahead than pacing puts it (one older
        # than ticks_diff reads right), means idle: a full burst.
        now = ticks_ms()
        t = _STAMPS[2]
        d = ticks_diff(t, now)
        if d < 0 or d > _BURST_MS + _PACE_MS:
            t = now
        elif d > _BURST_MS:
            sleep_ms(d - _BURST_MS)
        _STAMPS[2] = ticks_add(t, _PACE_MS)
        self.client.publish(topic, msg, qos=qos)

    def _report_all(self, clear):
        """The whole state, after a connect or a lost state update (with the desired keys to null)."""
        rep = self.device.state()
        rep["actions"] = ACTIONS
        rep["agent"] = {"kind": "esp32", "firmware": VERSION, "platform": sys.platform, "id": hw.unique_id(),
                        "micropython": "%d.%d.%d" % sys.implementation.version[:3]}
        self._state(rep, clear)

    def _state(self, reported, clear):
        """Report state, nulling the desired keys in `clear` (a command overrode them; they are
        `unsure` from now on). The token names them, so a rejection says which (AWS echoes it)."""
        doc = {"state": {"reported": reported}}
        if clear:
            doc["state"]["desired"] = dict.fromkeys(clear)
            doc["clientToken"] = _CLR + ",".join(clear)
            self._unsure(clear)
        self._publish(self.t_update, doc)

    def _unsure(self, keys):
        self.unsure = self.unsure + tuple(k for k in keys if k and k not in self.unsure)
        _STAMPS[0] = ticks_ms()

    def _report(self, reported, qos=1):
        self._publish(self.t_update, {"state": {"reported": reported}}, qos)

    # -- the loop -------------------------------------------------------------------
    def _serve(self):
        c = self.client
        while True:
            if self.hold is not None and ticks_diff(ticks_ms(), self.hold) >= 0:
                self.hold = None  # the classic get is late: commands wait no longer
            run = self.pending and self.hold is None
            c.check_msg(0 if (run or self.inbox or self.raw is not None) else 200)
            # A commands document waiting in the buffer is taken in before more is read.
            while len(self.inbox) < _INBOX_MAX and self.raw is None and c.check_msg(0):
                pass
            if self.raw is not None:
                gc.collect()
                self._take_in()
                gc.collect()
            while self.inbox:
                kind, desired = self.inbox.pop(0)
                if kind == _T_GOT and self.unsure:
                    # A value a command overrode is cleared, not applied again: the command came later.
                    over = tuple(k for k in self.unsure if k in desired)
                    for k in over:
                        del desired[k]
                    self._apply(desired)
                    if over:
                        self._report_all(over)
                    self.unsure = ()
                else:
                    self._apply(desired)
                    if self.unsure:
                        self.unsure = tuple(k for k in self.unsure if k not in desired)
                del desired
                gc.collect()
            if self.resync and not self.pending and self.raw is None:
                self._request_shadows()
            if self.pending and self.hold is None:
                self._run_next()
                gc.collect()
            self._tick()

    def _tick(self):
        now = ticks_ms()
        c = self.client
        ka = self.cfg["keepalive"]
        if self.reboot_at is not None and ticks_diff(now, self.reboot_at) >= 0:
            log("rebooting")
            c.disconnect()
            hw.reset()
        if ticks_diff(now, c.last_rx) > ka * 1500:
            raise MQTTError("broker silent past keepalive")
        # Ping when we sent nothing for half the keepalive (the broker needs a packet) or heard
        # nothing (a PINGRESP proves it alive): QoS 0 telemetry alone gets no answer.
        if ticks_diff(now, self.pinged) > ka * 500 and (
                ticks_diff(now, c.last_io) > ka * 500 or ticks_diff(now, c.last_rx) > ka * 500):
            c.ping()
            self.pinged = now
        if self.unsure and self.restate_at is None and ticks_diff(now, _STAMPS[0]) >= _SETTLE_MS:
            # Clears that drew no rejection landed: a later reconnect must not null those keys
            # again (a user may set them while the device is away).
            self.unsure = ()
        if self.restate_at is not None and ticks_diff(now, self.restate_at) >= 0:
            self.restate_at = None
            self._report_all(self.unsure)
        if self.reread_at is not None and ticks_diff(now, self.reread_at) >= 0:
            self.reread_at = None
            self.resync = True
        # Due by the interval as it is now: a new interval applies at once, not after the old one.
        if self.telemetry_sent is None or ticks_diff(now, self.telemetry_sent) >= self.device.interval * 1000:
            self.telemetry_sent = now
            self.now_ms()
            d = self.device
            self._report({"telemetry": d.telemetry()}, 0)
            if not self.pending and d.up_s - _STAMPS[1] > _RESYNC_S:
                # The clock only moves forward, and a crystal that runs fast (20 ppm: 1.7 s a day)
                # would in weeks expire every command: once a day, with nothing pending, connect
                # again with a clean session, as after a boot, and take the clock from its get. Not
                # on this session: it may still hold an old get's answer, with an old clock.
                _STAMPS[1] = d.up_s
                self.svc_ms = 0
                c.disconnect()  # a goodbye: no "lost" will for a planned reconnect
                raise MQTTError("resync")

    def _parse(self, kind, payload):
        """The document's state, after setting the clock from its timestamp; None if unusable."""
        try:
            doc = json.loads(payload)
        except ValueError:
            log("ignored non-JSON, kind", kind)
            return None
        del payload
        if not isinstance(doc, dict):
            return None
        ts = doc.get("timestamp")
        v = doc.get("version")
        if (kind == _C_GOT or kind == _C_DELTA) and isinstance(v, int):
            if v < self.pver:
                # Older than the pending set it replaced (AWS orders nothing across topics: a
                # get's answer can come after a newer delta). That set is gone: None, ask again,
                # taking the answer whatever its version (a shadow deleted and made anew restarts them).
                self.pver = 0
                return None
            self.pver = v
        # A delta may have waited in the broker for our persistent session: only the
        # answer to our own get sets the clock first, and it never goes back.
        fresh = kind == _C_GOT or kind == _C_REJ  # answers to our own get
        # ts is whole seconds: take the end of that second, so nothing starts after it expired.
        if isinstance(ts, int) and (fresh or self.svc_ms) and ts * 1000 + 999 > self.now_ms():
            self.svc_ms = ts * 1000 + 999
            self.svc_at = ticks_ms()
        state = doc.get("state")
        return state if isinstance(state, dict) else None

    def _take_in(self):
        """Take in the commands get or delta waiting in the buffer."""
        kind, payload = self.raw
        self.raw = None
        state = self._parse(kind, payload)
        del payload
        if state is None:
            self.resync = True  # the pending set it carried is gone from the buffer (or was newer)
            return
        if kind == _C_DELTA:
            if self.svc_ms:
                self._take(state, False)
            else:
                self.resync = True  # no trusted clock yet: the get lists these too
            return
        delta = state.get("delta")
        prune = self._load_history(state.get("reported"))
        del state
        self._take(delta if isinstance(delta, dict) else {}, True)
        del delta
        if prune:  # more outcomes than HISTORY: the oldest go now, in one update
            self._publish(self.c_update, {"state": {"reported": prune}})

    def _load_history(self, reported):
        """The get's outcomes ([{id: doneAt, ...}, ...]) become the history; returns {id: None} for those past HISTORY."""
        hist = self.history
        hist.clear()
        if not isinstance(reported, list):
            self.fresh = 0  # `fresh` counts the newest of history: with none, none
            return None
        # Oldest first, by (doneAt, id), picked one at a time: sorting would make a list and a
        # tuple per outcome while the get's pending commands fill the heap (the restart's peak).
        prune = lv = lk = None
        while True:
            bv = bk = None
            for d in reported:
                for k in d:
                    v = d[k]
                    if (isinstance(v, int) and not isinstance(v, bool) and len(k) <= 64
                            and (lk is None or v > lv or v == lv and k > lk)
                            and (bk is None or v < bv or v == bv and k < bk)):
                        bv, bk = v, k
            if bk is None:
                break
            lv, lk = bv, bk
            if len(hist) == HISTORY:
                if prune is None:
                    prune = {}
                prune[hist.pop(0)] = None
            hist.append(bk)
        self.fresh = min(self.fresh, len(hist))
        return prune

    def _apply(self, delta):
        applied = self.device.apply_desired(delta)
        if applied:
            now = self.device.state()
            self._report({k: now[k] for k in applied})
            log("applied", ",".join(applied))

    def _take(self, pending, authoritative):
        """Make `pending` (a whole delta) the set of commands to run."""
        if not authoritative:
            # A delta published before our outcome update landed still lists it: an id
            # reported on this connection (the newest `fresh` of history) is not taken.
            # A get (after every connect) is authoritative: if it still lists an
            # id, our update was lost, and the logged outcome is sent again.
            hist = self.history
            for cid in list(pending):
                i = hist.find(cid)
                if i >= 0 and i >= len(hist) - self.fresh:
                    del pending[cid]
        self.pending = pending

    # -- commands ------------------------------------------------------------------
    def _run_next(self):
        nxt = next_command(self.pending)
        if nxt is None:
            return
        cid, entry = nxt
        del self.pending[cid], nxt
        out = None if isinstance(entry, dict) else outcome(REJECTED, "", self.now_ms(), None, "not a command object")
        if out is None:
            out = self.ledger.get(cid)
            if out is None:
                before = self.device.state()
                out = self._execute(cid, entry)
                try:
                    self.ledger.done(cid, out)
                except OSError as e:  # flash full or failing: the outcome is still reported
                    log("log write failed:", repr(e))
                now = self.device.state()
                changed = {k: now[k] for k in now if now[k] != before[k]}
                if changed:
                    # The new state, and the same keys nulled in desired: a stale desired
                    # value would otherwise come back as a delta and undo the command.
                    # Published before the outcome, so whoever sees SUCCEEDED and then
                    # reads the device finds the state the command produced.
                    self._state(changed, tuple(changed))
            else:
                log("duplicate", cid)
        # Outcome, desired=null and history pruning travel in ONE update, so a
        # command is pending or done, never both, and the shadow keeps HISTORY outcomes.
        hist = self.history
        i = hist.find(cid)
        if i >= 0:
            if i >= len(hist) - self.fresh:
                self.fresh -= 1  # counted again below
            hist.pop(i)
        reported = {cid: out}
        while len(hist) >= HISTORY:
            reported[hist.pop(0)] = None
        hist.append(cid)
        self.fresh = min(self.fresh + 1, len(hist))
        self._publish(self.c_update, {"state": {"reported": reported, "desired": {cid: None}}, "clientToken": cid})
        del reported
        gc.collect()
        log("done", cid, out["state"], "free", gc.mem_free())
        if self.device.reboot_in is not None:
            self.reboot_at = ticks_add(ticks_ms(), self.device.reboot_in)
            self.device.reboot_in = None

    def _execute(self, cid, entry):
        action = entry.get("action")
        params = entry.get("params")
        if params is None:
            params = {}
        digest = params_digest(params) if isinstance(params, dict) else None
        now = self.now_ms()
        exp = entry.get("expiresAt")
        # Started only if the service time (the end of its current second) <= expiresAt (docs/protocol.md).
        if isinstance(exp, int) and not isinstance(exp, bool) and now > exp:
            return outcome(EXPIRED, str(action), now, None, "expired before the device could start it", digest)
        specs = ACTIONS.get(action) if isinstance(action, str) else None
        if specs is None:
            return outcome(REJECTED, str(action), now, None, "unknown action; known: " + ", ".join(ACTIONS), digest)
        err = check_params(specs, params)
        if err:
            return outcome(REJECTED, action, now, None, err, digest)
        try:
            self.ledger.start(cid, action)  # from here on a restart must not start it again
        except OSError as e:
            return outcome(FAILED, action, now, None, "not run: the device cannot record commands (%r)" % e, digest)
        t0 = ticks_ms()
        result = error = None
        try:
            result = self.device.run(action, params)
            state = SUCCEEDED
        except Exception as e:  # a handler's failure is the command's outcome, not the loop's
            state, error = FAILED, "%s: %s" % (type(e).__name__, e)
        if ticks_diff(ticks_ms(), t0) > DEADLINE_MS:
            state = TIMED_OUT
        return outcome(state, action, self.now_ms(), result, error, digest)

def main(config_path="config.json"):
    import config

    cfg = config.load(config_path)
    # Needed once: its code leaves the heap (on a board, boot.py loaded it too).
    del config
    sys.modules.pop("config", None)
    gc.collect()
    while True:
        fw = None
        try:
            fw = Firmware(cfg)
            fw.run()
        except hw.Reboot:
            log("reboot (simulated): starting again")
        except Exception as e:
            # Out of memory, or a bug. Left in the REPL, a board stays offline until someone
            # power-cycles it; a reset gets a fresh heap. The command log keeps "never twice":
            # a command cut short is reported FAILED, not run again.
            if fw is not None:
                fw.client.close()
            fw = None
            gc.collect()
            log("fatal:", repr(e))
            sys.print_exception(e)
            # Paused, jittered: a fault that recurs at every boot does not hammer the broker.
            sleep_ms(FATAL_PAUSE_MS + os.urandom(1)[0] * 8)
            try:
                hw.reset()
            except hw.Reboot:
                log("reboot (simulated): starting again")
        fw = None
        gc.collect()
