"""What a careful API client does during faults, and the books it keeps to check the promises.

`CommandStream` sends commands to one device over the real HTTP API, one at a
time, the way a dashboard user or a script would: it chooses each command's id,
retries a failed POST with the *same* id (the API promises that is safe), and
follows a 202 by polling `GET /devices/{thing}/commands/{id}`. For every
command it remembers the first terminal outcome the API showed, and after each
one it reads the device's own executed log and samples shadow versions, so the
checks in `invariants.py` can compare what the API said with what the device did.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotbridge_contract.commands import COMMANDS_SHADOW, CommandState
from iotbridge_local.stack import LocalStack
from iotbridge_pi.executed_log import FILE_NAME as EXECUTED_LOG_FILE
from iotbridge_pi.executed_log import read as read_log

TERMINAL = {s.value for s in CommandState if s.terminal}
# Documented answers that mean "try again with the same id" (docs/protocol.md):
# AWS IoT unreachable or throttling. Anything else 5xx is a server error.
RETRYABLE = {(502, "UPSTREAM_ERROR"), (429, "THROTTLED")}


# -- HTTP, as curl or the dashboard would send it ------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int  # 0: no HTTP answer at all (connection refused or reset, timeout)
    body: Any
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None


def http(base: str, method: str, path: str, *, key: str | None, body: Any = None, timeout: float = 40.0) -> Reply:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(response.status, json.loads(response.read() or b"null"), dict(response.headers))
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            parsed = json.loads(raw or b"null")
        except ValueError:
            parsed = raw.decode(errors="replace")
        return Reply(exc.code, parsed, dict(exc.headers))
    except (OSError, urllib.error.URLError) as exc:
        return Reply(0, str(exc))


# -- the device's own record -----------------------------------------------------------------


def executed_log_path(stack: LocalStack, thing: str) -> Path:
    """Where the Pi agent keeps the ids it has started (iotbridge_pi.executed_log)."""
    return stack.data_dir / "devices" / thing / "state" / EXECUTED_LOG_FILE


def read_executed_log(stack: LocalStack, thing: str) -> dict[str, dict[str, Any] | None]:
    """id -> logged outcome (None: started, not finished), read as the agent reads it when it boots
    (a line being appended right now is ignored, like a torn one)."""
    found = read_log(executed_log_path(stack, thing).parent)
    return {e.command_id: e.outcome for e in found.entries.values()}


# -- the books ---------------------------------------------------------------------------------


@dataclass
class Sent:
    id: str
    thing: str
    action: str
    params: dict[str, Any]
    first: dict[str, Any] | None = None  # first terminal view the API showed
    last_view: dict[str, Any] | None = None  # last view seen, terminal or not
    attempts: int = 0
    answers: list[tuple[int, str | None]] = field(default_factory=list)  # (status, code) of each POST/GET


@dataclass
class Books:
    """Everything observed, shared by the streams of one scenario."""

    sent: list[Sent] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    # id -> every distinct outcome the device's own log has held for it, in order seen
    logged: dict[str, list[dict[str, Any] | None]] = field(default_factory=dict)
    versions: dict[tuple[str, str | None], list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def violation(self, text: str) -> None:
        with self.lock:
            self.violations.append(text)

    def note_log(self, snapshot: dict[str, dict[str, Any] | None]) -> None:
        with self.lock:
            for cid, outcome in snapshot.items():
                history = self.logged.setdefault(cid, [])
                if not history or history[-1] != outcome:
                    history.append(outcome)

    def note_version(self, key: tuple[str, str | None], version: int) -> None:
        with self.lock:
            self.versions.setdefault(key, []).append(version)


def view_key(view: dict[str, Any]) -> tuple[Any, ...]:
    """What identifies one execution's outcome: a second run would change doneAt (and often result)."""
    return (view.get("state"), view.get("doneAt"), json.dumps(view.get("result"), sort_keys=True), view.get("error"))


# -- the stream --------------------------------------------------------------------------------

ACTION_CYCLE: list[tuple[str, dict[str, Any]]] = [
    ("led", {"state": "toggle"}),
    ("ping", {}),
    ("read_sensors", {}),
]


