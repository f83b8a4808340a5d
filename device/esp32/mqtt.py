# A small MQTT 3.1.1 client for MicroPython, written for this firmware.
"""Just enough MQTT 3.1.1 for a device that talks to AWS IoT Core shadows.

What it does:
  CONNECT (clean session on or off, keepalive, username/password; no will: presence
  comes from the broker's lifecycle events),
  SUBSCRIBE (several filters in one packet, waits for SUBACK),
  PUBLISH QoS 0 and 1 (QoS 1 waits for its PUBACK), incoming QoS 0/1 with
  PUBACK sent after the callback returns, PINGREQ/PINGRESP, DISCONNECT.

Limits, stated plainly:
  * No QoS 2 (AWS IoT does not support it either).
  * One outgoing QoS 1 message in flight at a time: publish() blocks until its
    PUBACK (or raises MQTTError after `timeout_s`). An unacknowledged outgoing
    message is NOT resent after a reconnect; the caller must make its
    publishes idempotent and re-send (the firmware re-reports from its log).
  * Incoming redelivery: a PUBLISH with the DUP flag whose packet id is among
    the last few acknowledged ones is acknowledged and dropped. Packet ids are
    reused by the broker, so this only catches the common case; the
    application must be idempotent anyway (the firmware keeps a command log).
  * A payload is read whole into one bytearray unless a `reader` is set, which
    reads it in pieces (the firmware trims shadow documents that way). Read
    whole, a payload over `max_packet` bytes is read past, acknowledged and
    dropped, so it cannot exhaust the heap. A reader
    sees every payload: the size that matters is what it keeps (a commands
    get answer lists its pending commands twice, in desired and in delta,
    plus metadata: the reader leaves out all but the delta).
  * The callback runs inside check_msg()/publish()/subscribe(); it must only
    record the message and return.
  * Blocking sockets with a timeout; readiness is polled with select.poll.
"""

import select
import socket
import struct
from time import ticks_diff, ticks_ms

from micropython import const

# TCP_NODELAY: MicroPython's socket module often lacks the constants; the
# values are the same on Linux and lwIP (ESP32).
IPPROTO_TCP = getattr(socket, "IPPROTO_TCP", 6)
TCP_NODELAY = getattr(socket, "TCP_NODELAY", 1)

# Fixed-header packet types (high nibble).
_CONNECT = const(0x10)
_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBSCRIBE = const(0x82)  # reserved flags 0b0010
_SUBACK = const(0x90)
_PINGREQ = const(0xC0)
_PINGRESP = const(0xD0)
_DISCONNECT = const(0xE0)

_DUP_RING = const(8)  # incoming packet ids remembered for redelivery dedup

# Scratch for header bytes and packet ids: no allocation per packet. Module-level, as a
# device has one client: every attribute of an instance is a slot in its dict, whose
# table must find one contiguous block of the heap each time it grows.
_B2 = bytearray(2)
_V1 = memoryview(_B2)[:1]
_V2 = memoryview(_B2)


class MQTTError(Exception):
    pass


