"""One command through the whole bridge, one device: p50/p90/p99 against the floor, and where the time goes.

All in one run, on one local stack with one Pi agent (mutual TLS):
- the floor (benchmarks.floor) over this stack's broker;
- `POST /devices/sim-1/commands {"action": "ping"}` through the local API Gateway;
- the parts, each timed on its own without touching anyone's code:
  gateway + Lambda environment (`GET /health` through the API),
  one data-plane GET and one UPDATE through boto3 (and the same GET raw with
  http.client, to split boto3's own cost from the server's),
  the device leg (boto3 update of `desired.{id}` → the device's
  `update/documents` carrying `reported.{id}`, seen over MQTT, no polling),
  and the function's own time, run in this process with botocore event hooks
  that count its data-plane calls per command;
- a pyinstrument profile of the function handling commands in-process.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from benchmarks import floor
from benchmarks.common import (
    FleetProcess,
    Http,
    api_client,
    environ,
    local_stack,
    plot_latencies,
    progress,
    ratio,
    summary_ms,
    wait_ready,
    write_json,
)

# pace_s: a pause between commands, like clicks. Closer together, one device's commands meet the API's
# per-thing token bucket (15 shadow reads/s, ~3 per command): measured separately as `back_to_back`.
DEFAULTS = {"commands": 200, "sim_commands": 100, "parts": 200, "floor_requests": 1000, "profiled": 60, "pace_s": 0.3,
            "back_to_back": 100, "paced_floor_requests": 100}  # fmt: skip
SMOKE = {"commands": 5, "sim_commands": 5, "parts": 5, "floor_requests": 20, "profiled": 3, "pace_s": 0.0, "back_to_back": 3,
         "paced_floor_requests": 3}  # fmt: skip

THING = "sim-1"


def api_commands(stack: Any, count: int, *, thing: str = THING, pace_s: float = 0.0,
                 desc: str = "api commands") -> tuple[list[float], list[float], Counter[str]]:
    """Wall seconds per command, the function's own latencyMs (as seconds), and the states seen."""
    client = api_client(stack)
    wall, reported, states = [], [], Counter[str]()
    try:
        for i in progress(range(count + 5), desc=desc):
            time.sleep(pace_s)
            start = time.perf_counter()
            status, body = client.request("POST", f"/devices/{thing}/commands", {"action": "ping"})
            took = time.perf_counter() - start
            states[f"{status} {body.get('state') if isinstance(body, dict) else body}"] += 1
            if i >= 5 and status == 200:
                wall.append(took)
                reported.append(float(body.get("latencyMs") or 0) / 1000)
    finally:
        client.close()
    return wall, reported, states


def api_health(stack: Any, count: int) -> list[float]:
    client = api_client(stack)
    samples = []
    try:
        for i in range(count + 5):
            start = time.perf_counter()
            status, _ = client.request("GET", "/health")
            if i >= 5 and status == 200:
                samples.append(time.perf_counter() - start)
    finally:
        client.close()
    return samples


def _ok(answer: tuple[int, Any]) -> Any:
    """An answer that must be a 200: a benchmark that timed refusals would print a lie."""
    status, body = answer
    if status != 200:
        raise RuntimeError(f"the data plane answered {status}: {body}")
    return body


def data_plane(stack: Any, count: int) -> dict[str, list[float]]:
    iot = stack.boto3_client("iot-data")
    # Unsigned, to time the call without boto3; the local data plane wants a SigV4-shaped header
    # (it refuses web pages, not signatures: any value is taken).
    raw = Http(stack.config.iot_endpoint, {"Authorization": "AWS4-HMAC-SHA256 Credential=bench"})
    body = json.dumps({"state": {"reported": {"bench": 1}}}).encode()
    calls = {
        "boto3 GetThingShadow": lambda: iot.get_thing_shadow(thingName=THING, shadowName="commands")["payload"].read(),
        "boto3 UpdateThingShadow": lambda: iot.update_thing_shadow(thingName="bench-scratch", payload=body)["payload"].read(),
        "raw HTTP GET shadow": lambda: _ok(raw.request("GET", f"/things/{THING}/shadow?name=commands")),
    }
    samples: dict[str, list[float]] = {}
    try:
        for name, call in calls.items():
            samples[name] = []
            for i in range(count + 5):
                start = time.perf_counter()
                call()
                if i >= 5:
                    samples[name].append(time.perf_counter() - start)
    finally:
        raw.close()
    return samples


