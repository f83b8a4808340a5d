"""The local stand-in for AWS IoT's topic rule and lifecycle events, in one process.

    python -m iotbridge_local.rules --mqtt-port N --mqtt-username U --mqtt-password P \
        --iot-endpoint http://127.0.0.1:PORT [--data-dir D] [--log-level INFO]

- Rule: subscribes to `$aws/events/presence/+/+` (persistent session, QoS 1,
  so events published while it was away still arrive) and invokes
  `iotbridge_presence.handler.lambda_handler(event, context)` in-process, the
  same function the AWS rule invokes. The function finds the IoT data plane
  through AWS_ENDPOINT_URL_IOT_DATA_PLANE, set here from --iot-endpoint.
- Lifecycle events (with --data-dir): follows the broker's log
  (`D/broker/mosquitto.log`) and publishes connected/disconnected events on
  AWS's topics; its position is kept in `D/presence/state.json` and saved only
  after the broker acknowledged the events, so a restart loses none. It is
  saved at most once a second (and on shutdown): the state names every
  connected client, and writing it after each event made 10,000 connects take
  a minute to show. A killed process therefore publishes up to a second of
  events again; lifecycle events are at-least-once on AWS too, and the presence
  function ignores an event that is not newer than the one it stored.

MQTT callbacks only record; the main loop publishes and invokes.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from iotbridge_contract.mqtt import Endpoint, make_client
from iotbridge_contract.topics import PRESENCE_PREFIX
from iotbridge_local.presence import PresenceEmitter

log = logging.getLogger("iotbridge.rules")

RULE_TOPIC = f"{PRESENCE_PREFIX}+/+"
RULE_CLIENT_ID = "iotbridge.rules"  # '.': never a thing name, so never a presence shadow
POLL_SECONDS = 0.02
SAVE_EVERY_S = 1.0  # the emitter's position, at most this often while events keep coming
RETRIES = 5  # like an asynchronous Lambda invoke: a few tries, then the event is logged and dropped


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m iotbridge_local.rules", description=__doc__.split("\n\n")[0])
    p.add_argument("--mqtt-host", default="127.0.0.1")
    p.add_argument("--mqtt-port", type=int, required=True)
    p.add_argument("--mqtt-username", required=True)
    p.add_argument("--mqtt-password", default=os.environ.get("IOTBRIDGE_MQTT_PASSWORD"),
                   help="or set IOTBRIDGE_MQTT_PASSWORD, which keeps it out of the process list")
    p.add_argument("--iot-endpoint", required=True, help="IoT data plane URL, e.g. http://127.0.0.1:4443")
    p.add_argument("--data-dir", type=Path, help="stack data dir: also emit lifecycle events from its broker log")
    p.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"))
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if not args.mqtt_password:
        p.error("--mqtt-password (or IOTBRIDGE_MQTT_PASSWORD) is required")
    return args


def _lambda_context() -> Any:
    """The few attributes a Lambda context offers that a handler might read."""
    deadline = time.monotonic() + 30
    return SimpleNamespace(
        function_name="iotbridge-presence",
        aws_request_id=f"local-{time.time_ns()}",
        get_remaining_time_in_millis=lambda: max(0, int((deadline - time.monotonic()) * 1000)),
    )


class RulesProcess:
    def __init__(self, args: argparse.Namespace) -> None:
        os.environ["AWS_ENDPOINT_URL_IOT_DATA_PLANE"] = args.iot_endpoint
        os.environ.setdefault("AWS_DEFAULT_REGION", args.region)
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
        from iotbridge_presence import handler  # after the env: its client is created at import

        self.handler = handler
        self.inbox: queue.Queue[tuple[dict[str, Any], int]] = queue.Queue()
        self.retries: list[tuple[float, int, dict[str, Any], int]] = []
        self._tiebreak = itertools.count()
        self.unacked: set[int] = set()
        self.acked: set[int] = set()
        self._saved: tuple[int, int] | None = None  # the emitter position last saved, and when
        self._saved_at = 0.0
        self.acked_lock = threading.Lock()
        self.emitter: PresenceEmitter | None = None
        if args.data_dir is not None:
            data_dir = Path(args.data_dir).resolve()
            self.emitter = PresenceEmitter(data_dir / "broker" / "mosquitto.log", data_dir / "presence" / "state.json")
        endpoint = Endpoint(host=args.mqtt_host, port=args.mqtt_port, username=args.mqtt_username,
                            password=args.mqtt_password)
        self.client = make_client(RULE_CLIENT_ID, endpoint, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        # Events wait in the broker log until the rule's own subscription is in place: on a new
        # stack, an event published before the SUBACK reaches no subscriber and is dropped (a
        # device that connected early then stays "offline"). Later sessions keep the subscription.
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.endpoint = endpoint
        self.running = True

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            client.subscribe(RULE_TOPIC, qos=1)

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            event = json.loads(msg.payload)
        except ValueError:
            log.warning("not JSON on %s", msg.topic)
            return
        self.inbox.put((event, 0))

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.acked_lock:
            self.acked.add(mid)

    def run(self) -> None:
        self.client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        self.client.loop_start()
        try:
            while self.running:
                self._emit()
                self._invoke_one()
            self._drain()
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _emit(self) -> None:
        if self.emitter is None or not self.subscribed.is_set():
            return
        # Events handed to paho stay queued there across reconnects; the log position may be
        # saved only while the broker has acknowledged every one of them.
        if self.unacked:
            self._collect_acks()
            if self.unacked:
                return
        self._save(due_only=True)
        for event in self.emitter.poll():
            self.unacked.add(self.client.publish(event.topic, event.body(), qos=1).mid)
        if not self.unacked:
            self._save(due_only=True)

    def _collect_acks(self) -> None:
        with self.acked_lock:
            self.unacked -= self.acked
            self.acked.clear()

    def _save(self, *, due_only: bool) -> None:
        """Save the emitter's position if it moved (with `due_only`, not more than once every SAVE_EVERY_S)."""
        assert self.emitter is not None and not self.unacked
        position = (self.emitter.follower.inode, self.emitter.follower.offset)
        if position == self._saved or (due_only and time.monotonic() - self._saved_at < SAVE_EVERY_S):
            return
        self.emitter.save()
        self._saved, self._saved_at = position, time.monotonic()

    def _drain(self, timeout: float = 3.0) -> None:
        """On shutdown: give published events a moment to be acknowledged, so their position is saved."""
        if self.emitter is None:
            return
        deadline = time.monotonic() + timeout
        self._collect_acks()
        while self.unacked and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            self._collect_acks()
        if not self.unacked:
            self._save(due_only=False)

    def _invoke_one(self) -> None:
        """Invoke the function for one event: a due retry first, else the next new one."""
        now = time.monotonic()
        if self.retries and self.retries[0][0] <= now:
            _, _, event, attempt = heapq.heappop(self.retries)
        else:
            wait = POLL_SECONDS if not self.retries else min(POLL_SECONDS, max(0.0, self.retries[0][0] - now))
            try:
                event, attempt = self.inbox.get(timeout=wait)
            except queue.Empty:
                return
        try:
            result = self.handler.lambda_handler(event, _lambda_context())
            log.info("presence %s %s -> %s", event.get("clientId"), event.get("eventType"), result)
        except Exception:
            if attempt + 1 >= RETRIES:
                log.exception("presence event dropped after %d attempts: %s", RETRIES, event)
                return
            log.warning("presence function failed (attempt %d), will retry", attempt + 1, exc_info=True)
            # Retried later without blocking the loop, which also emits events.
            due = time.monotonic() + min(5.0, 0.2 * 2**attempt)
            heapq.heappush(self.retries, (due, next(self._tiebreak), event, attempt + 1))

    def stop(self, *_: object) -> None:
        self.running = False


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s rules %(levelname)s %(message)s", stream=sys.stderr)
    process = RulesProcess(args)
    signal.signal(signal.SIGTERM, process.stop)
    signal.signal(signal.SIGINT, process.stop)
    process.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
