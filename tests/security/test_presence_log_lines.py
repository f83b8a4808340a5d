"""Client ids are the client's to choose (up to 65535 bytes): a long or crafted one in the broker log neither stalls
the presence rule nor makes it report another client."""

from __future__ import annotations

import time

import pytest

from iotbridge_local.presence import PresenceTracker

T = "2026-11-22T23:05:28"


@pytest.mark.parametrize(
    "line",
    [
        # the connect line's suffix repeated: each " (p" was a place to try the rest of the pattern from
        f"{T}: New client connected from 127.0.0.1:1 as {'x from y' * 4000} (p2, c1, k60, u'{'u (p1, c1, k1, u' * 2000}",
        # "… from ID, disconnecting." was tried from every " from "
        f"{T}: Client x sent junk from {'y from ' * 5000}z.",
        f"{T}: Client {'a disconnected: ' * 8000}",
    ],
    ids=["connect suffixes", "froms", "disconnected reasons"],
)
def test_a_very_long_log_line_is_parsed_in_linear_time(line: str) -> None:
    # GIVEN a tracker, and a broker log line of tens of thousands of characters built to make a regex backtrack
    tracker = PresenceTracker()
    # WHEN it reads the line
    start = time.perf_counter()
    tracker.feed(line, 0)
    took = time.perf_counter() - start
    # THEN it takes about what reading it takes (well under a millisecond), not the half second to
    # seconds the backtracking patterns took: the bound leaves a slow CI machine 300 times the time
    assert took < 0.25, f"{took * 1000:.0f} ms"


def test_a_client_id_that_imitates_the_log_format_connects_nobody_else() -> None:
    # GIVEN a tracker
    tracker = PresenceTracker()
    # WHEN a client whose id ends like the connect line's suffix connects
    line = f"{T}: New client connected from 127.0.0.1:1 as sim-1 (p2, c1, k60, u'sim-1') (p2, c1, k60, u'intruder')."
    # THEN no connection is reported for sim-1
    assert [e.payload["clientId"] for e in tracker.feed(line, 0)] != ["sim-1"]
    assert "sim-1" not in tracker.connected