def device_leg(stack: Any, count: int, thing: str = THING, pace_s: float = 0.0) -> dict[str, list[float]]:
    """boto3 update of desired.{id} until reported.{id} is in update/documents, split at the MQTT messages between.

    Stages, each from the start of the update call and seen by a subscriber (so pushed, no polling error):
    the service publishes `update/delta`; the device publishes its `update` with `reported.{id}`; the
    service publishes `update/documents` with it (the outcome is committed).
    """
    from iotbridge_contract import commands as contract
    from iotbridge_contract import topics
    from iotbridge_contract.mqtt import make_client

    endpoint = stack.broker.service_endpoint()
    stage_of = {
        topics.shadow_topic(thing, "update", "delta", shadow="commands"): "delta",
        topics.shadow_topic(thing, "update", shadow="commands"): "device update",
        topics.shadow_topic(thing, "update", "documents", shadow="commands"): "documents",
    }
    seen: dict[tuple[str, str], float] = {}
    arrived = threading.Condition()
    subscribed = threading.Event()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        now = time.perf_counter()
        stage = stage_of.get(msg.topic)
        doc = json.loads(msg.payload)
        if stage == "delta":
            ids = list(doc.get("state") or {})
        elif stage == "device update":
            ids = list(((doc.get("state") or {}).get("reported")) or {})
        else:
            ids = list((((doc.get("current") or {}).get("state") or {}).get("reported")) or {})
        with arrived:
            for cid in ids:
                seen.setdefault((stage or "", cid), now)
            arrived.notify_all()

    watcher = make_client(f"bench-watch-{uuid.uuid4().hex[:8]}", endpoint)
    watcher.on_message = on_message
    watcher.on_subscribe = lambda *_: subscribed.set()
    watcher.on_connect = lambda c, *_: c.subscribe([(topic, 1) for topic in stage_of])
    watcher.connect(endpoint.host, endpoint.port, keepalive=30)
    watcher.loop_start()
    iot = stack.boto3_client("iot-data")
    legs: dict[str, list[float]] = {"update call": [], "→ delta published": [], "→ device's update": [], "update → reported": []}
    try:
        if not subscribed.wait(10):
            raise TimeoutError("watcher did not subscribe")
        for i in progress(range(count + 3), desc=f"device leg {thing}"):
            time.sleep(pace_s)
            cid = f"bench{uuid.uuid4().hex[:12]}"
            issued = int(time.time() * 1000)
            doc = {"state": {"desired": {cid: contract.pending_entry("ping", {}, issued_at=issued, expires_at=issued + 60_000)}},
                   "clientToken": cid}  # fmt: skip
            start = time.perf_counter()
            iot.update_thing_shadow(thingName=thing, shadowName="commands", payload=json.dumps(doc).encode())["payload"].read()
            returned = time.perf_counter()
            with arrived:
                if not arrived.wait_for(lambda: ("documents", cid) in seen, timeout=10):  # noqa: B023 - called before cid changes
                    raise TimeoutError(f"the device did not report {cid} in 10 s")
            if i >= 3:
                legs["update call"].append(returned - start)
                legs["→ delta published"].append(seen.get(("delta", cid), returned) - start)
                legs["→ device's update"].append(seen.get(("device update", cid), returned) - start)
                legs["update → reported"].append(seen[("documents", cid)] - start)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    return legs


