"""AWS IoT lifecycle events, derived from Mosquitto's connection log.

Mosquitto has no lifecycle events. It does write one log line per connect and
disconnect (`connection_messages true`), flushed at once (measured: a line is
readable ~6 ms after the CONNACK). We follow the log *file* rather than the
`$SYS/broker/log/#` topic because the file keeps what happened while nobody
was listening: after a broker restart devices reconnect within milliseconds,
before any subscriber of ours is back, and those lines would be lost on the
topic. Reading the file, we also see the restart itself (`mosquitto version …
starting`), which is the only trace a killed broker leaves: every client that
was connected then becomes disconnected, as on AWS when a broker node fails.

Lines (Mosquitto 2.0.11) and what they become:

    New client connected from IP:PORT as ID (p2, c1, k60, u'USER').   connected
    Client ID disconnected.                                          CLIENT_INITIATED_DISCONNECT
    Client ID closed its connection.                                 CONNECTION_LOST
    Bad socket read/write on client ID: why                          CONNECTION_LOST (*)
    Client ID has exceeded timeout, disconnecting.                   MQTT_KEEP_ALIVE_TIMEOUT
    Client ID already connected, closing old connection.             DUPLICATE_CLIENTID
    Client ID disconnected, not authorised.                          AUTH_ERROR
    Client ID disconnected due to …/: … and "… from ID, disconnecting."  CLIENT_ERROR
    mosquitto version V terminating                                  SERVER_INITIATED_DISCONNECT (all)
    mosquitto version V starting (without terminating before)        SERVER_ERROR (all: a kill or crash)

(*) Mosquitto 2.0.11 also drops a client that publishes where its ACL does not
allow (as AWS IoT does), logging only this line: the reason cannot tell the two
apart.

Payloads follow AWS ("Lifecycle events" in the AWS IoT developer guide):
clientId, timestamp (ms), eventType, sessionIdentifier, principalIdentifier,
ipAddress (connected), clientInitiatedDisconnect and disconnectReason
(disconnected), versionNumber (incremented for every connection of a client
id; its disconnect carries the same number). Log lines have one-second
resolution; a line read while it is fresh is stamped with the clock when read
(kept inside that second), so events keep their order to the millisecond.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotbridge_contract.topics import PRESENCE_PREFIX

_STAMP = r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d): "
# A client id runs to the first space (thing names and our service ids have none). A `.+` here made a
# long line full of " from " or " (p" cost quadratic time: 170 ms for a 16k-character client id.
_ID = r"(?P<id>[^ ]+)"
_CLIENT = _STAMP + r"Client " + _ID
_CONNECTED = re.compile(
    _STAMP + r"New client connected from (?P<ip>\S+) as " + _ID + r" \(p\d+, c\d+, k\d+(?:, u'(?P<user>[^']*)')?\)\.$"
)
_DISCONNECTS: list[tuple[re.Pattern[str], str, bool]] = [
    (re.compile(_CLIENT + r" disconnected\.$"), "CLIENT_INITIATED_DISCONNECT", True),
    (re.compile(_CLIENT + r" closed its connection\.$"), "CONNECTION_LOST", False),
    (re.compile(_STAMP + r"Bad socket read/write on client " + _ID + r": .*$"), "CONNECTION_LOST", False),
    (re.compile(_STAMP + r"Socket error on client " + _ID + r", disconnecting\.$"), "CONNECTION_LOST", False),
    (re.compile(_CLIENT + r" has exceeded timeout, disconnecting\.$"), "MQTT_KEEP_ALIVE_TIMEOUT", False),
    (re.compile(_CLIENT + r" already connected, closing old connection\.$"), "DUPLICATE_CLIENTID", False),
    (re.compile(_CLIENT + r" disconnected, not authorised\.$"), "AUTH_ERROR", False),
    (re.compile(_CLIENT + r" been disconnected by administrative action\.$"), "API_INITIATED_DISCONNECT", False),
    (re.compile(_CLIENT + r" disconnected(?::| due to) .+\.$"), "CLIENT_ERROR", False),
    (re.compile(_STAMP + r"Bad client " + _ID + r" sending multiple CONNECT messages\.$"), "CLIENT_ERROR", False),
    (re.compile(_STAMP + r".+ from " + _ID + r", disconnecting\.$"), "CLIENT_ERROR", False),
]
_TERMINATING = re.compile(_STAMP + r"mosquitto version \S+ terminating$")
_STARTING = re.compile(_STAMP + r"mosquitto version \S+ starting$")
# AWS publishes no lifecycle events for client ids with wildcards; '/' would change the topic.
_UNPUBLISHABLE = re.compile(r"[+#/\x00]")


def _line_second(stamp: str) -> int:
    # Mosquitto formats its log timestamp in local time.
    return int(time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")))


@dataclass
class Session:
    version: int
    session: str
    principal: str
    ip: str


@dataclass
class Event:
    topic: str
    payload: dict[str, Any]

    def body(self) -> bytes:
        return json.dumps(self.payload, separators=(",", ":")).encode()


@dataclass
class PresenceTracker:
    """Who is connected, from the log lines fed in order; returns the events each line causes."""

    connected: dict[str, Session] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    last_ms: int = 0
    terminating: bool = False

    def feed(self, line: str, now_ms: int | None = None) -> list[Event]:
        line = line.rstrip("\n")
        m = _CONNECTED.match(line)
        if m:
            ts = self._stamp(m["ts"], now_ms)
            return self._connect(m["id"], ts, m["ip"], m["user"] or "")
        for pattern, reason, by_client in _DISCONNECTS:
            m = pattern.match(line)
            if m:
                ts = self._stamp(m["ts"], now_ms)
                return self._disconnect(m["id"], ts, reason, by_client)
        m = _TERMINATING.match(line)
        if m:
            self.terminating = True
            return self._everyone(self._stamp(m["ts"], now_ms), "SERVER_INITIATED_DISCONNECT")
        m = _STARTING.match(line)
        if m:
            events = self._everyone(self._stamp(m["ts"], now_ms), "SERVER_ERROR")
            self.terminating = False
            return events
        return []

    def _stamp(self, stamp: str, now_ms: int | None) -> int:
        """Milliseconds for a line: the read time when fresh, clamped into the line's second; never backwards."""
        second_ms = _line_second(stamp) * 1000
        ms = second_ms + 999 if now_ms is None else min(max(now_ms, second_ms), second_ms + 999)
        self.last_ms = max(ms, self.last_ms)
        return self.last_ms

    def _connect(self, client_id: str, ts: int, ip_port: str, user: str) -> list[Event]:
        if _UNPUBLISHABLE.search(client_id):
            return []
        version = self.versions.get(client_id, 0) + 1
        self.versions[client_id] = version
        session = Session(version=version, session=str(uuid.uuid4()), principal=user, ip=ip_port.rsplit(":", 1)[0])
        self.connected[client_id] = session
        return [
            Event(
                f"{PRESENCE_PREFIX}connected/{client_id}",
                {
                    "clientId": client_id,
                    "timestamp": ts,
                    "eventType": "connected",
                    "sessionIdentifier": session.session,
                    "principalIdentifier": session.principal,
                    "ipAddress": session.ip,
                    "versionNumber": version,
                },
            )
        ]

    def _disconnect(self, client_id: str, ts: int, reason: str, by_client: bool) -> list[Event]:
        session = self.connected.pop(client_id, None)
        if session is None:  # refused before it ever connected, or already reported
            return []
        return [
            Event(
                f"{PRESENCE_PREFIX}disconnected/{client_id}",
                {
                    "clientId": client_id,
                    "timestamp": ts,
                    "eventType": "disconnected",
                    "clientInitiatedDisconnect": by_client,
                    "sessionIdentifier": session.session,
                    "principalIdentifier": session.principal,
                    "disconnectReason": reason,
                    "versionNumber": session.version,
                },
            )
        ]

    def _everyone(self, ts: int, reason: str) -> list[Event]:
        events: list[Event] = []
        for client_id in sorted(self.connected):
            events += self._disconnect(client_id, ts, reason, False)
        return events

    def to_json(self) -> dict[str, Any]:
        return {
            "connected": {k: vars(v) for k, v in self.connected.items()},
            "versions": self.versions,
            "lastMs": self.last_ms,
            "terminating": self.terminating,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PresenceTracker:
        return cls(
            connected={k: Session(**v) for k, v in data.get("connected", {}).items()},
            versions={k: int(v) for k, v in data.get("versions", {}).items()},
            last_ms=int(data.get("lastMs", 0)),
            terminating=bool(data.get("terminating", False)),
        )


class LogFollower:
    """Complete new lines of a growing file, resumable from a saved position.

    The position is (inode, offset): a replaced or truncated log starts over at 0.
    """

    def __init__(self, path: Path, inode: int = 0, offset: int = 0) -> None:
        self.path = path
        self.inode = inode
        self.offset = offset

    def read_lines(self) -> list[str]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.inode, self.offset = st.st_ino, 0
        if st.st_size == self.offset:
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read(st.st_size - self.offset)
        end = chunk.rfind(b"\n") + 1  # a line still being written waits for its newline
        self.offset += end
        return chunk[:end].decode("utf-8", "replace").splitlines()


class PresenceEmitter:
    """Tracker + follower + a state file, so a restarted emitter neither repeats nor misses events."""

    def __init__(self, log_path: Path, state_path: Path) -> None:
        self.state_path = state_path
        state: dict[str, Any] = {}
        if state_path.exists():
            state = json.loads(state_path.read_text())
        self.tracker = PresenceTracker.from_json(state.get("tracker", {}))
        self.follower = LogFollower(log_path, int(state.get("inode", 0)), int(state.get("offset", 0)))

    def poll(self) -> list[Event]:
        """Events for every line written since the last poll (the caller publishes, then calls `save`)."""
        lines = self.follower.read_lines()
        now_ms = int(time.time() * 1000)
        events: list[Event] = []
        for line in lines:
            events += self.tracker.feed(line, now_ms)
        return events

    def save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        data = {"inode": self.follower.inode, "offset": self.follower.offset, "tracker": self.tracker.to_json()}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(data, separators=(",", ":")))
        os.replace(tmp, self.state_path)
