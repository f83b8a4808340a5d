"""`iotbridge`: run the local stack, and talk to a running one.

    iotbridge up [--devices N] [--data-dir DIR] [--api-port N] … [--no-tls]
    iotbridge status [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from dataclasses import fields
from pathlib import Path

from iotbridge_local.config import StackConfig, free_port

_PORTS = ("mqtt_port", "mqtts_port", "ws_port", "iot_http_port", "api_port", "dashboard_port")


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _config(args: argparse.Namespace) -> StackConfig:
    defaults = StackConfig()
    values: dict[str, object] = {"data_dir": Path(args.data_dir), "devices": args.devices, "tls": not args.no_tls}
    for name in _PORTS:
        asked = getattr(args, name)
        port = asked if asked is not None else getattr(defaults, name)
        if asked is None and _port_in_use(port):
            port = free_port()  # a default port is taken (e.g. a system mosquitto on 1883): pick another
        values[name] = port
    return StackConfig(**values)  # type: ignore[arg-type]


def cmd_up(args: argparse.Namespace) -> int:
    from iotbridge_local.stack import LocalStack

    config = _config(args)
    stack = LocalStack(config, prewarm=2)
    stopping = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    print("starting the local stack …", flush=True)
    stack.start()
    first = stack.things[0] if stack.things else "THING"
    try:
        try:
            stack.wait_devices_ready(timeout=30)
        except TimeoutError as exc:
            print(f"warning: {exc}", flush=True)
        print(
            f"""
  iotbridge local stack is up
  dashboard   {config.dashboard_url}
  API         {config.api_url}      (header  x-api-key: {config.api_key})
  IoT data    {config.iot_endpoint}  (boto3 iot-data / iot endpoint_url)
  MQTT        127.0.0.1:{config.mqtt_port} (service)  127.0.0.1:{config.mqtts_port} (devices, mutual TLS: {config.tls})
  devices     {", ".join(stack.things)}
  logs        {stack.logs}

  try:  curl -s -H 'x-api-key: {config.api_key}' -H 'content-type: application/json' \\
          -d '{{"action":"led","params":{{"state":"toggle"}}}}' {config.api_url}/devices/{first}/commands

  Ctrl-C stops everything.""",
            flush=True,
        )
        stopping.wait()
    finally:
        print("\nstopping …", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.data_dir) / "stack.json"
    if not path.exists():
        print("no local stack is running from", args.data_dir)
        return 1
    print(json.dumps(json.loads(path.read_text()), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotbridge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local stack with simulated devices and the dashboard")
    up.add_argument("--data-dir", default=".iotbridge", help="where shadows, broker data, certs and logs live")
    up.add_argument("--devices", type=int, default=2, help="simulated devices to start (default 2)")
    up.add_argument("--no-tls", action="store_true", help="devices connect without mutual TLS (no device auth)")
    defaults = StackConfig()
    for f in fields(StackConfig):
        if f.name in _PORTS:
            flag = "--" + f.name.replace("_", "-")
            up.add_argument(flag, type=int, default=None, help=f"default {getattr(defaults, f.name)}")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show the running local stack's endpoints")
    status.add_argument("--data-dir", default=".iotbridge")
    status.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
