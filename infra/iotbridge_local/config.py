"""Where the local stack listens and keeps its data. One object, passed to every part.

Defaults are documented in the README; every port can be overridden
(`iotbridge up --api-port …`), and tests use `StackConfig.free(tmpdir)`.
"""

from __future__ import annotations

import os
import random
import socket
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

HOST = "127.0.0.1"


# Below Linux's ephemeral range (32768-60999): a port the kernel hands out for `bind(0)` is
# also handed to outgoing connections, and one of the thousands a test run opens could take
# it between our pick and the server's bind.
PICK_RANGE = (20000, 32000)


def free_port(*, taken: frozenset[int] = frozenset()) -> int:
    """A port nothing listens on now, outside the ephemeral range and not in `taken`."""
    for _ in range(200):
        port = random.randrange(*PICK_RANGE)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: let the kernel choose
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def private_dir(path: Path) -> Path:
    """Make `path` (a data dir) readable by its owner only: it holds device keys and passwords and the API key.

    One that exists must be ours and not a shared directory: another user could read what we
    write there, or plant links where we write. PermissionError, saying so, otherwise."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"data dir {path} belongs to another user (uid {st.st_uid}), who could read or replace "
                              "the keys in it: use a directory of your own (--data-dir)")  # fmt: skip
    if st.st_mode & stat.S_ISVTX:
        raise PermissionError(f"data dir {path} is a shared directory (sticky, like /tmp): use a directory in it")
    if stat.S_IMODE(st.st_mode) & 0o7077:
        path.chmod(stat.S_IMODE(st.st_mode) & 0o700)
    return path


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    data_dir: Path = field(default_factory=lambda: Path(".iotbridge"))
    mqtt_port: int = 1883  # plain MQTT; service identities and (with tls=False) devices
    mqtts_port: int = 8883  # mutual TLS; devices authenticate with certificates (CN = thing name)
    ws_port: int = 9001  # MQTT over WebSockets (dashboard live updates)
    iot_http_port: int = 4443  # IoT data plane + control-plane subset (boto3 iot-data / iot)
    api_port: int = 3000  # the HTTP API (API Gateway stand-in)
    dashboard_port: int = 8080
    lambda_port: int = 9010  # the Lambda Invoke API (boto3 `lambda`), for the API's asynchronous fan-out
    jobs_concurrency: int = 3  # fan-out environments at once; on 2 cores more only contend (AWS runs one per page)
    devices: int = 2  # simulated devices started by `iotbridge up`
    tls: bool = True  # devices connect over mutual TLS
    # Shadow requests per second per thing before 429, as AWS IoT allows (20). `iotbridge up` (make run)
    # sets it; None (no limit) for the tests and benchmarks, which drive one device hard on purpose.
    shadow_rate: float | None = None
    api_key: str = "local-dev-key"
    region: str = "us-east-1"

    @classmethod
    def free(cls, data_dir: Path, **overrides: object) -> StackConfig:
        ports: dict[str, int] = {}
        for name in ("mqtt_port", "mqtts_port", "ws_port", "iot_http_port", "api_port", "dashboard_port", "lambda_port"):
            ports[name] = free_port(taken=frozenset(ports.values()))
        return replace(cls(data_dir=data_dir, **ports), **overrides)  # type: ignore[arg-type]

    @property
    def iot_endpoint(self) -> str:
        return f"http://{HOST}:{self.iot_http_port}"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def lambda_endpoint(self) -> str:
        return f"http://{HOST}:{self.lambda_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def function_env(self) -> dict[str, str]:
        """What the functions need locally: endpoints and dummy credentials, nothing else."""
        return {
            "AWS_ENDPOINT_URL_IOT_DATA_PLANE": self.iot_endpoint,
            "AWS_ENDPOINT_URL_IOT": self.iot_endpoint,
            "AWS_ENDPOINT_URL_LAMBDA": self.lambda_endpoint,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "POWERTOOLS_SERVICE_NAME": "iotbridge",
            "POWERTOOLS_METRICS_NAMESPACE": "iotbridge",
        }
