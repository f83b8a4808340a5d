"""The local stack: Mosquitto, the IoT core (shadows + data plane), the presence rule,
the API behind a local API Gateway, the dashboard, and simulated devices.

    with LocalStack(StackConfig.free(tmp_path)) as stack:
        ...  # stack.config.api_url, stack.things

Every part but the broker is our own Python; each long-running part is a child
process whose output goes to <data_dir>/logs/<name>.log, and stop() ends them
all (SIGTERM, then SIGKILL), so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from iotbridge_local.apigw.environments import Environments
from iotbridge_local.apigw.server import ApiGateway
from iotbridge_local.broker import Broker, wait_for_port
from iotbridge_local.config import StackConfig, private_dir
from iotbridge_local.dashboard_server import DashboardServer
from iotbridge_local.lambdaapi import LambdaService
from iotbridge_local.pki import write_atomically
from iotbridge_local.processes import die_with_parent, rotate_large_logs

ROOT = Path(__file__).resolve().parents[2]
API_HANDLER = "iotbridge_api.handler.lambda_handler"
JOBS_HANDLER = "iotbridge_jobs.handler.lambda_handler"
JOBS_FUNCTION = "iotbridge-jobs"  # its name as the API gets it (on AWS: the template's !Ref JobsFunction)


def function_timeout_s(template: Path = ROOT / "template.yaml", default: float = 30.0, *, function: str = "ApiFunction") -> float:
    """A function's Timeout from template.yaml (its own, else Globals'), so local matches deployed."""
    try:
        text = template.read_text()
    except OSError:
        return default
    # A top-level section or a resource (two-space indent) runs until the next line at its indent or less.
    for block in (rf"^  {function}:\n((?:(?:    .*)?\n)*)", r"^Globals:\n((?:(?: .*)?\n)*)"):
        found = re.search(block, text, flags=re.MULTILINE)
        timeout = re.search(r"^\s+Timeout:\s*(\d+)\s*$", found.group(1), flags=re.MULTILINE) if found else None
        if timeout:
            return float(timeout.group(1))
    return default


class LocalStack:
    def __init__(self, config: StackConfig, *, prewarm: int = 1, quiet: bool = True) -> None:
        self.config = config
        self.data_dir = config.data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.broker = Broker(config)
        self.things = [f"sim-{i}" for i in range(1, config.devices + 1)]
        self.prewarm = prewarm
        self.quiet = quiet
        self._children: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        self._argv: dict[str, list[str]] = {}
        self._api: ApiGateway | None = None
        self.lambda_service: LambdaService | None = None
        self._dashboard: DashboardServer | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> LocalStack:
        private_dir(self.data_dir)
        self.logs.mkdir(parents=True, exist_ok=True)
        rotate_large_logs([*self.logs.glob("*.log"), self.broker.log_path])
        try:
            self.broker.start()
            self._start_iotcore()
            self._start_rules()
            self._register_things()
            self._start_lambda()
            self._start_api()
            self._start_dashboard()
            for thing in self.things:
                self.start_device(thing)
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def stop(self) -> None:
        for name in reversed(list(self._children)):
            self._stop_child(name)
        if self._dashboard:
            self._dashboard.stop()
            self._dashboard = None
        if self._api:
            self._api.stop()
            self._api = None
        if self.lambda_service:
            self.lambda_service.stop()
            self.lambda_service = None
        self.broker.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / "stack.json").unlink()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- parts -----------------------------------------------------------------------
    def service_args(self) -> list[str]:
        """MQTT flags for our services. The password goes in the environment (see _spawn), which
        keeps it out of the process list and cannot be misread as a flag when it starts with '-'."""
        endpoint = self.broker.service_endpoint()
        args = ["--mqtt-port", str(self.config.mqtt_port)]
        if endpoint.username:
            args += ["--mqtt-username", endpoint.username]
        return args

    def _start_iotcore(self) -> None:
        self._spawn(
            "iotcore",
            [sys.executable, "-m", "iotbridge_local.iotcore", "--data-dir", str(self.data_dir / "iotcore"),
             "--http-port", str(self.config.iot_http_port), "--max-rate", str(self.config.shadow_rate or 0),
             *self.service_args()],
        )  # fmt: skip
        wait_for_port(self.config.iot_http_port, timeout=60)  # a busy 2-core machine needed more than 15 s

    def _start_rules(self) -> None:
        if importlib.util.find_spec("iotbridge_local.rules") is None:
            return
        self._spawn(
            "rules",
            [sys.executable, "-m", "iotbridge_local.rules", "--iot-endpoint", self.config.iot_endpoint,
             "--data-dir", str(self.data_dir), *self.service_args()],
        )  # fmt: skip
        # Once subscribed, the rule publishes the connect events the broker logged before it (the
        # iotcore's, its own): wait until they are out, so whoever listens from now on hears only
        # what happens next. The rule saves its log position once the broker acknowledged them.
        state = self.data_dir / "presence" / "state.json"
        deadline = time.monotonic() + 60
        while not state.exists() and time.monotonic() < deadline:
            if not self.child_alive("rules"):
                raise RuntimeError(f"the rules process exited at start; see {self.logs / 'rules.log'}")
            time.sleep(0.05)

    def _register_things(self) -> None:
        client = self.boto3_client("iot")
        for thing in self.things:
            with contextlib.suppress(client.exceptions.ResourceAlreadyExistsException):
                client.create_thing(thingName=thing)

    def boto3_client(self, service: str) -> Any:
        import boto3

        return boto3.client(  # type: ignore[call-overload]
            service, endpoint_url=self.config.iot_endpoint, region_name=self.config.region,
            aws_access_key_id="local", aws_secret_access_key="local",
        )  # fmt: skip

    def _start_lambda(self) -> None:
        """The Lambda Invoke API, serving the fan-out function that the API invokes asynchronously."""
        jobs = Environments(
            handler=JOBS_HANDLER, env=self.config.function_env(), timeout_s=function_timeout_s(function="JobsFunction"),
            log=self.logs / "jobs.log", max_environments=self.config.jobs_concurrency, function_name="JobsFunction",
        )  # fmt: skip
        self.lambda_service = LambdaService(port=self.config.lambda_port, functions={JOBS_FUNCTION: jobs})
        self.lambda_service.start()

    def _start_api(self) -> None:
        env = self.config.function_env() | {"DASHBOARD_ORIGIN": self.config.dashboard_url, "JOBS_FUNCTION_NAME": JOBS_FUNCTION}
        environments = Environments(
            handler=API_HANDLER, env=env, timeout_s=function_timeout_s(), log=self.logs / "api.log", function_name="ApiFunction"
        )
        environments.prewarm(self.prewarm)
        self._api = ApiGateway(
            port=self.config.api_port, api_key=self.config.api_key, environments=environments,
            cors_origin=self.config.dashboard_url,
        )  # fmt: skip
        self._api.start()

    def _start_dashboard(self) -> None:
        site = {"apiUrl": self.config.api_url, "apiKey": self.config.api_key}
        self._dashboard = DashboardServer(port=self.config.dashboard_port, site_config=site)
        self._dashboard.start()

    # -- devices ---------------------------------------------------------------------
    def device_config_path(self, thing: str) -> Path:
        return self.data_dir / "devices" / thing / "agent.toml"

    def _write_device_config(self, thing: str) -> Path:
        """The Pi agent's own config file format (device/pi/iotbridge_pi/config.py), pointing at this stack."""
        endpoint = self.broker.device_endpoint(thing)
        q = json.dumps  # a JSON string is a valid TOML basic string
        lines = [
            f"thing = {q(thing)}", f"host = {q(endpoint.host)}", f"port = {endpoint.port}",
            f"state_dir = {q(str(self.data_dir / 'devices' / thing / 'state'))}",
            "telemetry_interval = 10", 'hardware = "simulated"', 'reboot = "simulated"',
        ]  # fmt: skip
        if endpoint.tls is not None:
            lines += ["[tls]", f"ca = {q(endpoint.tls.ca)}", f"cert = {q(endpoint.tls.cert)}", f"key = {q(endpoint.tls.key)}"]
        if endpoint.username:
            lines += ["[auth]", f"username = {q(endpoint.username)}", f"password = {q(endpoint.password or '')}"]
        path = self.device_config_path(thing)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, ("\n".join(lines) + "\n").encode(), secret=True)  # with --no-tls, it has the password
        return path

    def start_device(self, thing: str) -> None:
        path = self._write_device_config(thing)
        self._spawn(f"device-{thing}", [sys.executable, "-m", "iotbridge_pi", "--config", str(path)])

    def stop_device(self, thing: str, *, sig: int = signal.SIGTERM) -> None:
        self._stop_child(f"device-{thing}", sig=sig)

    # -- processes -------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in _stop_child
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        password = self.broker.service_endpoint().password
        if password:
            env["IOTBRIDGE_MQTT_PASSWORD"] = password
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=die_with_parent()
        )
        self._children[name] = (process, log)
        self._argv[name] = argv

    def _stop_child(self, name: str, *, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
        entry = self._children.pop(name, None)
        if entry is None:
            return
        process, log = entry
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop one part: "broker", "iotcore", "rules" or "device-<thing>" (SIGKILL by default: a crash)."""
        if name == "broker":
            self.broker.stop(sig)
        else:
            self._stop_child(name, sig=sig)

    def restart(self, name: str) -> None:
        """Start a part stopped by kill(); shadows, sessions and device logs persist in the data dir."""
        if name == "broker":
            self.broker.start()
        elif name.startswith("device-"):
            self.start_device(name.removeprefix("device-"))
        else:
            self._spawn(name, self._argv[name])
            if name == "iotcore":
                wait_for_port(self.config.iot_http_port, timeout=60)  # a busy 2-core machine needed more than 15 s

    def child_alive(self, name: str) -> bool:
        entry = self._children.get(name)
        return entry is not None and entry[0].poll() is None

    def wait_devices_ready(self, timeout: float = 20.0, *, give_up: Callable[[], bool] = lambda: False) -> None:
        """Until every simulated device has reported its actions and is present (or `give_up()`: a Ctrl-C)."""
        data = self.boto3_client("iot-data")
        deadline = time.monotonic() + timeout
        pending = set(self.things)
        while pending and not give_up():
            for thing in list(pending):
                try:
                    doc = json.loads(data.get_thing_shadow(thingName=thing)["payload"].read())
                    presence = json.loads(data.get_thing_shadow(thingName=thing, shadowName="presence")["payload"].read())
                except data.exceptions.ResourceNotFoundException:
                    continue
                if doc.get("state", {}).get("reported", {}).get("actions") and presence["state"]["reported"].get(
                    "connected"
                ):
                    pending.discard(thing)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"devices not ready after {timeout}s: {sorted(pending)}; see {self.logs}")
            time.sleep(0.05)

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(), "api": self.config.api_url, "apiKey": self.config.api_key,
            "dashboard": self.config.dashboard_url, "mqtts": self.config.mqtts_port, "dataDir": str(self.data_dir),
            "tls": self.config.tls,
            "iot": self.config.iot_endpoint, "mqtt": self.config.mqtt_port, "things": self.things,
            "lambda": self.config.lambda_endpoint, "ws": self.config.ws_port,
        }  # fmt: skip
        write_atomically(self.data_dir / "stack.json", json.dumps(state, indent=2).encode(), secret=True)  # the API key
