"""Fleet scale: N simulated devices connected and answering, and one bulk command to all of them.

For each size, a fresh local stack with N things in the registry and a fleet
simulator process (benchmarks.fleet_proc; every device its own MQTT connection,
the service identity on the plain port: TLS handshakes are not part of this
figure). Timed: registering the things, connecting them all, all of them
ready (actions reported), then `POST /commands {"action": "ping", "all": true}`
until every device's outcome is in its `commands` shadow — seen as it happens
on `$aws/things/+/shadow/name/commands/update/accepted`, not by polling; the same
messages show when each device got the command queued (desired.{id}). Accepted,
not documents: published at the same commit, but it echoes only the request,
while documents carry the whole shadow twice, and the watcher's CPU is taken
from the machine it measures. CPU
seconds per queued command are counted by process over the bulk phase. Then the
API's own view (`GET /commands/jobs/{id}?limit=1`) is polled as a client would,
until it says complete (each GET refreshes a bounded part of the job): how many
GETs and how long each took.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FleetProcess,
    api_client,
    cpu_seconds,
    local_stack,
    plot_timeline,
    register_things,
    stack_processes,
    wait_ready,
    write_json,
)

DEFAULTS = {"sizes": [1000, 5000, 10000], "connect_rate": 500.0, "ready_timeout_s": 600.0, "bulk_timeout_s": 180.0,
            "view_timeout_s": 120.0, "jobs_concurrency": 3}  # fmt: skip
SMOKE = {"sizes": [5], "connect_rate": 100.0, "ready_timeout_s": 60.0, "bulk_timeout_s": 60.0, "view_timeout_s": 30.0}


class OutcomeWatcher:
    """When each thing first reported each command outcome, from commands update/accepted."""

    def __init__(self, stack: Any) -> None:
        from iotbridge_contract.mqtt import make_client

        self.reported: dict[str, dict[str, float]] = {}  # command id -> thing -> first seen (monotonic)
        self.queued: dict[str, dict[str, float]] = {}  # command id -> thing -> desired first seen
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        endpoint = stack.broker.service_endpoint()
        self.client = make_client(f"bench-scale-watch-{uuid.uuid4().hex[:8]}", endpoint)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe("$aws/things/+/shadow/name/commands/update/accepted", 1)
        self.client.connect(endpoint.host, endpoint.port, keepalive=60)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("watcher did not subscribe")

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        now = time.monotonic()
        state = json.loads(msg.payload).get("state") or {}  # what this update wrote; null deletes a key
        thing = msg.topic.split("/")[2]
        with self._lock:
            for section, seen in (("reported", self.reported), ("desired", self.queued)):
                for cid, value in (state.get(section) or {}).items():
                    if value is not None:
                        seen.setdefault(cid, {}).setdefault(thing, now)

    def times(self, command_id: str) -> list[float]:
        with self._lock:
            return sorted(self.reported.get(command_id, {}).values())

    def queued_times(self, command_id: str) -> list[float]:
        with self._lock:
            # a device that answered at once may show its outcome before a desired-only document
            return sorted({**self.reported.get(command_id, {}), **self.queued.get(command_id, {})}.values())

    def count(self, command_id: str) -> int:
        with self._lock:
            return len(self.reported.get(command_id, {}))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def one_size(size: int, params: dict[str, Any], out: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"devices": size}
    with tempfile.TemporaryDirectory(prefix=f"bench-scale-{size}-") as tmp, local_stack(
        Path(tmp), devices=0, jobs_concurrency=int(params.get("jobs_concurrency", 3))
    ) as stack:
        fleet = FleetProcess(stack, prefix="fs", count=size, connect_rate=float(params["connect_rate"]))
        watcher = OutcomeWatcher(stack)
        try:
            started = time.monotonic()
            register_things(stack, fleet.things)
            result["register_s"] = round(time.monotonic() - started, 2)
            result["connect_s"] = round(fleet.wait_connected(float(params["ready_timeout_s"])) + result["register_s"], 2)
            result["ready_s"] = round(wait_ready(stack, fleet.things, float(params["ready_timeout_s"])), 2)
            client = api_client(stack)
            try:
                parts = stack_processes(stack, fleet)
                cpu_before = cpu_seconds(parts)
                sent = time.monotonic()
                status, body = client.request("POST", "/commands", {"action": "ping", "all": True, "ttlMs": 600_000})
                result["bulk_post"] = {"status": status, "seconds": round(time.monotonic() - sent, 2),
                                       "body": {k: v for k, v in (body or {}).items() if k != "notQueued"}
                                       if isinstance(body, dict) else body}  # fmt: skip
                if status != 202 or not isinstance(body, dict):
                    raise RuntimeError(f"bulk command answered {status}: {body}")
                job = body["jobId"]
                deadline = sent + float(params["bulk_timeout_s"])
                while watcher.count(job) < size and time.monotonic() < deadline:
                    time.sleep(0.5)
                done_at = watcher.times(job)
                queued_at = watcher.queued_times(job)
                parts = {**stack_processes(stack, fleet), **_fanout_processes(stack)}
                used = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in cpu_seconds(parts).items()}
                result["bulk_reported"] = len(done_at)
                result["bulk_all_reported_s"] = round(done_at[-1] - sent, 2) if len(done_at) >= size else None
                result["bulk_half_reported_s"] = round(done_at[len(done_at) // 2] - sent, 2) if done_at else None
                result["bulk_queued"] = len(queued_at)
                result["bulk_all_queued_s"] = round(queued_at[-1] - sent, 2) if len(queued_at) >= size else None
                result["cpu_ms_per_command"] = {k: round(v * 1000 / max(1, len(done_at)), 2) for k, v in used.items() if v > 0}
                result["cpu_ms_per_command_total"] = round(sum(used.values()) * 1000 / max(1, len(done_at)), 2)
                seconds = range(int(done_at[-1] - sent) + 2) if done_at else range(0)
                result["_timeline"] = [float(sum(1 for t in done_at if t - sent <= k)) for k in seconds]
                result["job_view"] = _poll_view(client, job, float(params["view_timeout_s"]))
            finally:
                client.close()
        finally:
            watcher.close()
            final = fleet.stop()
        result["handlers_started"] = final.get("commands_run")
    return result


def _fanout_processes(stack: Any) -> dict[str, list[int]]:
    """The fan-out function's execution environments (read-only use of the stack's bookkeeping)."""
    service = getattr(stack, "lambda_service", None)
    pids = [e.process.pid for envs in getattr(service, "functions", {}).values() for e in list(envs._all)]
    return {"fan-out environments": pids} if pids else {}


def _poll_view(client: Any, job: str, timeout_s: float) -> dict[str, Any]:
    """GET the job as a client polls it, until complete: how many calls, how long each took, the last view."""
    started = time.monotonic()
    took: list[float] = []
    view: Any = None
    status = 0
    while time.monotonic() - started < timeout_s:
        checked = time.monotonic()
        status, view = client.request("GET", f"/commands/jobs/{job}?limit=1")
        took.append(time.monotonic() - checked)
        if status != 200 or not isinstance(view, dict) or view.get("complete"):
            break
    keys = ("targets", "done", "complete", "counts")
    return {"status": status, "gets": len(took), "seconds_to_complete": round(time.monotonic() - started, 2),
            "get_s_max": round(max(took), 2) if took else None, "get_s_last": round(took[-1], 2) if took else None,
            **({k: view.get(k) for k in keys} if isinstance(view, dict) else {"body": view})}  # fmt: skip


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    sizes = []
    for size in params["sizes"]:
        try:
            sizes.append(one_size(int(size), params, out))
        except Exception as exc:  # a bigger size failing must not hide the smaller ones
            sizes.append({"devices": int(size), "error": f"{type(exc).__name__}: {exc}"})
    timelines = {f"{s['devices']} devices": s.pop("_timeline") for s in sizes if "_timeline" in s}
    if timelines:
        plot_timeline(out, "fleet_scale", timelines, "Bulk ping: devices that reported, after the POST", "devices")
    result = {"benchmark": "fleet_scale", "params": params, "sizes": sizes,
              "targets": {"devices": 10_000, "bulk_all_reported_s": 30}}  # fmt: skip
    write_json(out, "fleet_scale", result)
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for s in result["sizes"]:
        if "error" in s:
            rows.append((f"{s['devices']} devices", f"ERROR {s['error']}"[:150]))
            continue
        rows.append((f"{s['devices']} devices: registered + connected / then ready", f"{s['connect_s']} s / {s['ready_s']} s"))
        seen = f"{s['bulk_reported']} seen; POST took {s['bulk_post']['seconds']} s"
        rows.append((f"{s['devices']} devices: bulk ping all reported (target ≤ 30 s)", f"{s['bulk_all_reported_s']} s ({seen})"))
        if "bulk_all_queued_s" in s:
            queued = f"{s['bulk_all_queued_s']} s ({s['bulk_queued']} seen)"
            rows.append((f"{s['devices']} devices: bulk ping all queued", queued))
        if "cpu_ms_per_command" in s:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(s["cpu_ms_per_command"].items(), key=lambda kv: -kv[1]))
            rows.append((f"{s['devices']} devices: CPU ms per command", f"{s['cpu_ms_per_command_total']} ({parts})"))
        view = s.get("job_view") or {}
        if "gets" in view:
            rows.append((f"{s['devices']} devices: GET job until complete",
                         f"{view['gets']} GETs, {view['seconds_to_complete']} s (max {view['get_s_max']} s each); "
                         f"done {view.get('done')} of {view.get('targets')}"))  # fmt: skip
    return rows
