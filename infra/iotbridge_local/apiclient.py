"""A small client of the iotbridge HTTP API, for the `iotbridge` CLI (scripts, cron jobs).

Where the API is, first match wins:
    1. --api-url / --api-key flags
    2. --stack NAME: the deployed stack's ApiUrl output, and its ApiKeyId's value from API Gateway
    3. IOTBRIDGE_API_URL / IOTBRIDGE_API_KEY in the environment
    4. the running local stack's <data-dir>/stack.json ("api", "apiKey")
A key given by flag or environment is used with a URL found by a later source.

Only the standard library, except boto3 for --stack: the CLI must start fast.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

ENV_URL = "IOTBRIDGE_API_URL"
ENV_KEY = "IOTBRIDGE_API_KEY"
DEFAULT_DATA_DIR = ".iotbridge"
USER_AGENT = "iotbridge-cli/0.1"


class NoApiConfigured(LookupError):
    """Neither flags, nor environment, nor a running local stack say where the API is."""


class ApiUnreachable(ConnectionError):
    """The API could not be reached at all (refused, DNS, TLS, timeout)."""


@dataclass(frozen=True)
class ApiTarget:
    url: str  # base URL, no trailing slash
    key: str | None
    source: str  # where the URL came from, for messages
    unreachable_hint: str = ""  # what to do when nothing answers there (the local stack: start it)


@dataclass(frozen=True)
class ApiResponse:
    status: int
    body: Any  # parsed JSON, or the raw text when the body is not JSON
    headers: Mapping[str, str]

    @property
    def code(self) -> str | None:
        """The API's error code ({"code": ...}), if the body carries one."""
        return self.body.get("code") if isinstance(self.body, dict) else None

    @property
    def message(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("message") or self.body.get("code") or "")
        return str(self.body)[:200]


def read_stack_json(data_dir: Path) -> dict[str, Any] | None:
    path = Path(data_dir) / "stack.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def resolve_target(api_url: str | None, api_key: str | None, data_dir: Path, env: Mapping[str, str] = os.environ) -> ApiTarget:
    """Flags, then environment, then the local stack; a key found alone still applies to a URL found elsewhere."""
    stack = None
    url, source = api_url, "--api-url"
    if not url and env.get(ENV_URL):
        url, source = env[ENV_URL], ENV_URL
    key = api_key or env.get(ENV_KEY) or None
    hint = ""
    if not url:
        stack = read_stack_json(data_dir)
        if stack and stack.get("api"):
            url, source = str(stack["api"]), f"{Path(data_dir) / 'stack.json'}"
            key = key or stack.get("apiKey")
            # A stack killed without a clean stop (SIGHUP, kill -9) leaves its stack.json behind.
            hint = f"the local stack may not be running: start it with `iotbridge up --data-dir {data_dir}`"
    if not url:
        raise NoApiConfigured(
            f"no API configured: pass --api-url (and --api-key), set {ENV_URL} and {ENV_KEY}, "
            f"or point --data-dir at a running local stack's data dir (none in {data_dir}; start one with "
            f"`iotbridge up --data-dir {data_dir}`)"
        )
    url = _checked_url(url)
    if not hint and urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
        hint = "if it is the local stack, it may not be running: start it with `iotbridge up`"
    return ApiTarget(url=url, key=key, source=source, unreachable_hint=hint)


