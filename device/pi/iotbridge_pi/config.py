"""The agent's configuration: a TOML file (`agent.toml`) or an `AgentConfig` built in code.

thing = "pi-kitchen"
host = "abc123-ats.iot.eu-west-1.amazonaws.com"
port = 8883                 # or 443: ALPN x-amzn-mqtt-ca is then used
state_dir = "/var/lib/iotbridge-pi"
telemetry_interval = 60     # seconds
hardware = "auto"           # auto | gpio | simulated
reboot = "system"           # system (systemctl reboot) | simulated

[tls]                       # mutual TLS (AWS IoT, or the local stack's 8883)
ca = "/etc/iotbridge-pi/AmazonRootCA1.pem"
cert = "/etc/iotbridge-pi/device.pem.crt"
key = "/etc/iotbridge-pi/private.pem.key"

[auth]                      # or: plain MQTT with a username (a local stack without TLS)
username = "pi-kitchen"
password = "…"

[pins]                      # BCM numbering
led = 17
relay = 27
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iotbridge_contract import names
from iotbridge_contract.mqtt import Endpoint, TlsFiles

AWS_ALPN = "x-amzn-mqtt-ca"  # lets MQTT with X.509 certificates through on port 443


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    thing: str
    endpoint: Endpoint
    state_dir: Path
    telemetry_interval: int = 60
    hardware: str = "auto"
    reboot: str = "simulated"
    led_pin: int = 17
    relay_pin: int = 27
    keepalive: int = 60

    def __post_init__(self) -> None:
        names.thing_name(self.thing)
        if not 1 <= self.telemetry_interval <= 3600:
            raise ConfigError("telemetry_interval must be 1..3600 seconds")
        if self.hardware not in ("auto", "gpio", "simulated"):
            raise ConfigError("hardware must be auto, gpio or simulated")
        if self.reboot not in ("system", "simulated"):
            raise ConfigError("reboot must be system or simulated")


def _get(table: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = table.get(key, default)
    if value is not None and not isinstance(value, kind):
        raise ConfigError(f"{key} must be a {kind.__name__}")
    return value


def from_dict(raw: dict[str, Any], *, base_dir: Path | None = None) -> AgentConfig:
    """Relative paths in the file are relative to the file's directory."""
    base = base_dir or Path.cwd()

    def path(p: str | None) -> str | None:
        return None if p is None else str((base / p).resolve())

    thing = _get(raw, "thing", str)
    host = _get(raw, "host", str)
    if not thing or not host:
        raise ConfigError("thing and host are required")
    port = _get(raw, "port", int, 8883)
    tls_raw = _get(raw, "tls", dict)
    auth = _get(raw, "auth", dict) or {}
    tls = None
    if tls_raw is not None:
        ca = path(_get(tls_raw, "ca", str))
        if ca is None:
            raise ConfigError("[tls] needs ca")
        alpn = _get(tls_raw, "alpn", str, AWS_ALPN if port == 443 else None)
        tls = TlsFiles(ca=ca, cert=path(_get(tls_raw, "cert", str)), key=path(_get(tls_raw, "key", str)), alpn=alpn)
    endpoint = Endpoint(
        host=host,
        port=port,
        tls=tls,
        username=_get(auth, "username", str),
        password=_get(auth, "password", str),
    )
    pins = _get(raw, "pins", dict) or {}
    try:
        return AgentConfig(
            thing=thing,
            endpoint=endpoint,
            state_dir=Path(path(_get(raw, "state_dir", str, "state")) or "state"),
            telemetry_interval=_get(raw, "telemetry_interval", int, 60),
            hardware=_get(raw, "hardware", str, "auto"),
            reboot=_get(raw, "reboot", str, "simulated"),
            led_pin=_get(pins, "led", int, 17),
            relay_pin=_get(pins, "relay", int, 27),
            keepalive=_get(raw, "keepalive", int, 60),
        )
    except names.InvalidName as exc:
        raise ConfigError(str(exc)) from exc


def load(path: Path) -> AgentConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return from_dict(raw, base_dir=path.parent)
