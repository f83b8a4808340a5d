"""One selector loop that drives any number of paho clients and device sessions.

paho's `loop_start()` costs a thread per client, which does not reach thousands
of devices on two cores. Here every client's socket sits in one selector; the
loop calls paho's `loop_read` / `loop_write` / `loop_misc` and then lets the
sessions that have news (or a due timer) act. The Pi agent is the same loop
with one session in it.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import os
import selectors
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

    from iotbridge_contract.stopflag import StopFlag

log = logging.getLogger(__name__)

MISC_PERIOD_S = 1.0  # keepalive pings and timeouts; keepalive itself is tens of seconds
MAX_WAIT_S = 0.5  # the longest a stop request waits to be noticed
# paho connects (TCP + TLS handshake) blocking, ~10 ms each with mutual TLS here;
# a bounded number per pass keeps established connections served meanwhile.
CONNECTS_PER_PASS = 16
CONNECT_RETRY_S = 0.005
# paho closes its socket as soon as DISCONNECT is written. Closing with unread bytes
# (a PUBACK, a delta) makes the kernel answer RST, and Mosquitto drops a connection that
# reports an error without reading what is queued: the DISCONNECT (and the "shutdown"
# status before it) is lost and the broker publishes the last will, "lost". On a clean
# shutdown the connection therefore lingers: FIN sent, input read and dropped until the
# broker closes its side, at most this long.
LINGER_S = 1.0


class _Lingering:
    """Selector marker: a connection paho closed during shutdown, read until the broker's EOF."""


class Pumped(Protocol):
    """What the pump drives: a device session."""

    def step(self, now: float) -> float | None:
        """Act on recorded news; return when to be stepped next (monotonic), if ever."""
        ...

    def bind(self, pump: Pump) -> None: ...

    def busy(self) -> bool:
        """True while it still has work it should finish before a clean shutdown."""
        ...

    def drain(self) -> None:
        """Stopping soon: finish what runs, start nothing new."""
        ...

    def shutdown(self) -> None:
        """Say goodbye (clean DISCONNECT); the pump flushes the bytes afterwards."""
        ...


