"""How the API waits for a device: polls timed by how fast the device answers, and what they cost."""

from __future__ import annotations

import threading
import time as _time
from collections import Counter
from typing import Any

import pytest

from iotbridge_api import app as app_module
from iotbridge_api import dispatch, iot, waiting
from iotbridge_contract.commands import PRESENCE_SHADOW
from iotbridge_local.testclient import ApiClient
from tests.api.conftest import FakeDeviceAnswers, make_device, shadow, worst_call_s


class Clock:
    """A monotonic clock that only moves when the code under test sleeps: the schedule, without timing noise."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class Device:
    """A shadow whose answer appears `answers_after_s` after each request; counts the reads."""

    def __init__(self, clock: Clock, answers_after_s: float) -> None:
        self.clock, self.answers_after_s = clock, answers_after_s
        self.requested_at = 0.0
        self.reads = 0

    def request(self) -> float:
        self.requested_at = self.clock.now
        self.reads = 0
        return self.requested_at

    def get_shadow(self, thing: str, shadow: str | None = None) -> dict[str, Any]:
        self.reads += 1
        answered = self.clock.now - self.requested_at >= self.answers_after_s
        return {"answered": answered}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(waiting, "time", clock)
    waiting.forget()
    return clock


def _wait(device: Device, thing: str, *, timeout_s: float = 10.0) -> tuple[bool, float]:
    since = device.request()
    seen = waiting.poll_until(thing, "commands", lambda doc: doc and doc["answered"], since + timeout_s, since=since)
    return bool(seen), device.clock.now - since


def test_polls_learn_when_a_device_answers(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a device that always answers 12 ms after a command is queued
    device = Device(clock, answers_after_s=0.012)
    monkeypatch.setattr(iot, "get_shadow", device.get_shadow)
    # WHEN several commands are awaited, a click every half second
    costs = []
    for _ in range(12):
        costs.append((_wait(device, "fast-1"), device.reads))
        clock.sleep(0.5)
    # THEN every answer is seen, and once the API has learnt the device's pace it is seen within
    #      a few ms of arriving, with at most 3 reads per command
    assert all(seen for (seen, _), _ in costs)
    for (_, detected_after), reads in costs[-5:]:
        assert detected_after <= 0.012 + 0.005
        assert reads <= 3


def test_a_slow_device_costs_few_reads(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a device that takes 2 s to answer
    device = Device(clock, answers_after_s=2.0)
    monkeypatch.setattr(iot, "get_shadow", device.get_shadow)
    # WHEN the API waits for it the first time (expecting a fast device)
    seen, detected_after = _wait(device, "slow-1")
    # THEN it sees the answer within half a second and with far fewer reads than a fixed fast poll would make
    assert seen and detected_after <= 2.5
    assert device.reads <= 16


def test_waiting_on_a_silent_device_is_bounded(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a device that never answers
    device = Device(clock, answers_after_s=float("inf"))
    monkeypatch.setattr(iot, "get_shadow", device.get_shadow)
    # WHEN the API waits the longest wait a caller may ask for (29 s)
    seen, waited = _wait(device, "gone-1", timeout_s=29.0)
    # THEN it gives up at the deadline, having read about twice a second at most (AWS allows 20/s per thing)
    assert not seen and waited == pytest.approx(29.0, abs=0.01)
    assert device.reads <= 70


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str | None]:
    reads: Counter[str | None] = Counter()
    real = iot.get_shadow

    def counting(thing: str, shadow: str | None = None) -> dict[str, Any] | None:
        reads[shadow] += 1
        return real(thing, shadow)

    monkeypatch.setattr(iot, "get_shadow", counting)
    return reads


def test_a_command_that_succeeds_does_not_read_presence(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a device that answers
    make_device("lamp-w1")
    reads = _count_reads(monkeypatch)
    # WHEN a command succeeds within the wait
    with FakeDeviceAnswers("lamp-w1"):
        response = api.post("/devices/lamp-w1/commands", json={"action": "ping", "timeoutMs": 5000})
    # THEN the presence shadow was never read: it only matters when the answer does not come
    assert response.status == 200, response.body
    assert reads[PRESENCE_SHADOW] == 0
    assert reads[None] == 2  # the advertised actions before, the reported state after


@pytest.mark.parametrize(("connected", "state"), [(True, "SENT"), (False, "QUEUED")])
def test_a_wait_that_runs_out_says_whether_the_device_is_connected(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch, connected: bool, state: str
) -> None:
    # GIVEN a device that does not answer (connected or not)
    make_device("lamp-w2", connected=connected)
    reads = _count_reads(monkeypatch)
    # WHEN the wait runs out
    response = api.post("/devices/lamp-w2/commands", json={"action": "ping", "timeoutMs": 100})
    # THEN the 202 says SENT for a connected device and QUEUED for an offline one, from one presence read
    assert response.status == 202 and response.json["state"] == state
    assert reads[PRESENCE_SHADOW] == 1


def test_a_change_is_never_reported_converged_from_a_read_older_than_it(api: ApiClient) -> None:
    # GIVEN a device reporting led=off, and a dashboard that has just spent the thing's read budget
    make_device("lamp-w3")
    for _ in range(8):
        api.patch("/devices/lamp-w3/desired", json={"state": {"led": "off"}, "waitMs": 1000})
    # WHEN it asks for led=on and waits only briefly (too briefly for a fresh read within the budget)
    response = api.patch("/devices/lamp-w3/desired", json={"state": {"led": "on"}, "waitMs": 60})
    # THEN the answer is "not converged": the device never reported on
    assert response.status == 200, response.body
    assert response.json["converged"] is False


class WallClock(Clock):
    """The fake monotonic clock, for modules that also read the wall clock or time their own work."""

    def time(self) -> float:
        return _time.time()

    def perf_counter(self) -> float:
        return self.now


def test_the_longest_wait_leaves_api_gateway_time_to_deliver_the_202(api: ApiClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a connected device that never answers, and time that passes only while the API sleeps
    make_device("lamp-w4")
    clock = WallClock()
    for module in (app_module, dispatch, waiting, iot):
        monkeypatch.setattr(module, "time", clock)
    # WHEN a caller asks to wait as long as API Gateway allows (29 s)
    started = clock.now
    response = api.post("/devices/lamp-w4/commands", json={"action": "ping", "timeoutMs": 29_000})
    # THEN the 202 comes after at most 21 s: a poll started then and the read after it, each at its
    #      slowest (3 s), end by 27 s, which leaves API Gateway 2 s to deliver it
    assert response.status == 202, response.body
    assert 20.0 <= clock.now - started <= 21.0


def test_a_wait_answers_within_api_gateways_time_when_aws_iot_is_at_its_slowest(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a connected device that never answers, and AWS IoT so slow that every call lasts its
    #   client's worst case (timeouts times attempts), on a clock that moves only when time is spent
    make_device("lamp-w5")
    clock = WallClock()
    for module in (app_module, dispatch, waiting, iot):
        monkeypatch.setattr(module, "time", clock, raising=False)
    worst_s = worst_call_s(iot._client("iot-data"))
    real_get, real_update = iot.get_shadow, iot.update_shadow

    def slowest() -> float:  # what a call may take: its timeouts, cut to the time the request has left
        left = iot.seconds_left() if hasattr(iot, "seconds_left") else None
        return worst_s if left is None else min(worst_s, max(left, 0.0))

    def slow_get(thing: str, shadow: str | None = None) -> Any:
        took = slowest()
        doc = real_get(thing, shadow)
        clock.now += took
        return doc

    def slow_update(thing: str, document: dict[str, Any], shadow: str | None = None) -> Any:
        took = slowest()
        doc = real_update(thing, document, shadow)
        clock.now += took
        return doc

    monkeypatch.setattr(iot, "get_shadow", slow_get)
    monkeypatch.setattr(iot, "update_shadow", slow_update)
    # WHEN a caller asks to wait as long as API Gateway allows (29 s)
    started = clock.now
    response = api.post("/devices/lamp-w5/commands", json={"action": "ping", "timeoutMs": 29_000})
    # THEN the answer is ready by 27 s, with the 2 s API Gateway needs to deliver it still left:
    #      a 504 would hide the id of a command that is queued and will run
    assert clock.now - started <= 27.0, clock.now - started
    assert (response.status, response.json["state"]) == (202, "SENT"), response.body
    assert response.json["id"] in shadow("lamp-w5")["state"]["desired"]


def test_waiters_for_one_device_share_its_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a device that never answers, and a shadow read that takes 30 ms
    reads = Counter[str]()

    def slow_get(thing: str, shadow: str | None = None) -> dict[str, Any]:
        reads[thing] += 1
        _time.sleep(0.03)
        return {}

    monkeypatch.setattr(iot, "get_shadow", slow_get)
    waiting.forget()

    def wait(thing: str) -> None:
        since = _time.monotonic()
        waiting.poll_until(thing, "commands", lambda doc: False, since + 1.0, since=since)

    # WHEN one caller waits a second for one device, and two callers at once for another
    wait("alone")
    both = [threading.Thread(target=wait, args=("shared",)) for _ in range(2)]
    for t in both:
        t.start()
    for t in both:
        t.join()
    # THEN the two callers cost about what one does: a read made for one answers the other too
    assert reads["shared"] <= 1.5 * reads["alone"], reads


def test_writes_and_reads_of_all_of_a_things_shadows_share_its_budget(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN a thing whose commands shadow this environment has just written a burst's worth of times
    for _ in range(int(waiting.BURST)):
        waiting.note_request("busy-1", "commands")
    device = Device(clock, answers_after_s=0.0)
    monkeypatch.setattr(iot, "get_shadow", device.get_shadow)
    # WHEN its classic shadow is polled
    start = clock.now
    assert waiting.poll_until("busy-1", None, lambda doc: doc and doc["answered"], start + 5, since=start)
    # THEN the read waits for the thing's bucket to refill: AWS counts a thing's shadows together
    assert device.reads == 1 and clock.now - start >= 1 / waiting.RATE_PER_S
