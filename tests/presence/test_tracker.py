"""From Mosquitto 2.0.11 log lines (as measured) to AWS lifecycle events."""

from __future__ import annotations

import time
from pathlib import Path

from iotbridge_local.presence import LogFollower, PresenceTracker

T = "2026-11-22T23:05:28"
T_MS = int(time.mktime(time.strptime(T, "%Y-%m-%dT%H:%M:%S"))) * 1000


def connect_line(client_id: str, user: str = "lamp-1", port: int = 50000) -> str:
    return f"{T}: New client connected from 127.0.0.1:{port} as {client_id} (p2, c1, k60, u'{user}')."


def test_connect_then_keepalive_timeout() -> None:
    # GIVEN a tracker
    tracker = PresenceTracker()
    # WHEN a client connects and later times out
    [up] = tracker.feed(connect_line("lamp-1"), now_ms=T_MS + 250)
    [down] = tracker.feed(f"{T}: Client lamp-1 has exceeded timeout, disconnecting.", now_ms=T_MS + 400)
    # THEN both events are on AWS's topics, of the same session, in order
    assert up.topic == "$aws/events/presence/connected/lamp-1"
    assert up.payload["timestamp"] == T_MS + 250
    assert up.payload["ipAddress"] == "127.0.0.1"
    assert down.topic == "$aws/events/presence/disconnected/lamp-1"
    assert down.payload["disconnectReason"] == "MQTT_KEEP_ALIVE_TIMEOUT"
    assert down.payload["sessionIdentifier"] == up.payload["sessionIdentifier"]
    assert down.payload["timestamp"] == T_MS + 400


def test_session_takeover_ends_the_old_session_before_the_new_one_starts() -> None:
    # GIVEN a connected client
    tracker = PresenceTracker()
    [first] = tracker.feed(connect_line("lamp-1"), now_ms=T_MS)
    # WHEN the same client id connects again
    [old] = tracker.feed(f"{T}: Client lamp-1 already connected, closing old connection.", now_ms=T_MS + 1)
    [new] = tracker.feed(connect_line("lamp-1", port=50001), now_ms=T_MS + 1)
    # THEN the old session ends as a duplicate and the new one has a higher version number
    assert old.payload["disconnectReason"] == "DUPLICATE_CLIENTID"
    assert old.payload["versionNumber"] == first.payload["versionNumber"]
    assert new.payload["versionNumber"] == first.payload["versionNumber"] + 1


def test_refused_and_unknown_clients_produce_nothing() -> None:
    # GIVEN a tracker that saw nobody connect
    tracker = PresenceTracker()
    # WHEN the log reports refusals and probes
    lines = [
        f"{T}: New connection from 127.0.0.1:40638 on port 54031.",
        f"{T}: Client <unknown> disconnected, not authorised.",
        f"{T}: Client <unknown> closed its connection.",
        f"{T}: Client lamp-9 disconnected.",
    ]
    # THEN no event is produced
    assert [e for line in lines for e in tracker.feed(line)] == []


def test_wildcard_client_ids_get_no_events() -> None:
    # GIVEN a client id that would change the topic (AWS skips '#' and '+')
    tracker = PresenceTracker()
    # WHEN it connects
    # THEN no event is published for it
    assert tracker.feed(connect_line("a/b+c"), now_ms=T_MS) == []


def test_broker_restart_disconnects_everyone_connected() -> None:
    # GIVEN two connected clients
    tracker = PresenceTracker()
    tracker.feed(connect_line("lamp-1"), now_ms=T_MS)
    tracker.feed(connect_line("lamp-2", user="lamp-2"), now_ms=T_MS)
    # WHEN the broker starts again without having logged its termination (a kill)
    events = tracker.feed(f"{T}: mosquitto version 2.0.11 starting", now_ms=T_MS + 5)
    # THEN both are disconnected by a server error, and nobody is left connected
    assert sorted(e.payload["clientId"] for e in events) == ["lamp-1", "lamp-2"]
    assert {e.payload["disconnectReason"] for e in events} == {"SERVER_ERROR"}
    assert tracker.connected == {}


def test_clean_broker_shutdown_is_server_initiated() -> None:
    # GIVEN a connected client
    tracker = PresenceTracker()
    tracker.feed(connect_line("lamp-1"), now_ms=T_MS)
    # WHEN the broker terminates normally, then starts
    [event] = tracker.feed(f"{T}: mosquitto version 2.0.11 terminating", now_ms=T_MS + 1)
    after = tracker.feed(f"{T}: mosquitto version 2.0.11 starting", now_ms=T_MS + 2)
    # THEN the disconnect says the server did it, and the restart adds nothing
    assert event.payload["disconnectReason"] == "SERVER_INITIATED_DISCONNECT"
    assert after == []


def test_old_lines_are_stamped_inside_their_second_and_never_backwards() -> None:
    # GIVEN a tracker catching up on lines written long ago
    tracker = PresenceTracker()
    # WHEN it reads them now
    [up] = tracker.feed(connect_line("lamp-1"), now_ms=T_MS + 3_600_000)
    [down] = tracker.feed(f"{T}: Client lamp-1 disconnected.", now_ms=T_MS + 3_600_000)
    # THEN their timestamps stay inside the line's second, in order
    assert T_MS <= up.payload["timestamp"] <= down.payload["timestamp"] <= T_MS + 999


def test_tracker_state_round_trips() -> None:
    # GIVEN a tracker with a connected client, saved and restored
    tracker = PresenceTracker()
    [up] = tracker.feed(connect_line("lamp-1"), now_ms=T_MS)
    restored = PresenceTracker.from_json(tracker.to_json())
    # WHEN the client disconnects after the restore
    [down] = restored.feed(f"{T}: Client lamp-1 closed its connection.", now_ms=T_MS + 10)
    # THEN the disconnect belongs to the session that was saved
    assert down.payload["sessionIdentifier"] == up.payload["sessionIdentifier"]
    assert down.payload["disconnectReason"] == "CONNECTION_LOST"


def test_follower_waits_for_whole_lines_and_restarts_on_a_new_file(tmp_path: Path) -> None:
    # GIVEN a log with one complete line and half of the next
    log = tmp_path / "mosquitto.log"
    log.write_text("one\ntw")
    follower = LogFollower(log)
    # WHEN it is read, completed, and then replaced by a new file
    first = follower.read_lines()
    with log.open("a") as f:
        f.write("o\n")
    second = follower.read_lines()
    log.unlink()
    log.write_text("fresh\n")
    third = follower.read_lines()
    # THEN every line is returned once, whole, and the new file is read from its start
    assert (first, second, third) == (["one"], ["two"], ["fresh"])
