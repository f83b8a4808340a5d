"""Waiting for a device's answer in its shadow, within a deadline and AWS's rate limits.

The mechanism is polling GetThingShadow: it needs no connection of its own (a
Lambda holds no MQTT session between invocations) and works unchanged on AWS
and locally. Within one execution environment, all waiters for one thing share
its reads (one request answers every waiter), a token bucket per thing (all its
shadows together, as AWS counts) keeps us under AWS's 20 shadow requests/s per thing, and the polls are timed by how fast this
thing answered before, so a device that answers in 15 ms is read at ~12 ms and
~17 ms, not at 2, 4, 8 and 16. Measurements and reasons: docs/waiting.md.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from iotbridge_api import iot

RATE_PER_S = 15.0  # stay under AWS's 20/s per thing, leaving room for updates
BURST = 10.0

# The expected answer time starts between a local device (~5-20 ms) and one on AWS (~50-200 ms)
# and follows what is seen. Polls: the first a little before the expected time, then steps of a
# quarter of it until twice it, then a backoff that keeps a slow or offline device cheap.
FIRST_GUESS_S = 0.03
FIRST_AT = 0.8
STEP = 0.25
MIN_STEP_S = 0.002
BACKOFF_FROM = 2.0
MAX_GAP_S = 0.5
EWMA_WEIGHT = 0.3  # of a new observation


def schedule(expected_s: float) -> Callable[[int, float], float]:
    """The pause before poll number `n` (0 = the first), given `elapsed_s` since the request."""
    step = max(MIN_STEP_S, expected_s * STEP)

    def pause(n: int, elapsed_s: float) -> float:
        if n == 0:
            return max(0.0, expected_s * FIRST_AT - elapsed_s)
        if elapsed_s < expected_s * BACKOFF_FROM:
            return step
        return min(MAX_GAP_S, max(step, elapsed_s / 2))  # at most 1.5x the time already waited

    return pause


class _Budget:
    """One thing's token bucket: AWS counts the requests to all of a thing's shadows together."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.tokens = BURST
        self.refilled = time.monotonic()

    def take(self, deadline: float) -> bool:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(BURST, self.tokens + (now - self.refilled) * RATE_PER_S)
                self.refilled = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return True
                wait = max((1 - self.tokens) / RATE_PER_S, 0.001)  # never a sleep too short to move the clock
            if now + wait > deadline:
                return False
            time.sleep(wait)

    def spend(self) -> None:
        with self.lock:
            self.tokens -= 1


class _ThingReads:
    """Shared, rate-limited reads of one of a thing's shadows, and how fast it answers."""

    def __init__(self, budget: _Budget) -> None:
        self.lock = threading.Lock()
        self.budget = budget
        self.doc: dict[str, Any] | None = None
        self.read_at = 0.0
        self.answer_s = FIRST_GUESS_S

    def read_after(
        self, since: float, deadline: float, fetch: Callable[[], dict[str, Any] | None]
    ) -> tuple[dict[str, Any] | None, float]:
        """A document read no earlier than `since` (monotonic), reusing another waiter's read, and when it was read."""
        with self.lock:
            if self.read_at >= since:
                return self.doc, self.read_at
            # No token in time, or no time left for a call to end before the answer is due
            if not self.budget.take(deadline) or not iot.time_for_call():
                return self.doc, self.read_at
            started = time.monotonic()
            self.doc = fetch()
            self.read_at = started
            return self.doc, self.read_at

    def observe(self, answered_s: float) -> None:
        with self.lock:
            self.answer_s += EWMA_WEIGHT * (answered_s - self.answer_s)


_reads: dict[tuple[str, str | None], _ThingReads] = {}
_budgets: dict[str, _Budget] = {}
_reads_lock = threading.Lock()


def _reads_for(thing: str, shadow: str | None) -> _ThingReads:
    key = (thing, shadow)
    with _reads_lock:
        reads = _reads.get(key)
        if reads is None:
            if len(_reads) > 10_000:  # bounded memory in a long-lived environment
                _reads.clear()
                _budgets.clear()
            budget = _budgets.get(thing)
            if budget is None:
                budget = _budgets[thing] = _Budget()
            reads = _reads[key] = _ThingReads(budget)
        return reads


def forget() -> None:
    """Drop every thing's reads, pace and budget (a test's fresh start)."""
    with _reads_lock:
        _reads.clear()
        _budgets.clear()


def note_request(thing: str, shadow: str | None = None) -> None:
    """Count a request we made outside the poller (an update) against the thing's budget."""
    _reads_for(thing, shadow).budget.spend()


def expected_answer_s(thing: str, shadow: str | None = None) -> float:
    return _reads_for(thing, shadow).answer_s


def poll_until(
    thing: str,
    shadow: str | None,
    done: Callable[[dict[str, Any] | None], Any],
    deadline: float,
    *,
    since: float | None = None,
) -> Any:
    """Poll the shadow until `done(doc)` returns something truthy or the deadline passes.

    `since` (monotonic) is when the awaited change was requested; polls are timed from it.
    Returns what `done` returned, or None on deadline. `deadline` is time.monotonic().
    """
    reads = _reads_for(thing, shadow)
    requested = time.monotonic() if since is None else since
    pause = schedule(reads.answer_s)

    def fetch() -> dict[str, Any] | None:
        return iot.get_shadow(thing, shadow)

    previous_read = requested
    seen = float("-inf")  # when the newest read this waiter looked at started
    for n in range(1_000_000):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        time.sleep(min(pause(n, time.monotonic() - requested), remaining))
        # Any read newer than the last one looked at will do, if it started after the request:
        # one another waiter made while this one slept (or waited for the lock) is as good as ours.
        doc, read_at = reads.read_after(max(requested, math.nextafter(seen, math.inf)), deadline, fetch)
        if read_at < requested or read_at <= seen:
            continue  # no token left for a new read: the cached document proves nothing new
        seen = read_at
        outcome = done(doc)
        if outcome:
            # it happened between the previous read and this one: learn the middle of that interval
            reads.observe((max(previous_read, requested) + read_at) / 2 - requested)
            return outcome
        previous_read = max(previous_read, read_at)
    return None
