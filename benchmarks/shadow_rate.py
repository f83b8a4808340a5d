"""Shadow service capacity: accepted updates per second over MQTT and over HTTP (boto3 iot-data).

MQTT: one service client keeps `window` updates in flight per thing (under the
service's limit of 10 per thing) across `things` things, and counts
`update/accepted`. HTTP: `threads` boto3 clients, one per thread (keep-alive),
each updating its own thing in a loop. Also the single-request latency of each
(one at a time), so the rate reads against the cost of one update.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import local_stack, plot_latencies, summary_ms, write_json

DEFAULTS = {"duration_s": 10.0, "things": 16, "window": 4, "threads": 4, "single": 300}
SMOKE = {"duration_s": 1.0, "things": 2, "window": 2, "threads": 2, "single": 10}


def _update_body(i: int, token: str) -> bytes:
    return json.dumps({"state": {"reported": {"counter": i}}, "clientToken": token}).encode()


def mqtt_rate(stack: Any, *, things: int, window: int, duration_s: float, single: int) -> dict[str, Any]:
    from iotbridge_contract import topics
    from iotbridge_contract.mqtt import make_client

    endpoint = stack.broker.service_endpoint()
    client = make_client(f"bench-shadow-{time.monotonic_ns()}", endpoint)
    lock = threading.Lock()
    sent_at: dict[str, float] = {}
    latencies: list[float] = []
    counts = {"accepted": 0, "rejected": 0}
    freed = threading.Condition(lock)
    in_flight = {f"bench-mqtt-{k}": 0 for k in range(things)}
    subscribed = threading.Event()

    def on_message(c: Any, userdata: Any, msg: Any) -> None:
        token = json.loads(msg.payload).get("clientToken", "")
        outcome = "accepted" if msg.topic.endswith("/accepted") else "rejected"
        with lock:
            start = sent_at.pop(token, None)
            if start is None:
                return
            latencies.append(time.perf_counter() - start)
            counts[outcome] += 1
            in_flight[token.split(".")[0]] -= 1
            freed.notify_all()

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(
        [(topics.shadow_topic(t, "update", r), 1) for t in in_flight for r in ("accepted", "rejected")]
    )
    client.connect(endpoint.host, endpoint.port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(10):
            raise TimeoutError("benchmark client did not subscribe")

        def send(thing: str, i: int) -> None:
            token = f"{thing}.{i}"
            sent_at[token] = time.perf_counter()
            in_flight[thing] += 1
            client.publish(topics.shadow_topic(thing, "update"), _update_body(i, token), qos=1)

        # one at a time: latency of a single update
        first = next(iter(in_flight))
        for i in range(single):
            with lock:
                send(first, i)
                while in_flight[first]:
                    if not freed.wait(5):
                        raise TimeoutError("no shadow reply in 5 s")
        single_latencies, latencies[:] = list(latencies), []
        counts.update(accepted=0, rejected=0)
        # saturated: keep `window` in flight per thing for `duration_s`
        start = time.perf_counter()
        i = single
        with lock:
            while time.perf_counter() - start < duration_s:
                for thing, n in in_flight.items():
                    for _ in range(window - n):
                        i += 1
                        send(thing, i)
                freed.wait(0.5)
            elapsed = time.perf_counter() - start
            accepted, rejected = counts["accepted"], counts["rejected"]
            while any(in_flight.values()):
                if not freed.wait(5):
                    break
        return {
            "updates_per_s": round(accepted / elapsed, 1),
            "accepted": accepted,
            "rejected": rejected,
            "in_flight": things * window,
            "single_ms": summary_ms(single_latencies),
            "saturated_ms": summary_ms(latencies),
            "samples": single_latencies,
        }
    finally:
        client.disconnect()
        client.loop_stop()


def http_rate(stack: Any, *, threads: int, duration_s: float, single: int) -> dict[str, Any]:
    def one_client() -> Any:
        return stack.boto3_client("iot-data")

    single_client = one_client()
    single_latencies = []
    for i in range(single + 5):
        start = time.perf_counter()
        single_client.update_thing_shadow(thingName="bench-http-single", payload=_update_body(i, f"s{i}"))["payload"].read()
        if i >= 5:
            single_latencies.append(time.perf_counter() - start)

    stop_at = time.perf_counter() + duration_s
    latencies: list[float] = []
    errors: list[str] = []

    def worker(k: int) -> int:
        client, done = one_client(), 0
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                # read the answer, as a caller would: an unread body also costs a new connection per call
                client.update_thing_shadow(thingName=f"bench-http-{k}", payload=_update_body(done, f"t{done}"))["payload"].read()
            except Exception as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - start)
            done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(worker, range(threads)))
    elapsed = time.perf_counter() - started
    return {
        "updates_per_s": round(total / elapsed, 1),
        "accepted": total,
        "errors": len(errors),
        "threads": threads,
        "single_ms": summary_ms(single_latencies),
        "saturated_ms": summary_ms(latencies),
        "samples": single_latencies,
    }


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp, local_stack(Path(tmp), devices=0, prewarm=0) as stack:
        mqtt = mqtt_rate(stack, things=int(params["things"]), window=int(params["window"]),
                         duration_s=float(params["duration_s"]), single=int(params["single"]))  # fmt: skip
        http = http_rate(stack, threads=int(params["threads"]), duration_s=float(params["duration_s"]),
                         single=int(params["single"]))  # fmt: skip
    singles = {"MQTT update→accepted": mqtt.pop("samples"), "HTTP UpdateThingShadow": http.pop("samples")}
    plot_latencies(out, "shadow_rate", singles, "Shadow service: one update at a time")
    result = {"benchmark": "shadow_rate", "params": params, "mqtt": mqtt, "http": http}
    write_json(out, "shadow_rate", result)
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    m, h = result["mqtt"], result["http"]
    return [
        ("updates/s over MQTT", f"{m['updates_per_s']} ({m['in_flight']} in flight; single p50 {m['single_ms']['p50']} ms)"),
        ("updates/s over HTTP", f"{h['updates_per_s']} ({h['threads']} threads; single p50 {h['single_ms']['p50']} ms)"),
    ]