class CommandStream:
    """Sequential commands to one device, settled one by one (the device keeps only 16 outcomes)."""

    def __init__(
        self,
        stack: LocalStack,
        thing: str,
        books: Books,
        *,
        settle_s: float = 90.0,
        timeout_ms: int = 5_000,
        ttl_ms: int = 30_000,
    ) -> None:
        self.stack = stack
        self.thing = thing
        self.books = books
        self.settle_s = settle_s
        self.timeout_ms = timeout_ms
        self.ttl_ms = ttl_ms
        self.done = 0  # commands settled so far (the fault loop reads it)
        self._data = stack.boto3_client("iot-data")

    def run(self, count: int, *, stop: threading.Event | None = None, on_each: Callable[[int], None] | None = None) -> None:
        for i in range(count):
            if stop is not None and stop.is_set():
                return
            action, params = ACTION_CYCLE[i % len(ACTION_CYCLE)]
            self.send(action, params)
            self.done = i + 1
            if on_each is not None:
                on_each(i)

    def send(self, action: str, params: dict[str, Any], *, cid: str | None = None) -> Sent:
        entry = Sent(cid or f"f{uuid.uuid4().hex[:20]}", self.thing, action, params)
        with self.books.lock:
            self.books.sent.append(entry)
        body = {"action": action, "params": params, "id": entry.id, "timeoutMs": self.timeout_ms, "ttlMs": self.ttl_ms}
        deadline = time.monotonic() + self.settle_s
        api, key = self.stack.config.api_url, self.stack.config.api_key
        path = f"/devices/{self.thing}/commands"
        accepted = False
        while time.monotonic() < deadline and entry.first is None:
            if not accepted:
                entry.attempts += 1
                reply = http(api, "POST", path, key=key, body=body)
            else:
                reply = http(api, "GET", f"{path}/{entry.id}", key=key)
            entry.answers.append((reply.status, reply.code))
            if reply.status in (200, 202) and isinstance(reply.body, dict):
                accepted = True
                self._seen(entry, reply.body)
                if entry.first is None:
                    time.sleep(0.1)
            elif reply.status == 0 or (reply.status, reply.code) in RETRYABLE:
                time.sleep(0.2)  # the API or AWS IoT is down: retry, same id
            else:
                self.books.violation(f"{entry.id} ({action}): unexpected answer {reply.status} {reply.body!r}")
                return entry
        if entry.first is None:
            self.books.violation(
                f"{entry.id} ({action}) not terminal after {self.settle_s}s; last view {entry.last_view}, "
                f"answers {entry.answers[-5:]}"
            )
        self._observe_device()
        return entry

    def _seen(self, entry: Sent, view: dict[str, Any]) -> None:
        if view.get("id") != entry.id or view.get("action") != entry.action:
            self.books.violation(f"{entry.id}: the API answered for another command: {view!r}")
        entry.last_view = view
        if view.get("state") in TERMINAL and entry.first is None:
            entry.first = view

    def _observe_device(self) -> None:
        self.books.note_log(read_executed_log(self.stack, self.thing))
        for shadow in (None, COMMANDS_SHADOW):
            kwargs: dict[str, Any] = {"thingName": self.thing}
            if shadow:
                kwargs["shadowName"] = shadow
            try:
                doc = json.loads(self._data.get_thing_shadow(**kwargs)["payload"].read())
            except Exception:  # the shadow service may be down right now: no sample
                continue
            self.books.note_version((self.thing, shadow), int(doc["version"]))


# -- faults while streams run --------------------------------------------------------------------


class FaultLoop(threading.Thread):
    """Every `every` settled commands of `stream`, run `fault()` (which breaks and heals something)."""

    def __init__(self, stream: CommandStream, fault: Callable[[], None], *, every: int, stop: threading.Event) -> None:
        super().__init__(daemon=True, name="fault-loop")
        self.stream, self.fault, self.every, self.stop = stream, fault, every, stop
        self.injected = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        next_at = self.every
        try:
            while not self.stop.is_set():
                if self.stream.done >= next_at:
                    self.fault()
                    self.injected += 1
                    next_at = self.stream.done + self.every
                time.sleep(0.02)
        except BaseException as exc:  # surfaced by the test
            self.error = exc
            self.stop.set()  # a part that cannot be healed: stop the streams rather than let them time out


def run_streams_with_faults(
    stack: LocalStack,
    things: list[str],
    count: int,
    fault: Callable[[], None],
    *,
    every: int,
    books: Books | None = None,
) -> tuple[Books, int]:
    """One stream per thing, `count` commands each, with `fault()` every `every` commands of the first."""
    books = books or Books()
    streams = [CommandStream(stack, thing, books) for thing in things]
    stop = threading.Event()
    faults = FaultLoop(streams[0], fault, every=every, stop=stop)
    workers = [threading.Thread(target=s.run, args=(count,), kwargs={"stop": stop}, daemon=True) for s in streams]
    faults.start()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    faults.join(timeout=60)
    if faults.error is not None:
        raise faults.error
    return books, faults.injected


def wait_until(condition: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {what}")
        time.sleep(interval)


def wait_terminal(stack: LocalStack, thing: str, cid: str, *, timeout: float = 30.0) -> dict[str, Any]:
    """Poll GET /devices/{thing}/commands/{id} until the command is terminal; its view."""

    def terminal() -> dict[str, Any] | None:
        reply = http(stack.config.api_url, "GET", f"/devices/{thing}/commands/{cid}", key=stack.config.api_key)
        ok = reply.status == 200 and reply.body.get("state") in TERMINAL
        return reply.body if ok else None

    view: dict[str, Any] = wait_until(terminal, timeout=timeout, what=f"{thing}/{cid} terminal")
    return view


def start_stack(data_dir: Path, *, devices: int, prewarm: int = 1, attempts: int = 3,
                shadow_rate: float | None = None) -> LocalStack:  # fmt: skip
    """A started stack on free ports. Free ports are picked before they are bound, so on a busy
    machine another process can take one in between: then start again on new ports."""
    import errno

    from iotbridge_local.broker import BrokerError
    from iotbridge_local.config import StackConfig

    for attempt in range(1, attempts + 1):
        config = StackConfig.free(data_dir / f"stack{attempt}", devices=devices, shadow_rate=shadow_rate)
        stack = LocalStack(config, prewarm=prewarm)
        try:
            return stack.start()
        except (OSError, BrokerError) as exc:
            port_taken = isinstance(exc, BrokerError) or getattr(exc, "errno", None) == errno.EADDRINUSE
            if not port_taken or attempt == attempts:
                raise
    raise AssertionError("unreachable")