def in_process(stack: Any, count: int, profile_to: Path, pace_s: float, *, thing: str = THING) -> dict[str, Any]:
    """The function's own time and data-plane calls per command, with the same code in this process."""
    from pyinstrument import Profiler

    env = {**stack.config.function_env(), "POWERTOOLS_LOG_LEVEL": "WARNING", "POWERTOOLS_METRICS_DISABLED": "true"}
    with environ(env):
        from iotbridge_api import handler, iot
        from iotbridge_local.apigw.event import LambdaContext, build_event

        client = iot._client("iot-data")
        calls: Counter[str] = Counter()
        call_time: dict[str, float] = defaultdict(float)

        def counted(method: str, name: str) -> Any:
            original = getattr(client, method)

            def call(**kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return original(**kwargs)
                finally:
                    calls[name] += 1
                    call_time[name] += time.perf_counter() - start

            return call

        # Counted around the client's own methods: boto3's, or the functions' signed calls (iotbridge_dataplane).
        shadow_ops = {"get_thing_shadow": "GetThingShadow", "update_thing_shadow": "UpdateThingShadow"}
        for method, name in shadow_ops.items():
            setattr(client, method, counted(method, name))

        def one() -> float:
            time.sleep(pace_s)
            body = json.dumps({"action": "ping"}).encode()
            event = build_event("POST", f"/devices/{thing}/commands", headers={"Content-Type": "application/json"}, body=body)
            start = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # Metrics prints its EMF lines to stdout
                answer = handler.lambda_handler(event, LambdaContext(timeout_s=30))
            if answer["statusCode"] != 200:
                raise RuntimeError(f"in-process command answered {answer['statusCode']}: {answer.get('body')}")
            return time.perf_counter() - start

        for _ in range(3):
            one()
        calls.clear()
        call_time.clear()
        samples = [one() for _ in progress(range(count), desc="in-process")]
        per_command = {name: round(n / count, 2) for name, n in calls.items()}
        ms_per_command = {name: round(t / count * 1000, 3) for name, t in call_time.items()}
        profiler = Profiler(interval=0.0005)
        with profiler:
            for _ in range(count):
                one()
        profile_to.write_text(profiler.output_html())
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        (profile_to.with_suffix(".txt")).write_text(text)
        cpu_top, cpu_packages = _cpu_profile(one, count)
        for method in shadow_ops:
            delattr(client, method)
    return {
        "handler_ms": summary_ms(samples),
        "data_plane_calls_per_command": per_command,
        "data_plane_ms_per_command": ms_per_command,
        "samples": samples,
        "profile_html": str(profile_to),
        "profile_top": [line for line in text.splitlines() if line.strip()][:40],
        "cpu_top": cpu_top,
        "cpu_packages": cpu_packages,
    }


WAITS = ("sleep", "recv_into", "acquire", "select", "poll", "wait", "sendall", "readline")


def _cpu_profile(one: Any, count: int) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Functions by own time under cProfile, blocking waits left out: where the function's CPU goes."""
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    for _ in range(count):
        one()
    profile.disable()
    rows = []
    packages: dict[str, float] = defaultdict(float)
    for (filename, line, func), (_cc, calls, own, _cum, _callers) in pstats.Stats(profile).stats.items():  # type: ignore[attr-defined]
        if any(w in func for w in WAITS):
            continue
        where = filename.split("site-packages/")[-1].split("/work/main/")[-1]
        package = where.split("/")[0] if "/" in where else ("C builtins" if where == "~" else where)
        packages["stdlib" if "/lib/python3" in filename and "site-packages" not in filename else package] += own
        rows.append({"function": f"{where}:{line}({func})", "calls_per_command": round(calls / count, 1),
                     "own_ms_per_command": round(own * 1000 / count, 3)})  # fmt: skip
    by_package = {k: round(v * 1000 / count, 3) for k, v in sorted(packages.items(), key=lambda kv: -kv[1])[:12]}
    return sorted(rows, key=lambda r: -r["own_ms_per_command"])[:25], by_package


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-rt-") as tmp, local_stack(Path(tmp), devices=1) as stack:
        base = floor.measure(stack.broker.service_endpoint(), int(params["floor_requests"]))
        pace = float(params["pace_s"])
        wall, reported, states = api_commands(stack, int(params["commands"]), pace_s=pace)
        burst, _, burst_states = api_commands(stack, int(params["back_to_back"]), desc="back to back")
        health = api_health(stack, int(params["parts"]))
        plane = data_plane(stack, int(params["parts"]))
        legs = device_leg(stack, int(params["parts"]) // 2, pace_s=pace)
        burst_legs = device_leg(stack, int(params["parts"]) // 2)
        # The same leg to a fleet-simulator device: plain MQTT, executed log without fsync.
        sim = FleetProcess(stack, prefix="rt", count=1)
        try:
            sim.wait_connected(30)
            wait_ready(stack, sim.things, 30)
            sim_legs = device_leg(stack, int(params["parts"]) // 2, thing=sim.things[0], pace_s=pace)
            sim_wall, _, sim_states = api_commands(stack, int(params["sim_commands"]), thing=sim.things[0], pace_s=pace,
                                                   desc="api commands (fleet device)")  # fmt: skip
        finally:
            sim.stop()
        # What-if, measured rather than guessed: the same simulated device with no limit on its update rate
        # (finding 2), and the function in-process against it.
        fast = FleetProcess(stack, prefix="rtfast", count=1, extra=("--update-rate", "1e9"))
        try:
            fast.wait_connected(30)
            wait_ready(stack, fast.things, 30)
            fast_legs = device_leg(stack, int(params["parts"]) // 2, thing=fast.things[0])
            fast_wall, _, fast_states = api_commands(stack, int(params["sim_commands"]), thing=fast.things[0], pace_s=pace,
                                                     desc="api commands (no update limit)")  # fmt: skip
            what_if = in_process(stack, int(params["profiled"]), out / "roundtrip-whatif-profile.html", pace,
                                 thing=fast.things[0])  # fmt: skip
        finally:
            fast.stop()
        local = in_process(stack, int(params["profiled"]), out / "roundtrip-profile.html", pace)
        base_after = floor.measure(stack.broker.service_endpoint(), int(params["floor_requests"]) // 2)
        # The clicks above are `pace` apart: the same floor with the same pauses (idle wake-ups included).
        paced = floor.measure(stack.broker.service_endpoint(), int(params.get("paced_floor_requests", 100)), pace_s=pace)
    mqtt_floor = summary_ms(base["samples"]["mqtt"] + base_after["samples"]["mqtt"])
    http_floor = summary_ms(base["samples"]["http"] + base_after["samples"]["http"])
    api = summary_ms(wall)
    parts = {
        "api GET /health (gateway + environment + resolver)": summary_ms(health),
        **{name: summary_ms(values) for name, values in plane.items()},
        **{f"device leg (Pi agent, TLS, fsync): {name}": summary_ms(values) for name, values in legs.items()},
        **{f"device leg back to back (Pi agent): {name}": summary_ms(values) for name, values in burst_legs.items()},
        **{f"device leg (fleet sim, plain, no fsync): {name}": summary_ms(values) for name, values in sim_legs.items()},
        "API command to the fleet-sim device": summary_ms(sim_wall),
        "API command back to back (token bucket)": summary_ms(burst),
        **{f"what-if, back to back, fleet sim, gap 0: {name}": summary_ms(values) for name, values in fast_legs.items()},
        "what-if: API command to the gap-0 fleet sim": summary_ms(fast_wall),
        "what-if: function in-process, gap-0 device": what_if["handler_ms"],
        "function in-process (lambda_handler)": local["handler_ms"],
        "function-reported latencyMs": summary_ms(reported),
    }
    # The floor of a command: HTTP in and out, one MQTT request→reply to the device and back.
    floor_p50 = http_floor["p50"] + mqtt_floor["p50"]
    floor_p99 = http_floor["p99"] + mqtt_floor["p99"]
    paced_p50 = paced["http_keepalive_ms"]["p50"] + paced["mqtt_qos1_ms"]["p50"]
    paced_p99 = paced["http_keepalive_ms"]["p99"] + paced["mqtt_qos1_ms"]["p99"]
    result = {
        "benchmark": "roundtrip",
        "params": params,
        "cpu_count": os.cpu_count(),
        "load_avg_at_end": os.getloadavg(),
        "api_command_ms": api,
        "answers": dict(states),
        "answers_fleet_device": dict(sim_states),
        "answers_back_to_back": dict(burst_states),
        "answers_gap0_device": dict(fast_states),
        "what_if_data_plane_calls_per_command": what_if["data_plane_calls_per_command"],
        "floor": {
            "mqtt_qos1_ms": mqtt_floor,
            "http_keepalive_ms": http_floor,
            "command_floor_p50_ms": round(floor_p50, 3),
            "command_floor_p99_ms": round(floor_p99, 3),
        },
        "floor_paced": {
            "pace_s": pace,
            "mqtt_qos1_ms": paced["mqtt_qos1_ms"],
            "http_keepalive_ms": paced["http_keepalive_ms"],
            "command_floor_p50_ms": round(paced_p50, 3),
            "command_floor_p99_ms": round(paced_p99, 3),
        },
        "p50_over_floor": ratio(api["p50"], floor_p50),
        "p99_over_floor": ratio(api["p99"], floor_p99),
        "p50_over_paced_floor": ratio(api["p50"], paced_p50),
        "p99_over_paced_floor": ratio(api["p99"], paced_p99),
        "targets": {"p50_over_floor": 3, "p99_over_floor": 5},
        "parts_ms": parts,
        "data_plane_calls_per_command": local["data_plane_calls_per_command"],
        "data_plane_ms_per_command": local["data_plane_ms_per_command"],
        "profile_html": local["profile_html"],
        "profile_top": local["profile_top"],
        "function_cpu_top": local["cpu_top"],
        "function_cpu_ms_by_package": local["cpu_packages"],
    }
    plot_latencies(
        out, "roundtrip",
        {"API command (ping)": wall, "function in-process": local["samples"], "device leg (Pi agent)": legs["update → reported"],
         "device leg (fleet sim)": sim_legs["update → reported"], "API command (fleet sim)": sim_wall,
         "boto3 GetThingShadow": plane["boto3 GetThingShadow"], "MQTT floor": base["samples"]["mqtt"],
         "HTTP floor": base["samples"]["http"]},
        "Command round trip, 1 device, and its parts",
    )  # fmt: skip
    write_json(out, "roundtrip", result)
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    api, parts = result["api_command_ms"], result["parts_ms"]
    calls = ", ".join(f"{k} {v}" for k, v in result["data_plane_calls_per_command"].items())
    base = result["floor"]
    rows = [
        ("API command (1 device)", f"p50 {api['p50']} ms  p90 {api['p90']}  p99 {api['p99']}"),
        ("command floor (HTTP + MQTT)", f"p50 {base['command_floor_p50_ms']} ms  p99 {base['command_floor_p99_ms']}"),
        ("p50 / floor (target ≤ 3)", f"{result['p50_over_floor']}x"),
        ("p99 / floor (target ≤ 5)", f"{result['p99_over_floor']}x"),
        *([(f"command floor paced {result['floor_paced']['pace_s']} s apart, like the clicks",
            f"p50 {result['floor_paced']['command_floor_p50_ms']} ms  p99 {result['floor_paced']['command_floor_p99_ms']}"),
           ("p50 / paced floor", f"{result['p50_over_paced_floor']}x"),
           ("p99 / paced floor", f"{result['p99_over_paced_floor']}x")] if "floor_paced" in result else []),
        ("data-plane calls per command", calls),
    ]
    rows += [(f"part: {name}", f"p50 {s.get('p50')} ms  p99 {s.get('p99')}") for name, s in parts.items()]
    return rows
