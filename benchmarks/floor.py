"""The floor: the cheapest request→reply this machine can do over the same transports.

MQTT: two paho clients (TCP_NODELAY, via iotbridge_contract.mqtt.make_client)
through our Mosquitto, QoS 1 both ways. HTTP: a stdlib handler that answers a
tiny JSON, HTTP/1.1 keep-alive, disable_nagle_algorithm. Every other figure is
read as a multiple of these, measured in the same run.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from benchmarks.common import Http, plot_latencies, progress, summary_ms, write_json

DEFAULTS = {"requests": 2000}
SMOKE = {"requests": 30}

REQUEST_TOPIC = "bench/floor/request"
REPLY_TOPIC = "bench/floor/reply"


def mqtt_round_trips(endpoint: Any, count: int, *, desc: str = "mqtt floor", pace_s: float = 0.0) -> list[float]:
    """Seconds per QoS 1 request→reply between two clients on `endpoint`, `pace_s` apart."""
    from iotbridge_contract.mqtt import make_client

    answered = threading.Event()
    responder = make_client(f"bench-floor-responder-{time.monotonic_ns()}", endpoint)
    requester = make_client(f"bench-floor-requester-{time.monotonic_ns()}", endpoint)
    subscribed = threading.Semaphore(0)

    def on_request(client: Any, userdata: Any, msg: Any) -> None:
        client.publish(REPLY_TOPIC, msg.payload, qos=1)  # the echo is the whole "work"

    def on_reply(client: Any, userdata: Any, msg: Any) -> None:
        answered.set()

    def on_subscribe(*_: Any) -> None:
        subscribed.release()

    responder.on_message, requester.on_message = on_request, on_reply
    responder.on_subscribe = requester.on_subscribe = on_subscribe
    for client, topic in ((responder, REQUEST_TOPIC), (requester, REPLY_TOPIC)):
        client.on_connect = lambda c, *_, t=topic: c.subscribe(t, qos=1)
        client.connect(endpoint.host, endpoint.port, keepalive=30)
        client.loop_start()
    try:
        for _ in range(2):
            if not subscribed.acquire(timeout=10):
                raise TimeoutError("floor clients did not subscribe")
        samples: list[float] = []
        for i in progress(range(count + 20), desc=desc):
            answered.clear()
            time.sleep(pace_s)
            start = time.perf_counter()
            requester.publish(REQUEST_TOPIC, b"%d" % i, qos=1)
            if not answered.wait(5):
                raise TimeoutError("no reply from the floor responder in 5 s")
            if i >= 20:  # the first few warm up paho and the broker
                samples.append(time.perf_counter() - start)
        return samples
    finally:
        for client in (requester, responder):
            client.disconnect()
            client.loop_stop()


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        reply = json.dumps({"echo": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def http_round_trips(count: int, *, desc: str = "http floor", pace_s: float = 0.0) -> list[float]:
    """Seconds per POST→200 to a trivial stdlib handler over one keep-alive connection, `pace_s` apart."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = Http(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        samples: list[float] = []
        for i in progress(range(count + 20), desc=desc):
            time.sleep(pace_s)
            start = time.perf_counter()
            status, _ = client.request("POST", "/echo", {"action": "ping"})
            if status != 200:
                raise RuntimeError(f"floor handler answered {status}")
            if i >= 20:
                samples.append(time.perf_counter() - start)
        return samples
    finally:
        client.close()
        server.shutdown()
        server.server_close()


def measure(endpoint: Any, count: int, *, pace_s: float = 0.0) -> dict[str, Any]:
    """Both floors; `samples` keeps the raw seconds for plots in the caller.

    Back to back (pace 0) every process stays hot. With a pause, like clicks, each request also pays
    for waking idle threads and cores: on this VM ~2 ms per data-plane call (measured), so a paced
    command must be compared with a floor paced the same way.
    """
    suffix = f" (paced {pace_s}s)" if pace_s else ""
    mqtt = mqtt_round_trips(endpoint, count, desc="mqtt floor" + suffix, pace_s=pace_s)
    http = http_round_trips(count, desc="http floor" + suffix, pace_s=pace_s)
    return {"mqtt_qos1_ms": summary_ms(mqtt), "http_keepalive_ms": summary_ms(http), "samples": {"mqtt": mqtt, "http": http}}


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    import tempfile

    from iotbridge_local.broker import Broker
    from iotbridge_local.config import StackConfig

    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp, Broker(StackConfig.free(Path(tmp))) as broker:
        floor = measure(broker.service_endpoint(), int(params["requests"]))
    samples = floor.pop("samples")
    plot_latencies(out, "floor", {"MQTT QoS 1 request→reply": samples["mqtt"], "HTTP keep-alive": samples["http"]},
                   "Floor: raw request→reply on loopback")  # fmt: skip
    result = {"benchmark": "floor", "params": params, **floor}
    write_json(out, "floor", result)
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    m, h = result["mqtt_qos1_ms"], result["http_keepalive_ms"]
    return [
        ("MQTT QoS 1 request→reply", f"p50 {m['p50']} ms  p90 {m['p90']}  p99 {m['p99']}"),
        ("HTTP keep-alive request→reply", f"p50 {h['p50']} ms  p90 {h['p90']}  p99 {h['p99']}"),
    ]