def _encode_len(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return out


def _str(s):
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("!H", len(s)) + s


class MQTTClient:
    def __init__(self, client_id, host, port=1883, keepalive=60, user=None, password=None,
                 ssl_context=None, server_hostname=None, timeout_s=10, max_packet=16384):
        # What connect() dials and says, read once per connection: two slots, not eight.
        self.dial = (host, port, ssl_context, server_hostname or host)
        self.login = (client_id, user, password, keepalive)
        self.timeout_s = timeout_s
        self.max_packet = max_packet
        self.sock = None
        self._poll = None
        self.cb = None
        self.pid = 0
        self.last_io = 0  # ticks_ms of the last packet we sent (when to PINGREQ)
        self.last_rx = 0  # ticks_ms of the last packet we received (is the broker alive?)
        self.recent = []  # packet ids of acknowledged incoming QoS 1 publishes
        # Optional reader(topic, n, fill) -> payload: reads the n payload bytes itself
        # through fill(view), e.g. to leave out parts it will never use (see app.py).
        self.reader = None

    def set_callback(self, cb):
        """cb(topic: str, payload) for every incoming PUBLISH (a bytearray, or what `reader` returns)."""
        self.cb = cb

    # -- transport ---------------------------------------------------------
    def _open(self):
        host, port, ssl_context, server_hostname = self.dial
        addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
        sock = socket.socket()
        try:
            sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
        except (OSError, TypeError):
            pass  # not every port exposes it; correctness does not depend on it
        sock.settimeout(self.timeout_s)
        sock.connect(addr)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname)
        self.sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def _send(self, buf):
        view = memoryview(buf)
        while view:
            n = self.sock.write(view)
            if n is None:  # a non-blocking TLS write that could not proceed yet
                continue
            view = view[n:]
        self.last_io = ticks_ms()

    def _packet(self, first, body):
        # The fixed header, then the body from its own buffer: no copy of the body.
        head = bytearray([first])
        head += _encode_len(len(body))
        self._send(head)
        if len(body):
            self._send(body)

    def _fill(self, view):
        got = 0
        n = len(view)
        while got < n:
            k = self.sock.readinto(view[got:] if got else view)
            if not k:
                raise MQTTError("connection closed")
            got += k

    def _read(self, n):
        buf = bytearray(n)
        self._fill(memoryview(buf))
        return buf

    def _byte(self):
        self._fill(_V1)
        return _B2[0]

    def _u16(self):
        self._fill(_V2)
        return _B2[0] << 8 | _B2[1]

    def _skip(self, n):
        buf = memoryview(bytearray(min(n, 128)))
        while n:
            k = min(n, len(buf))
            self._fill(buf[:k])
            n -= k

    def _read_len(self):
        n = 0
        shift = 0
        while True:
            b = self._byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                return n
            shift += 7
            if shift > 21:
                raise MQTTError("bad remaining length")

    # -- session -----------------------------------------------------------
    def connect(self, clean_session=False):
        """Open the connection; returns True when the broker kept our session."""
        self._open()
        client_id, user, password, keepalive = self.login
        flags = 0x02 if clean_session else 0
        payload = _str(client_id)
        if user is not None:
            flags |= 0x80
            payload += _str(user)
            if password is not None:
                flags |= 0x40
                payload += _str(password)
        body = b"\x00\x04MQTT\x04" + bytes([flags]) + struct.pack("!H", keepalive) + payload
        self._packet(_CONNECT, body)
        if self._byte() != _CONNACK or self._read_len() != 2:
            raise MQTTError("expected CONNACK")
        ack = self._read(2)
        self.last_rx = ticks_ms()
        if ack[1] != 0:
            raise MQTTError("connection refused, code %d" % ack[1])
        return bool(ack[0] & 1)

    def disconnect(self):
        try:
            self._packet(_DISCONNECT, b"")
        except Exception:
            pass
        self.close()

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except Exception:
                pass
        self.sock = None
        self._poll = None

    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    # -- operations ----------------------------------------------------------
    def publish(self, topic, msg, retain=False, qos=0):
        """msg: bytes, bytearray or str (sent as its UTF-8 bytes, without a copy)."""
        if isinstance(msg, str):
            msg = memoryview(msg)
        t = memoryview(topic) if isinstance(topic, str) else topic
        tl = len(t)
        rem = 2 + tl + (2 if qos else 0) + len(msg)
        enc = _encode_len(rem)
        # The header (with the topic) in one small allocation, then the payload from the
        # caller's buffer as it is: a payload is never copied on the heap.
        hl = 1 + len(enc) + 2 + tl + (2 if qos else 0)
        pkt = bytearray(hl)
        pkt[0] = _PUBLISH | (qos << 1) | (1 if retain else 0)
        i = 1 + len(enc)
        pkt[1:i] = enc
        pkt[i] = tl >> 8
        pkt[i + 1] = tl & 0xFF
        pkt[i + 2:i + 2 + tl] = t
        i += 2 + tl
        pid = 0
        if qos:
            pid = self._next_pid()
            pkt[i] = pid >> 8
            pkt[i + 1] = pid & 0xFF
        self._send(pkt)
        del pkt
        if len(msg):
            self._send(msg)
        if qos:
            self._wait_for(_PUBACK, pid)

    def subscribe(self, topics, qos=1):
        """Subscribe to one filter or a list of filters in one packet; waits for SUBACK."""
        if isinstance(topics, str):
            topics = [topics]
        pid = self._next_pid()
        # Written to the socket piece by piece (one packet): no block of the body's size, which a
        # reconnect would need, contiguous, on a heap a long run has left in small holes.
        topics = [memoryview(t) if isinstance(t, str) else t for t in topics]  # lengths in bytes, not characters
        head = bytearray([_SUBSCRIBE])
        head += _encode_len(2 + sum(3 + len(t) for t in topics))
        head.append(pid >> 8)
        head.append(pid & 0xFF)
        self._send(head)
        for t in topics:
            n = len(t)
            _B2[0] = n >> 8
            _B2[1] = n & 0xFF
            self._send(_B2)
            self._send(t)
            _B2[0] = qos
            self._send(_V1)
        codes = self._wait_for(_SUBACK, pid)
        for code in codes:
            if code == 0x80:
                raise MQTTError("subscription refused")

    def ping(self):
        self._packet(_PINGREQ, b"")

    def _wait_for(self, ptype, pid):
        deadline = self.timeout_s * 1000
        start = ticks_ms()
        while ticks_diff(ticks_ms(), start) < deadline:
            got = self._read_one(100)
            if got is not None and got[0] == ptype and got[1] == pid:
                return got[2]
        raise MQTTError("no reply from broker")

    def check_msg(self, timeout_ms=0):
        """Handle at most one incoming packet, waiting up to timeout_ms; True if one came."""
        return self._read_one(timeout_ms) is not None

    def _read_one(self, timeout_ms):
        if self.sock is None:
            raise MQTTError("not connected")
        if not self._poll.poll(timeout_ms):
            return None
        first = self._byte()
        n = self._read_len()
        self.last_rx = ticks_ms()
        kind = first & 0xF0
        if kind == _PUBLISH:
            self._on_publish(first, n)
            return (_PUBLISH, 0, None)
        if kind == _PUBACK and n == 2:
            return (kind, self._u16(), None)
        if kind == _SUBACK:
            body = self._read(n)
            return (kind, (body[0] << 8) | body[1], body[2:])
        if kind == _PINGRESP:
            return (_PINGRESP, 0, None)
        self._skip(n)  # nothing else is expected from a broker; ignore it
        return (kind, 0, None)

    def _on_publish(self, first, n):
        qos = (first >> 1) & 3
        tlen = self._u16()
        topic = str(self._read(tlen), "utf-8")
        n -= 2 + tlen
        pid = 0
        if qos:
            pid = self._u16()
            n -= 2
        duplicate = qos and (first & 0x08) and pid in self.recent
        if duplicate or (n > self.max_packet and not self.reader):
            self._skip(n)
        else:
            payload = self.reader(topic, n, self._fill) if self.reader else self._read(n)
            if self.cb:
                self.cb(topic, payload)
        if qos == 1:
            self._packet(_PUBACK, struct.pack("!H", pid))
            if not duplicate:
                self.recent.append(pid)
                if len(self.recent) > _DUP_RING:
                    self.recent.pop(0)
        elif qos == 2:
            raise MQTTError("QoS 2 is not supported")
