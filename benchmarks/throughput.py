"""Throughput: many callers, many simulated devices, through the whole bridge.

`devices` fleet-simulator devices (benchmarks.fleet_proc, its own process) and
`callers` threads here, each with its own keep-alive connection, sending
`POST /devices/{random device}/commands {"action": "ping"}` for `duration_s`.
Then every command that was accepted but not answered with a terminal state is
looked up until `settle_s` passes; what never reaches a terminal state is
*lost*. *Run twice* compares, per device, how many handlers the device started
(its `commands_run`) with how many distinct commands report having run.
"""

from __future__ import annotations

import os
import random
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FleetProcess,
    api_client,
    cpu_seconds,
    local_stack,
    per_second,
    plot_latencies,
    plot_timeline,
    register_things,
    stack_processes,
    summary_ms,
    wait_ready,
    write_json,
)

DEFAULTS = {"devices": 100, "callers": 32, "duration_s": 60.0, "settle_s": 40.0, "environments": 16}
SMOKE = {"devices": 4, "callers": 3, "duration_s": 2.0, "settle_s": 20.0, "environments": 2}

TERMINAL = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "EXPIRED", "UNKNOWN"}
RAN = {"SUCCEEDED", "FAILED", "TIMED_OUT"}  # a handler started for these


def load(stack: Any, things: list[str], *, callers: int, duration_s: float) -> tuple[list[dict[str, Any]], float, float]:
    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + duration_s

    def caller(k: int) -> None:
        rng = random.Random(k)
        client = api_client(stack)
        mine = []
        try:
            while time.monotonic() < stop_at:
                thing, cid = rng.choice(things), uuid.uuid4().hex
                sent = time.monotonic()
                try:
                    status, body = client.request("POST", f"/devices/{thing}/commands", {"action": "ping", "id": cid})
                    state = body.get("state") if isinstance(body, dict) else None
                    code = body.get("code") if isinstance(body, dict) else None
                except Exception as exc:
                    status, state, code = 0, None, type(exc).__name__
                done = time.monotonic()
                mine.append({"id": cid, "thing": thing, "status": status, "state": state, "code": code,
                             "sent": sent, "done": done})  # fmt: skip
        finally:
            client.close()
            with lock:
                records.extend(mine)

    threads = [threading.Thread(target=caller, args=(k,), daemon=True) for k in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + 60)
    return records, start, time.monotonic()


def settle(stack: Any, records: list[dict[str, Any]], settle_s: float) -> None:
    """Follow every accepted, unfinished command until it is terminal or `settle_s` has passed."""
    open_ = [r for r in records if r["status"] in (200, 202) and r["state"] not in TERMINAL]
    client = api_client(stack)
    deadline = time.monotonic() + settle_s
    try:
        while open_ and time.monotonic() < deadline:
            still = []
            for r in open_:
                status, body = client.request("GET", f"/devices/{r['thing']}/commands/{r['id']}")
                if status == 200 and isinstance(body, dict) and body.get("state") in TERMINAL:
                    r["state"] = body["state"]
                else:
                    still.append(r)
            open_ = still
            if open_:
                time.sleep(1)
    finally:
        client.close()


def one_run(stack: Any, fleet: FleetProcess, params: dict[str, Any], label: str, before: dict[str, int]) -> dict[str, Any]:
    parts = stack_processes(stack, fleet)
    cpu_before = cpu_seconds(parts)
    records, start, end = load(stack, fleet.things, callers=int(params["callers"]), duration_s=float(params["duration_s"]))
    parts = stack_processes(stack, fleet)  # environments created during the run count too (from their start)
    cpu_used = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in cpu_seconds(parts).items()}
    answered = [r for r in records if r["status"] == 200]
    settle(stack, records, float(params["settle_s"]))
    accepted = [r for r in records if r["status"] in (200, 202)]
    errors = Counter(f"{r['status']} {r['code']}" for r in records if r["status"] not in (200, 202))
    lost = [r for r in accepted if r["state"] not in TERMINAL]
    elapsed = end - start
    return {
        "label": label,
        "sent": len(records),
        "answered_200": len(answered),
        "accepted_202": sum(1 for r in records if r["status"] == 202),
        "commands_per_s": round(len(answered) / elapsed, 1),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "lost": len(lost),
        "states": dict(Counter(r["state"] for r in accepted)),
        "latency_ms": summary_ms([r["done"] - r["sent"] for r in answered]),
        # Where the two cores went: CPU ms per answered command, by process. cores * seconds bound the rate.
        "cpu_ms_per_command": {name: round(seconds * 1000 / max(1, len(answered)), 2) for name, seconds in cpu_used.items()},
        "cpu_ms_per_command_total": round(sum(cpu_used.values()) * 1000 / max(1, len(answered)), 2),
        "cpu_seconds_available": round(elapsed * (os.cpu_count() or 1), 1),
        "cpu_seconds_used_by_stack": round(sum(cpu_used.values()), 1),
        "error_times_s": sorted(round(r["sent"] - start, 2) for r in records if r["status"] not in (200, 202))[:20],
        "_ran_by_thing": Counter(r["thing"] for r in accepted if r["state"] in RAN),
        "_latencies": [r["done"] - r["sent"] for r in answered],
        "_timeline": per_second([r["done"] for r in answered], start, end),
    }


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-tp-") as tmp, \
            local_stack(Path(tmp), devices=0, prewarm=int(params["environments"])) as stack:  # fmt: skip
        fleet = FleetProcess(stack, prefix="tp", count=int(params["devices"]))
        try:
            register_things(stack, fleet.things)
            connect_s = fleet.wait_connected(120)
            ready_s = wait_ready(stack, fleet.things, 120)
            for n in (1, 2):
                runs.append(one_run(stack, fleet, params, f"run {n}", {}))
        finally:
            final = fleet.stop()
    per_device = final.get("per_device", {})
    ran: Counter[str] = Counter()
    for r in runs:
        ran.update(r.pop("_ran_by_thing"))
    run_twice = sum(max(0, count - ran.get(thing, 0)) for thing, count in per_device.items()) if per_device else None
    latencies = {r["label"]: r.pop("_latencies") for r in runs}
    timelines = {r["label"]: r.pop("_timeline") for r in runs}
    plot_latencies(out, "throughput", latencies, f"{params['callers']} callers, {params['devices']} devices: command latency")
    plot_timeline(out, "throughput", timelines, "Commands answered (200) per second", "commands/s")
    result = {
        "benchmark": "throughput",
        "params": params,
        "fleet_connect_s": round(connect_s, 2),
        "fleet_ready_s": round(ready_s, 2),
        "runs": runs,
        "handlers_started": final.get("commands_run"),
        "commands_that_ran": sum(ran.values()),
        "run_twice": run_twice,
        "targets": {"commands_per_s": 500, "lost": 0, "run_twice": 0},
    }
    write_json(out, "throughput", result)
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = []
    for r in result["runs"]:
        detail = f"sent {r['sent']}, errors {r['errors']}, lost {r['lost']}, p50 {r['latency_ms'].get('p50')} ms"
        rows.append((f"{r['label']}: commands/s (target ≥ 500)", f"{r['commands_per_s']}  ({detail})"))
        if "cpu_ms_per_command" in r:
            parts = ", ".join(f"{k} {v}" for k, v in sorted(r["cpu_ms_per_command"].items(), key=lambda kv: -kv[1]))
            rows.append((f"{r['label']}: CPU ms per command", f"{r['cpu_ms_per_command_total']} ({parts})"))
    rows.append(("run twice (target 0)", str(result["run_twice"])))
    return rows
