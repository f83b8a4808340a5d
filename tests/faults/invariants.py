"""The promises, as checks over what a scenario observed (docs/reliability.md names each one).

Each check returns the list of broken promises, in words a person can act on;
an empty list means it held.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

from iotbridge_contract.commands import HISTORY
from iotbridge_local.stack import LocalStack
from tests.faults.harness import TERMINAL, Books, http, read_executed_log, view_key

DEVICE_STATES = {"SUCCEEDED", "FAILED", "TIMED_OUT"}  # outcomes only a device that ran the handler writes


def every_command_terminal(books: Books) -> list[str]:
    """Nothing lost: every command sent reached a terminal state the API showed."""
    problems = list(books.violations)
    for sent in books.sent:
        if sent.first is None and not any(sent.id in p for p in problems):
            problems.append(f"{sent.id}: never terminal (last view {sent.last_view})")
    return problems


def outcomes_stable_through_api(stack: LocalStack, books: Books) -> list[str]:
    """The outcome the API showed first is the one it shows now (for ids still in the device's history)."""
    problems = []
    by_thing: dict[str, list[Any]] = {}
    for sent in books.sent:
        by_thing.setdefault(sent.thing, []).append(sent)
    for thing, sent_list in by_thing.items():
        for sent in sent_list[-HISTORY:]:
            if sent.first is None:
                continue
            for pause in (0.2, 0.5, 1.0, 0):  # THROTTLED says "retry later": a caller would
                reply = http(stack.config.api_url, "GET", f"/devices/{thing}/commands/{sent.id}", key=stack.config.api_key)
                if (reply.status, reply.code) != (429, "THROTTLED"):
                    break
                time.sleep(pause)
            if reply.status != 200:
                problems.append(f"{sent.id}: GET answered {reply.status} {reply.body!r} after it was terminal")
            elif view_key(reply.body) != view_key(sent.first):
                problems.append(f"{sent.id}: outcome changed from {sent.first} to {reply.body}: it ran again")
    return problems


def never_twice(stack: LocalStack, books: Books, things: list[str]) -> list[str]:
    """The device's own executed log: an id is started at most once, its outcome never changes once
    written, it matches what the API reported, and nothing is left started-but-unfinished."""
    for thing in things:
        books.note_log(read_executed_log(stack, thing))
    problems = []
    for cid, history in books.logged.items():
        finished = [o for o in history if o is not None]
        if history and history[-1] is None:
            problems.append(f"{cid}: the device started it and never recorded an outcome")
        if finished and any(o != finished[0] for o in finished[1:]):
            problems.append(f"{cid}: the device's outcome changed {finished}: it ran again")
        if None in history[history.index(finished[0]) if finished else len(history) :]:
            problems.append(f"{cid}: started again after it finished: {history}")
    for sent in books.sent:
        if sent.first is None:
            continue
        logged = books.logged.get(sent.id)
        if logged is None:
            if sent.first.get("state") in DEVICE_STATES:
                problems.append(f"{sent.id}: the API says {sent.first['state']} but the device never logged it")
            continue
        finished = [o for o in logged if o is not None]
        if finished and view_key(finished[0]) != view_key(sent.first):
            problems.append(f"{sent.id}: API said {sent.first}, the device logged {finished[0]}")
    return problems


def toggles_alternate(stack: LocalStack, books: Books, thing: str) -> list[str]:
    """A user-visible effect: sequential LED toggles on a device that kept running alternate on/off,
    and the LED ends where the last one left it. A hidden second run breaks the rhythm."""
    results = [
        s.first["result"]["led"]
        for s in books.sent
        if s.thing == thing and s.action == "led" and s.first and s.first.get("state") == "SUCCEEDED"
    ]
    problems = []
    for i, (a, b) in enumerate(itertools.pairwise(results)):
        if a == b:
            problems.append(f"{thing}: toggles {i} and {i + 1} both left the LED {a}: a toggle ran twice or went missing")
    if results:
        reply = http(stack.config.api_url, "GET", f"/devices/{thing}", key=stack.config.api_key)
        if reply.status != 200 or reply.body["reported"].get("led") != results[-1]:
            problems.append(f"{thing}: LED reported {reply.body!r}, the last toggle said {results[-1]}")
    return problems


def versions_only_grow(books: Books) -> list[str]:
    problems = []
    for (thing, shadow), seen in books.versions.items():
        for a, b in itertools.pairwise(seen):
            if b < a:
                problems.append(f"{thing}/{shadow or 'classic'}: version went back from {a} to {b}")
                break
    return problems


def all_promises(stack: LocalStack, books: Books, things: list[str], *, steady: list[str]) -> list[str]:
    """Every check; `steady`: things whose process was never killed (their LED state is meaningful)."""
    problems = every_command_terminal(books)
    problems += outcomes_stable_through_api(stack, books)
    problems += never_twice(stack, books, things)
    for thing in steady:
        problems += toggles_alternate(stack, books, thing)
    problems += versions_only_grow(books)
    return problems


def terminal_states(books: Books) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sent in books.sent:
        state = sent.first.get("state") if sent.first else "NOT_TERMINAL"
        counts[str(state)] = counts.get(str(state), 0) + 1
    return counts


# -- acknowledged shadow updates -----------------------------------------------------------------


class AckedWriter(threading.Thread):
    """Writes `reported.seq = n` (n = 1, 2, …) to a named shadow through the data plane, one at a time,
    and remembers which writes were acknowledged (200 from UpdateThingShadow)."""

    def __init__(self, stack: LocalStack, thing: str, shadow: str = "faultprobe") -> None:
        super().__init__(daemon=True, name=f"acked-writer-{thing}")
        self.stack, self.thing, self.shadow = stack, thing, shadow
        self.acked: list[tuple[int, int]] = []  # (seq, version) acknowledged
        self.attempted = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        import boto3
        from botocore.config import Config

        data = boto3.client(
            "iot-data", endpoint_url=self.stack.config.iot_endpoint, region_name=self.stack.config.region,
            aws_access_key_id="local", aws_secret_access_key="local",
            config=Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1}),
        )  # fmt: skip
        seq = 0
        while not self.stop_event.is_set():
            seq += 1
            self.attempted = seq
            payload = json.dumps({"state": {"reported": {"seq": seq}}}).encode()
            try:
                answer = json.loads(data.update_thing_shadow(thingName=self.thing, shadowName=self.shadow,
                                                             payload=payload)["payload"].read())  # fmt: skip
            except Exception:
                time.sleep(0.05)  # down: this write may or may not have landed; it was not acknowledged
                continue
            self.acked.append((seq, int(answer["version"])))
            time.sleep(0.01)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)

    def check(self) -> list[str]:
        """The last acknowledged write (or a later attempted one) is there; versions of acks only grew."""
        if not self.acked:
            return [f"{self.thing}/{self.shadow}: no write was ever acknowledged"]
        data = self.stack.boto3_client("iot-data")
        doc = json.loads(data.get_thing_shadow(thingName=self.thing, shadowName=self.shadow)["payload"].read())
        seq, version = doc["state"]["reported"]["seq"], doc["version"]
        last_seq, last_version = self.acked[-1]
        problems = []
        if not last_seq <= seq <= self.attempted:
            problems.append(f"{self.thing}/{self.shadow}: holds seq {seq}, but seq {last_seq} was acknowledged")
        if version < last_version:
            problems.append(f"{self.thing}/{self.shadow}: version {version} < acknowledged {last_version}")
        versions = [v for _, v in self.acked]
        if any(b <= a for a, b in itertools.pairwise(versions)):
            problems.append(f"{self.thing}/{self.shadow}: acknowledged versions did not strictly grow: {versions[-20:]}")
        return problems


__all__ = ["TERMINAL", "AckedWriter", "all_promises", "terminal_states"]