def _checked_url(url: str) -> str:
    """The API's base URL, or NoApiConfigured (a usage error) saying what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise NoApiConfigured(f"API URL must start with http:// or https://, got {url!r}")
    try:
        parts.port  # noqa: B018  (raises for a port that is no number or out of range)
    except ValueError as exc:
        raise NoApiConfigured(f"API URL {url!r}: {exc}") from None
    if not parts.hostname or any(c.isspace() for c in url):
        raise NoApiConfigured(f"API URL {url!r} has no valid host")
    return url.rstrip("/")


def stack_target(stack_name: str, region: str | None, api_key: str | None) -> ApiTarget:
    """The deployed API from CloudFormation outputs (template.yaml: ApiUrl, ApiKeyId), with your AWS credentials."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

    try:
        session = boto3.Session(region_name=region)
        stacks = session.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in (stacks[0].get("Outputs") or [])} if stacks else {}
        if not outputs.get("ApiUrl"):
            raise NoApiConfigured(f"stack {stack_name!r} has no ApiUrl output (is it the iotbridge stack?)")
        if api_key is None and outputs.get("ApiKeyId"):
            api_key = session.client("apigateway").get_api_key(apiKey=outputs["ApiKeyId"], includeValue=True)["value"]
    except EndpointConnectionError as exc:
        raise ApiUnreachable(f"cannot reach AWS: {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise NoApiConfigured(f"cannot read stack {stack_name!r}: {exc}") from exc
    return ApiTarget(url=_checked_url(str(outputs["ApiUrl"])), key=api_key, source=f"stack {stack_name}")


class _NoDelayHTTPConnection(http.client.HTTPConnection):
    """Headers and body go out as separate writes: without TCP_NODELAY each request waits on Nagle."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _NoDelayHTTPSConnection(http.client.HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ApiClient:
    """One connection per request: a CLI makes few calls, and a fresh socket never hits a server-closed one."""

    def __init__(self, target: ApiTarget, *, timeout: float = 35.0) -> None:
        self.target = target
        self.timeout = timeout  # above API Gateway's 29 s so the API, not the socket, ends a long wait
        parts = urlsplit(target.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")

    def request(self, method: str, path: str, body: Any = None, query: Mapping[str, str] | None = None) -> ApiResponse:
        url = self._prefix + path + (("?" + urlencode(query)) if query else "")
        headers = {"accept": "application/json", "user-agent": USER_AGENT}
        if self.target.key:
            headers["x-api-key"] = self.target.key
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        cls = _NoDelayHTTPSConnection if self._https else _NoDelayHTTPConnection
        conn = cls(self._host, self._port, timeout=self.timeout)
        try:
            conn.request(method, url, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status, got = response.status, {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException) as exc:
            hint = f"; {self.target.unreachable_hint}" if self.target.unreachable_hint else ""
            raise ApiUnreachable(f"cannot reach the API at {self.target.url} (from {self.target.source}): {exc}{hint}") from exc
        finally:
            conn.close()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        return ApiResponse(status=status, body=parsed, headers=got)

    # -- the routes the CLI uses ---------------------------------------------------------------

    def list_devices(self) -> ApiResponse:
        """Every page of GET /devices, merged into one body."""
        devices: list[Any] = []
        token: str | None = None
        while True:
            query = {"limit": "100", **({"nextToken": token} if token else {})}
            response = self.request("GET", "/devices", query=query)
            if response.status != 200 or not isinstance(response.body, dict):
                return response
            devices.extend(response.body.get("devices") or [])
            token = response.body.get("nextToken")
            if not token:
                return ApiResponse(200, {"devices": devices, "nextToken": None}, response.headers)

    def get_device(self, thing: str, shadow: str | None = None) -> ApiResponse:
        return self.request("GET", f"/devices/{quote(thing, safe='')}", query={"shadow": shadow} if shadow else None)

    def patch_desired(self, thing: str, state: dict[str, Any], *, wait_ms: int) -> ApiResponse:
        return self.request("PATCH", f"/devices/{quote(thing, safe='')}/desired", body={"state": state, "waitMs": wait_ms})

    def send_command(self, thing: str, request: dict[str, Any]) -> ApiResponse:
        return self.request("POST", f"/devices/{quote(thing, safe='')}/commands", body=request)

    def get_command(self, thing: str, command_id: str) -> ApiResponse:
        return self.request("GET", f"/devices/{quote(thing, safe='')}/commands/{quote(command_id, safe='')}")

    def start_job(self, request: dict[str, Any]) -> ApiResponse:
        return self.request("POST", "/commands", body=request)

    def get_job(self, job_id: str, *, offset: int = 0) -> ApiResponse:
        return self.request("GET", f"/commands/jobs/{quote(job_id, safe='')}", query={"offset": str(offset)})

    def job_progress(self, job_id: str) -> ApiResponse:
        """Every window of a job's per-device progress, merged."""
        first = self.get_job(job_id)
        if first.status != 200 or not isinstance(first.body, dict):
            return first
        body = dict(first.body)
        devices = list(body.get("devices") or [])
        offset = body.get("nextOffset")
        while offset is not None:
            page = self.get_job(job_id, offset=int(offset))
            if page.status != 200 or not isinstance(page.body, dict):
                return page
            devices.extend(page.body.get("devices") or [])
            offset = page.body.get("nextOffset")
        body["devices"], body["nextOffset"] = devices, None
        return ApiResponse(200, body, first.headers)


def sleep_until(deadline: float, step: float) -> bool:
    """Sleep up to `step`, never past `deadline`; False when the deadline has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        return False
    time.sleep(min(step, left))
    return True
