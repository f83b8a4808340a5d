"""Waiting for a device's answer in its shadow, within a deadline and AWS's rate limits.

The mechanism is polling GetThingShadow with exponential backoff: it needs no
connection of its own (a Lambda holds no MQTT session between invocations) and
works unchanged on AWS and locally. Within one execution environment, all
waiters for one thing share its reads (one request answers every waiter) and a
token bucket keeps us under AWS's 20 shadow requests/s per thing. Measurements
and the reasons are in docs/waiting.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from iotbridge_api import iot

# First polls come fast (a local device answers in ~1 ms; an AWS one in ~50 ms),
# then back off so a slow device costs few requests.
BACKOFF_S = (0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.125, 0.25, 0.5)
RATE_PER_S = 15.0  # stay under AWS's 20/s per thing, leaving room for updates
BURST = 10.0


class _ThingReads:
    """Shared, rate-limited reads of one thing's shadow."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = BURST
        self.refilled = time.monotonic()
        self.doc: dict[str, Any] | None = None
        self.read_at = 0.0

    def _take_token(self, deadline: float) -> bool:
        while True:
            now = time.monotonic()
            self.tokens = min(BURST, self.tokens + (now - self.refilled) * RATE_PER_S)
            self.refilled = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            wait = (1 - self.tokens) / RATE_PER_S
            if now + wait > deadline:
                return False
            time.sleep(wait)

    def read_after(self, since: float, deadline: float, fetch: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
        """A document read no earlier than `since` (monotonic); reuses another waiter's read."""
        with self.lock:
            if self.read_at >= since:
                return self.doc
            if not self._take_token(deadline):
                return self.doc
            started = time.monotonic()
            self.doc = fetch()
            self.read_at = started
            return self.doc


_reads: dict[tuple[str, str | None], _ThingReads] = {}
_reads_lock = threading.Lock()


def _reads_for(thing: str, shadow: str | None) -> _ThingReads:
    key = (thing, shadow)
    with _reads_lock:
        reads = _reads.get(key)
        if reads is None:
            if len(_reads) > 10_000:  # bounded memory in a long-lived environment
                _reads.clear()
            reads = _reads[key] = _ThingReads()
        return reads


def note_request(thing: str, shadow: str | None = None) -> None:
    """Count a request we made outside the poller (an update) against the thing's budget."""
    reads = _reads_for(thing, shadow)
    with reads.lock:
        reads.tokens -= 1


def poll_until(
    thing: str,
    shadow: str | None,
    done: Callable[[dict[str, Any] | None], Any],
    deadline: float,
) -> Any:
    """Poll the shadow until `done(doc)` returns something truthy or the deadline passes.

    Returns what `done` returned, or None on deadline. `deadline` is time.monotonic().
    """
    reads = _reads_for(thing, shadow)

    def fetch() -> dict[str, Any] | None:
        return iot.get_shadow(thing, shadow)

    for step in range(1_000_000):
        asked = time.monotonic()
        outcome = done(reads.read_after(asked, deadline, fetch))
        if outcome:
            return outcome
        delay = BACKOFF_S[min(step, len(BACKOFF_S) - 1)]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(delay, remaining))
    return None
