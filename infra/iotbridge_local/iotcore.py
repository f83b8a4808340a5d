"""The local IoT Core: Device Shadow service over MQTT and the IoT HTTP endpoint.

    python -m iotbridge_local.iotcore --data-dir DIR --mqtt-port N --http-port N \
        [--mqtt-host H] [--mqtt-username U --mqtt-password P] [--http-host H] [--fsync]

MQTT: connects to Mosquitto with a persistent session (clean session false, a
fixed client id, QoS 1 subscriptions) so requests published while this process
is down are delivered when it comes back. It subscribes explicitly to the shadow
request topics (`$aws/things/+/shadow/{update,get,delete}` and the named
variants): a plain `#` never matches `$` topics. A request is acknowledged to
the broker (PUBACK) only after the shadow change has committed.

HTTP (127.0.0.1, what boto3 calls with `endpoint_url` / `AWS_ENDPOINT_URL_IOT_DATA_PLANE`
and `AWS_ENDPOINT_URL_IOT`):

    iot-data  POST   /topics/{topic}?qos=&retain=         Publish (a shadow request topic is handled as one)
              GET    /things/{thing}/shadow[?name=]       GetThingShadow
              POST   /things/{thing}/shadow[?name=]       UpdateThingShadow
              DELETE /things/{thing}/shadow[?name=]       DeleteThingShadow
              GET    /api/things/shadow/ListNamedShadowsForThing/{thing}?pageSize=&nextToken=
    iot       GET    /things?maxResults=&nextToken=       ListThings
              GET    /things/{thing}                      DescribeThing
              POST   /things/{thing}                      CreateThing
              DELETE /things/{thing}                      DeleteThing

Errors are AWS's: status, header `x-amzn-ErrorType`, body `{"message": ...}`,
so boto3 raises its typed exceptions. A request must be SigV4-signed, as every
SDK call is, but any credentials work (the signature is not checked, as with
moto); one from a web page (an `Origin` header) or to a non-loopback Host name
is refused with 403 (see httpserver.SignedCallersOnly).

Registered things and shadows: AWS IoT does not require a thing to be in the
registry for its shadow to be used (shadows are addressed by thing name only;
"Deleting a thing object does not delete the corresponding device's shadow").
This service follows AWS: shadows work for any valid thing name. moto differs:
it raises ResourceNotFoundException unless `iot.create_thing` ran first.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from iotbridge_contract import names, topics
from iotbridge_contract.mqtt import Endpoint, make_client
from iotbridge_contract.stopflag import StopFlag
from iotbridge_local.httpserver import LocalHTTPServer, SignedCallersOnly
from iotbridge_local.shadow.engine import MAX_PAYLOAD_BYTES, ShadowError
from iotbridge_local.shadow.service import MAX_RATE, ShadowService
from iotbridge_local.shadow.store import ShadowStore, Thing

if TYPE_CHECKING:
    import paho.mqtt.client as paho

log = logging.getLogger("iotbridge.iotcore")

CLIENT_ID = "iotbridge.iotcore"  # a "." is never in a thing name: no presence shadow for us
ACCOUNT = "123456789012"
REQUEST_FILTERS = [f"$aws/things/+/shadow/{op}" for op in topics.OPERATIONS] + [
    f"$aws/things/+/shadow/name/+/{op}" for op in topics.OPERATIONS
]
# x-amzn-ErrorType per status, as the iot-data model names them.
ERROR_TYPES = {
    400: "InvalidRequestException",
    401: "UnauthorizedException",
    403: "ForbiddenException",
    404: "ResourceNotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictException",
    413: "RequestEntityTooLargeException",
    415: "UnsupportedDocumentEncodingException",
    429: "ThrottlingException",
    500: "InternalFailureException",
    503: "ServiceUnavailableException",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or ERROR_TYPES.get(status, "InternalFailureException")


# ListThings' nextToken, opaque as AWS's: a token it did not give out is a 400 InvalidRequestException
# there, and the API's INVALID_QUERY path needs that to be exercised here too.
_TOKEN_PREFIX = "things-after."


def _after(token: str) -> str:
    """The thing name a ListThings token lists after; ApiError 400 for one this service did not give out."""
    try:
        if not token.startswith(_TOKEN_PREFIX):
            raise ValueError(token)
        raw = base64.b64decode(token.removeprefix(_TOKEN_PREFIX).encode(), altchars=b"-_", validate=True)
        return names.thing_name(raw.decode())
    except (ValueError, names.InvalidName):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise ApiError(400, "The specified nextToken is not valid") from None


def _valid_thing(value: str) -> str:
    try:
        return names.thing_name(value)
    except names.InvalidName as err:
        raise ApiError(400, str(err)) from None


def _valid_shadow(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return names.shadow_name(value)
    except names.InvalidName as err:
        raise ApiError(400, str(err)) from None


def _int_param(query: dict[str, list[str]], name: str) -> int | None:
    if name not in query:
        return None
    try:
        return int(query[name][0])
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None


class IotCore:
    """The shadow service plus its MQTT connection and HTTP endpoint; start()/stop() in-process."""

    def __init__(
        self,
        *,
        data_dir: Path,
        mqtt: Endpoint,
        http_port: int,
        http_host: str = "127.0.0.1",
        region: str = "us-east-1",
        client_id: str = CLIENT_ID,
        fsync: bool = False,
        max_rate: float | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.max_rate = max_rate
        self.endpoint = mqtt
        self.http_host, self.http_port = http_host, http_port
        self.region = region
        self.client_id = client_id
        self.fsync = fsync
        self.store: ShadowStore | None = None
        self.service: ShadowService | None = None
        self._client: paho.Client | None = None
        self._subscribed = threading.Event()
        self._http: LocalHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._marked = False  # this run created the "running" marker (a clean stop removes it)
        self._stopping = False  # requests that arrive now are left unacknowledged, for the next run
        self._last_publish: paho.MQTTMessageInfo | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 10.0) -> None:
        self.store = ShadowStore(self.data_dir / "shadows.db", fsync=self.fsync)
        self.service = ShadowService(self.store, self._publish, max_rate=self.max_rate)
        client = make_client(self.client_id, self.endpoint, clean_session=False)
        client.manual_ack_set(True)  # PUBACK once the change committed and its messages are queued
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client = client
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=30)
        client.loop_start()
        if not self._subscribed.wait(timeout):
            self.stop()
            raise RuntimeError(f"iotcore: no MQTT session with {self.endpoint.host}:{self.endpoint.port}")
        try:
            server = LocalHTTPServer((self.http_host, self.http_port), _Handler)
        except OSError:
            self.stop()  # e.g. the port is taken: leave no MQTT session or open store behind
            raise
        server.iotcore = self  # type: ignore[attr-defined]
        self.http_port = server.server_address[1]
        self._http = server
        self._http_thread = threading.Thread(target=server.serve_forever, name="iotcore-http", daemon=True)
        self._http_thread.start()
        if self._running_marker.exists():
            # The last run did not stop (a kill, a crash): the messages of its last updates may
            # never have gone out, and a device would not hear of a command queued then.
            sent = self.service.republish_deltas()
            log.warning("iotcore: the last run did not stop cleanly; published %d pending deltas again", sent)
        self._running_marker.touch()
        self._marked = True
        log.info("iotcore up: %s, mqtt %s:%s", self.url, self.endpoint.host, self.endpoint.port)

    @property
    def _running_marker(self) -> Path:
        return self.data_dir / "running"

    def stop(self) -> None:
        # A clean stop loses nothing: no new requests, the ones in progress finish (their changes
        # and messages), the broker has every message, and only then the connection goes.
        self._stopping = True
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self.service is not None:
            self.service.wait_idle(timeout=5.0)
        if self._client is not None:
            if self._last_publish is not None:
                with contextlib.suppress(RuntimeError, ValueError):
                    self._last_publish.wait_for_publish(timeout=2.0)
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        if self.store is not None:
            self.store.close()
            self.store = None
            if self._marked:  # a clean stop: every message went out
                self._running_marker.unlink(missing_ok=True)

    def __enter__(self) -> IotCore:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    # ------------------------------------------------------------ MQTT

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        client.subscribe([(f, 1) for f in REQUEST_FILTERS])

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: Any, props: Any = None) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        # Runs on paho's thread; the PUBACK goes after the change committed and its messages are queued.
        assert self.service is not None
        if self._stopping:
            return  # not acknowledged: the broker delivers it again to the next run
        if not msg.retain:
            # (A retained request replayed because we (re)subscribed was handled when it was
            # published: MQTT 3.1.1 sets the flag only on such replays. AWS handles a request once.)
            try:
                self.service.handle_mqtt(msg.topic, bytes(msg.payload))
            except Exception:  # one bad request must never stop the service
                log.exception("shadow request on %s failed", msg.topic)
        client.ack(msg.mid, msg.qos)

    def _publish(self, topic: str, payload: bytes) -> None:
        if self._client is not None:
            self._last_publish = self._client.publish(topic, payload, qos=1)

    def publish_raw(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """iot-data Publish to a non-shadow topic; returns once the broker has it (QoS 1)."""
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0:
            with contextlib.suppress(RuntimeError, ValueError):  # not connected: reported below
                info.wait_for_publish(timeout=5)
            if not info.is_published():
                raise ApiError(503, "the broker did not acknowledge the message")

    # ------------------------------------------------------------ HTTP routes

    def route(self, method: str, raw_path: str, body: bytes) -> tuple[int, bytes]:
        split = urlsplit(raw_path)
        query = parse_qs(split.query, keep_blank_values=True)
        parts = split.path.split("/")[1:]
        if parts and parts[0] == "topics" and len(parts) >= 2 and method == "POST":
            return self._publish_route(unquote("/".join(parts[1:])), query, body)
        segs = [unquote(p) for p in parts]
        if len(segs) == 3 and segs[0] == "things" and segs[2] == "shadow":
            return self._shadow_route(method, segs[1], query, body)
        if len(segs) == 5 and segs[:4] == ["api", "things", "shadow", "ListNamedShadowsForThing"] and method == "GET":
            return self._list_named(segs[4], query)
        if segs == ["things"] and method == "GET":
            return self._list_things(query)
        if len(segs) == 2 and segs[0] == "things":
            return self._thing_route(method, segs[1], body)
        raise ApiError(404 if method in ("GET", "POST", "DELETE") else 405, f"no route for {method} {split.path}")

    def _shadow_route(self, method: str, thing: str, query: dict[str, list[str]], body: bytes) -> tuple[int, bytes]:
        assert self.service is not None
        thing = _valid_thing(thing)
        shadow = _valid_shadow(query["name"][0] if "name" in query else None)
        operation = {"GET": "get", "POST": "update", "DELETE": "delete"}.get(method)
        if operation is None:
            raise ApiError(405, f"{method} is not allowed on a shadow")
        outcome = self.service.handle(thing, shadow, operation, body if operation == "update" else b"", via_mqtt=False)
        if outcome.status != 200:
            raise ApiError(outcome.status, outcome.body["message"])
        return 200, _json(outcome.body)

    def _publish_route(self, topic: str, query: dict[str, list[str]], body: bytes) -> tuple[int, bytes]:
        assert self.service is not None
        if not topic or any(c in topic for c in "+#\0") or len(topic.encode()) > 256:
            raise ApiError(400, "invalid topic")
        if len(body) > MAX_PAYLOAD_BYTES:
            raise ApiError(413, "The payload exceeds the maximum size allowed", "RequestEntityTooLargeException")
        qos = _int_param(query, "qos") or 0
        if qos not in (0, 1):
            raise ApiError(400, "qos must be 0 or 1")
        retain = query.get("retain", ["false"])[0].lower() == "true"
        if retain and topic.startswith("$"):
            # AWS: "You can't publish to a reserved topic with the RETAIN flag set". Kept by a
            # persistent broker, a retained fake delta would reach every device that subscribes.
            raise ApiError(400, f"retain is not allowed on the reserved topic {topic!r}")
        if topic.startswith(topics.SHADOW_PREFIX):
            parsed = topics.parse_shadow_topic(topic)
            if parsed is None:
                raise ApiError(400, f"invalid shadow topic {topic!r}")
            if parsed.reply is None:
                # Publishing to a shadow request topic is a shadow request, as on AWS; the
                # answer goes to the accepted/rejected topics, the HTTP call just succeeds.
                self.service.handle(parsed.thing, parsed.shadow, parsed.operation, body, via_mqtt=True)
                return 200, b"{}"
        self.publish_raw(topic, body, qos, retain)
        return 200, b"{}"

    def _list_named(self, thing: str, query: dict[str, list[str]]) -> tuple[int, bytes]:
        assert self.service is not None
        thing = _valid_thing(thing)
        token = query.get("nextToken", [None])[0]
        try:
            doc = self.service.list_named_shadows(thing, _int_param(query, "pageSize"), token)
        except ShadowError as err:
            raise ApiError(err.code, err.message) from None
        return 200, _json(doc)

    # ------------------------------------------------------------ thing registry (iot control plane)

    def _arn(self, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{ACCOUNT}:thing/{name}"

    def _thing_doc(self, thing: Thing, *, describe: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "thingName": thing.name,
            "thingArn": self._arn(thing.name),
            "attributes": thing.attributes,
            "version": thing.version,
        }
        if thing.type_name:
            doc["thingTypeName"] = thing.type_name
        if describe:
            doc["thingId"] = thing.thing_id
            doc["defaultClientId"] = thing.name
        return doc

    def _list_things(self, query: dict[str, list[str]]) -> tuple[int, bytes]:
        assert self.store is not None
        limit = _int_param(query, "maxResults") or 50
        if not 1 <= limit <= 250:
            raise ApiError(400, "maxResults must be between 1 and 250")
        token = query.get("nextToken", [None])[0]
        page = self.store.list_things(after=_after(token) if token else None, limit=limit + 1)
        doc: dict[str, Any] = {"things": [self._thing_doc(t, describe=False) for t in page[:limit]]}
        if len(page) > limit:
            doc["nextToken"] = _TOKEN_PREFIX + base64.urlsafe_b64encode(page[limit - 1].name.encode()).decode()
        return 200, _json(doc)

    def _thing_route(self, method: str, name: str, body: bytes) -> tuple[int, bytes]:
        assert self.store is not None
        name = _valid_thing(name)
        if method == "GET":
            thing = self.store.describe_thing(name)
            if thing is None:
                raise ApiError(404, f"Thing {name} cannot be found.")
            return 200, _json(self._thing_doc(thing, describe=True))
        if method == "DELETE":
            self.store.delete_thing(name)  # AWS: deleting a thing that does not exist succeeds
            return 200, b"{}"
        if method == "POST":
            try:
                req = json.loads(body or b"{}")
            except ValueError:
                raise ApiError(400, "Invalid JSON") from None
            if not isinstance(req, dict):
                raise ApiError(400, "Invalid JSON")
            attrs = (req.get("attributePayload") or {}).get("attributes") or {}
            if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
                raise ApiError(400, "attributes must be a map of strings")
            type_name = req.get("thingTypeName")
            thing, created = self.store.create_thing(name, attrs, type_name)
            if not created and (thing.attributes != attrs or thing.type_name != type_name):
                raise ApiError(409, f"Thing {name} already exists with different attributes", "ResourceAlreadyExistsException")
            return 200, _json({"thingName": name, "thingArn": self._arn(name), "thingId": thing.thing_id})
        raise ApiError(405, f"{method} is not allowed on a thing")


def _json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


MAX_BODY_BYTES = 2 * MAX_PAYLOAD_BYTES


class _Handler(SignedCallersOnly):
    server_version = "iotbridge-iotcore"

    def _serve(self) -> None:
        core: IotCore = self.server.iotcore  # type: ignore[attr-defined]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send(400, _json({"message": "Invalid Content-Length"}),
                       {"Content-Type": "application/json", "x-amzn-ErrorType": "InvalidRequestException"})  # fmt: skip
            return
        if length > MAX_BODY_BYTES:  # refuse before reading: nothing that large is a valid request
            self.close_connection = True
            self._send(
                413,
                _json({"message": "The payload exceeds the maximum size allowed"}),
                {"Content-Type": "application/json", "x-amzn-ErrorType": "RequestEntityTooLargeException"},
            )
            return
        body = self.rfile.read(length) if length else b""
        try:
            status, payload = core.route(self.command, self.path, body)
            headers = {"Content-Type": "application/json"}
        except ApiError as err:
            status, payload = err.status, _json({"message": err.message})
            headers = {"Content-Type": "application/json", "x-amzn-ErrorType": err.error_type}
        except Exception:
            log.exception("HTTP %s %s failed", self.command, self.path)
            status, payload = 500, _json({"message": "Internal service failure"})
            headers = {"Content-Type": "application/json", "x-amzn-ErrorType": "InternalFailureException"}
        self._send(status, payload, headers)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iotbridge_local.iotcore", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--mqtt-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--http-host", default="127.0.0.1",
                        help="address to listen on; requests are answered only when addressed to a loopback name")
    parser.add_argument("--mqtt-username")
    parser.add_argument(
        "--mqtt-password",
        default=os.environ.get("IOTBRIDGE_MQTT_PASSWORD"),
        help="or set IOTBRIDGE_MQTT_PASSWORD, which keeps it out of the process list",
    )
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--fsync", action="store_true", help="SQLite synchronous=FULL (survive power loss)")
    parser.add_argument("--max-rate", type=float, default=0,
                        help=f"shadow requests per second per thing before 429 (AWS allows {MAX_RATE:g}; "
                             "iotbridge up sets that); default 0: no limit")  # fmt: skip
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    stop = StopFlag()  # set by the signal handlers: no lock (see StopFlag)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    core = IotCore(
        data_dir=args.data_dir,
        mqtt=Endpoint(host=args.mqtt_host, port=args.mqtt_port, username=args.mqtt_username, password=args.mqtt_password),
        http_port=args.http_port,
        http_host=args.http_host,
        region=args.region,
        fsync=args.fsync,
        max_rate=args.max_rate or None,
    )
    core.start()
    print(f"iotcore ready http={core.url}", flush=True)
    while not stop.wait(1.0):
        pass
    core.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