class Pump:
    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._sessions: list[Pumped] = []
        self._ready: set[Pumped] = set()
        self._timers: list[tuple[float, int, Pumped]] = []
        self._due: dict[Pumped, float] = {}
        self._seq = itertools.count()
        self._clients: dict[int, mqtt.Client] = {}  # fd -> client with an open socket
        # Other threads (handler workers, signal handlers) wake the loop through this pair.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._from_threads: collections.deque[Pumped | None] = collections.deque()
        self._connect_budget = CONNECTS_PER_PASS
        self._stopping = False
        self._closed = False
        self._lingering: dict[socket.socket, float] = {}  # connection -> give up at
        self._linger_marker = _Lingering()

    # -- wiring, called by sessions ------------------------------------------

    def add(self, session: Pumped) -> None:
        self._sessions.append(session)
        session.bind(self)
        self._ready.add(session)

    def attach(self, client: mqtt.Client) -> None:
        """Route a client's socket life cycle into the selector (keeps its on_socket_open)."""
        opened = client.on_socket_open

        def on_open(c: mqtt.Client, userdata: Any, sock: Any) -> None:
            if opened is not None:
                opened(c, userdata, sock)
            self._clients[sock.fileno()] = c
            self._sel.register(sock, selectors.EVENT_READ, c)

        def on_close(c: mqtt.Client, userdata: Any, sock: Any) -> None:
            fd = sock.fileno()
            self._clients.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            if self._stopping:
                self._linger(fd)

        def want_write(c: mqtt.Client, userdata: Any, sock: Any) -> None:
            self._modify(sock, c, selectors.EVENT_READ | selectors.EVENT_WRITE)

        def done_writing(c: mqtt.Client, userdata: Any, sock: Any) -> None:
            self._modify(sock, c, selectors.EVENT_READ)

        client.on_socket_open = on_open
        client.on_socket_close = on_close
        client.on_socket_register_write = want_write
        client.on_socket_unregister_write = done_writing

    def _modify(self, sock: Any, client: mqtt.Client, events: int) -> None:
        with contextlib.suppress(KeyError, ValueError):  # already closed
            self._sel.modify(sock, events, client)

    def notify(self, session: Pumped) -> None:
        """From the loop's own thread (paho callbacks): this session has news."""
        self._ready.add(session)

    def notify_threadsafe(self, session: Pumped | None = None) -> None:
        """From any thread: wake the loop (and step `session`, if given)."""
        self._from_threads.append(session)
        with contextlib.suppress(OSError):  # a full pipe: a wake-up is already pending
            self._wake_w.send(b"\0")

    def may_connect(self) -> bool:
        """A session asks before a (blocking) connect; False: try again a moment later."""
        if self._connect_budget <= 0:
            return False
        self._connect_budget -= 1
        return True

    @property
    def open_connections(self) -> int:
        return len(self._clients)

    # -- the loop ------------------------------------------------------------

    def _schedule(self, session: Pumped, when: float | None) -> None:
        if when is None:
            self._due.pop(session, None)
            return
        if self._due.get(session) == when:
            return
        self._due[session] = when
        heapq.heappush(self._timers, (when, next(self._seq), session))

    def _linger(self, fd: int) -> None:
        # A second descriptor keeps the connection open after paho closes its own. Anything
        # that fails here falls back to paho's plain close: never an exception into paho.
        if self._closed:
            return
        try:
            dup = os.dup(fd)
        except OSError:
            return
        try:
            conn = socket.socket(fileno=dup)
        except OSError:
            os.close(dup)
            return
        try:
            conn.setblocking(False)
            conn.shutdown(socket.SHUT_WR)  # FIN after the DISCONNECT already written
            self._sel.register(conn, selectors.EVENT_READ, self._linger_marker)
        except (OSError, ValueError):
            conn.close()
            return
        self._lingering[conn] = time.monotonic() + LINGER_S

    def _read_lingering(self, conn: socket.socket) -> None:
        try:
            if conn.recv(65536):
                return  # dropped: a message after our DISCONNECT is the broker's to redeliver
        except BlockingIOError:
            return
        except OSError:
            pass
        self._end_lingering(conn)

    def _end_lingering(self, conn: socket.socket) -> None:
        self._lingering.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn)
        conn.close()

    def _io(self, timeout: float) -> None:
        for key, mask in self._sel.select(timeout):
            client = key.data
            if client is None:
                with contextlib.suppress(BlockingIOError):
                    self._wake_r.recv(4096)
                continue
            if client is self._linger_marker:
                self._read_lingering(key.fileobj)  # type: ignore[arg-type]
                continue
            if mask & selectors.EVENT_READ:
                client.loop_read()
                sock = client.socket()
                # TLS may hold decrypted bytes the selector cannot see.
                while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
                    client.loop_read()
                    sock = client.socket()
            if mask & selectors.EVENT_WRITE and client.socket() is not None:
                client.loop_write()

    def _step_ready(self) -> None:
        while self._from_threads:
            s = self._from_threads.popleft()
            if s is not None:
                self._ready.add(s)
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            when, _, session = heapq.heappop(self._timers)
            if self._due.get(session) == when:
                del self._due[session]
                self._ready.add(session)
        ready, self._ready = self._ready, set()
        self._connect_budget = CONNECTS_PER_PASS
        for session in ready:
            try:
                nxt = session.step(now)
            except Exception:
                log.exception("a device session failed; it will be stepped again in 1 s")
                nxt = now + 1.0
            self._schedule(session, nxt)

    def _timeout(self) -> float:
        if self._ready or self._from_threads:
            return 0.0
        wait = MAX_WAIT_S
        if self._timers:
            wait = min(wait, max(0.0, self._timers[0][0] - time.monotonic()))
        return wait

    def run(self, stop: threading.Event | StopFlag, *, drain_s: float = 5.0) -> None:
        next_misc = time.monotonic() + MISC_PERIOD_S
        while not stop.is_set():
            self._io(self._timeout())
            self._step_ready()
            now = time.monotonic()
            if now >= next_misc:
                for client in list(self._clients.values()):
                    client.loop_misc()
                next_misc = now + MISC_PERIOD_S
        self._drain(drain_s)

    def _drain(self, drain_s: float) -> None:
        """Let running commands finish and report, then disconnect cleanly and flush."""
        deadline = time.monotonic() + drain_s
        for session in self._sessions:
            session.drain()
        while time.monotonic() < deadline and any(s.busy() for s in self._sessions):
            self._io(min(0.05, self._timeout()))
            self._step_ready()
        self._stopping = True
        for session in self._sessions:
            try:
                session.shutdown()
            except Exception:
                log.exception("shutdown of a device session failed")
        flush_deadline = time.monotonic() + 2.0
        while (self._clients or self._lingering) and time.monotonic() < flush_deadline:
            self._io(0.05)
            now = time.monotonic()
            for conn, give_up in list(self._lingering.items()):
                if now >= give_up:
                    self._end_lingering(conn)
        for client in list(self._clients.values()):
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(sock)
                sock.close()
        self._clients.clear()
        for conn in list(self._lingering):
            self._end_lingering(conn)

    def close(self) -> None:
        for conn in list(self._lingering):
            self._end_lingering(conn)
        self._closed = True
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
