"""`iotbridge`: run the local stack, talk to the API (local or AWS), provision devices.

    iotbridge up [--devices N] [--data-dir DIR] [--api-port N] … [--no-tls]
    iotbridge status [--data-dir DIR]
    iotbridge simulate --devices N [--prefix fleet-] [--data-dir DIR]   (against a running `iotbridge up`)
    iotbridge send THING ACTION [--param K=V …] [--wait 5s] [--id ID] [--ttl 60s] [--if-offline fail|queue] [--json]
    iotbridge command THING ID [--wait 30s] [--json]
    iotbridge desired THING K=V … [--wait 10s] [--json]
    iotbridge devices [--json]
    iotbridge shadow THING [--name NAME] [--json]
    iotbridge job ACTION (--things A,B | --all) [--param K=V …] [--wait 30s] [--json]
    iotbridge job-status JOB_ID [--wait 30s] [--json]
    iotbridge provision THING [--local | --aws] [--out DIR] [--stack-name NAME | --policy NAME] [--rotate]

The API commands find the API through --api-url/--api-key, --stack NAME (a deployed stack),
IOTBRIDGE_API_URL/IOTBRIDGE_API_KEY, or the running local stack. `iotbridge COMMAND --help` for each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from iotbridge_contract.stopflag import StopFlag, stopped_by_signals
from iotbridge_local import apicommands
from iotbridge_local.config import StackConfig, free_port

if TYPE_CHECKING:
    from iotbridge_local.stack import LocalStack

_PORTS = ("mqtt_port", "mqtts_port", "ws_port", "iot_http_port", "api_port", "dashboard_port", "lambda_port")


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
            flag = "--" + name.replace("_", "-")
            print(f"note: port {getattr(defaults, name)} is in use; {flag} {port} instead", flush=True)
        elif asked is not None and _port_in_use(port):
            raise SystemExit(f"iotbridge: port {port} ({'--' + name.replace('_', '-')}) is in use; choose another")
        values[name] = port
    return StackConfig(**values)  # type: ignore[arg-type]


@contextlib.contextmanager
def _only_stack_in(data_dir: Path) -> Iterator[None]:
    """One stack per data dir: two would share a broker database, shadow store and device state."""
    import fcntl

    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running = data_dir / "stack.json"
            where = json.loads(running.read_text()).get("dashboard", "") if running.exists() else ""
            raise SystemExit(f"iotbridge: a local stack is already running from {data_dir} {where}".rstrip()) from None
        yield


def cmd_up(args: argparse.Namespace) -> int:
    from iotbridge_local.stack import LocalStack

    with _only_stack_in(Path(args.data_dir)):
        config = _config(args)
        stack = LocalStack(config, prewarm=2)
        stopping = StopFlag()  # set by the signal handlers: no lock (see StopFlag)
        with stopped_by_signals(stopping.set):
            return _run_stack(stack, config, stopping)


def _run_stack(stack: LocalStack, config: StackConfig, stopping: StopFlag) -> int:
    print("starting the local stack …", flush=True)
    try:
        stack.start()
        first = stack.things[0] if stack.things else "THING"
        if not stopping.is_set():
            try:
                stack.wait_devices_ready(timeout=30, give_up=stopping.is_set)
            except TimeoutError as exc:
                print(f"warning: {exc}", flush=True)
        if not stopping.is_set():  # Ctrl-C while starting: stop, without announcing a stack that is going
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
        while not stopping.wait(3600):
            pass
    except OSError as exc:  # a port taken between the check and the bind, a data dir not writable
        print(f"iotbridge: the local stack could not start: {exc}", file=sys.stderr, flush=True)
        return 1
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


def cmd_provision(args: argparse.Namespace) -> int:
    """Exit 0 provisioned (or already), 1 refused (would make a second certificate), 2 usage, 5 AWS error, 6 unreachable."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

    from iotbridge_contract.names import InvalidName
    from iotbridge_local import provision

    out = Path(args.out) if args.out else Path(args.thing)
    try:
        if args.aws:
            import boto3

            session = boto3.Session(region_name=args.region)
            policy = args.policy or provision.policy_from_stack(session.client("cloudformation"), args.stack_name)
            result = provision.provision_aws(args.thing, out, iot=session.client("iot"), policy=policy,
                                             port=args.port, rotate=args.rotate)  # fmt: skip
        else:
            result = provision.provision_local(args.thing, out, data_dir=Path(args.data_dir), rotate=args.rotate)
    except provision.ProvisionRefused as exc:
        print(f"iotbridge: refused: {exc}", file=sys.stderr)
        return apicommands.ExitCode.FAILED
    except (provision.ProvisionError, InvalidName, NoCredentialsError, NoRegionError) as exc:
        print(f"iotbridge: {exc}", file=sys.stderr)
        return apicommands.ExitCode.USAGE
    except EndpointConnectionError as exc:
        print(f"iotbridge: unreachable: {exc}", file=sys.stderr)
        return apicommands.ExitCode.UNREACHABLE
    except (ClientError, BotoCoreError) as exc:
        print(f"iotbridge: AWS said: {exc}", file=sys.stderr)
        return apicommands.ExitCode.API_ERROR
    if args.json:
        print(json.dumps(result.as_json(), indent=2))
    else:
        print("\n".join(provision.describe(result)))
    return apicommands.ExitCode.SUCCEEDED


def _add_provision(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from iotbridge_local.provision import DEFAULT_STACK_NAME

    p = sub.add_parser(
        "provision", help="create a device's thing and certificate and write its bundle (Pi + ESP32 configs)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 provisioned or already provisioned, 1 refused (the thing has a certificate and the bundle\n"
        "is not in --out: pass --rotate for a new one), 2 usage/config, 5 AWS error, 6 endpoint unreachable",
    )  # fmt: skip
    p.add_argument("thing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="the running local stack (default)")
    where.add_argument("--aws", action="store_true", help="AWS IoT Core, with your AWS credentials")
    p.add_argument("--out", help="bundle directory (default ./THING)")
    p.add_argument("--data-dir", default=".iotbridge", help="local: the running stack's data dir")
    p.add_argument("--stack-name", default=DEFAULT_STACK_NAME, help="aws: read DevicePolicyName from this stack's outputs")
    p.add_argument("--policy", help="aws: the device policy name (instead of the stack output)")
    p.add_argument("--region", help="aws: region (default: your AWS config)")
    p.add_argument("--port", type=int, default=8883, choices=(8883, 443), help="aws: MQTT port the device uses")
    p.add_argument("--rotate", action="store_true", help="issue a new certificate even if the thing has one")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_provision)


def cmd_simulate(args: argparse.Namespace) -> int:
    """N virtual devices in this process, each a real (mutual TLS) MQTT connection to the running stack."""
    import boto3

    from iotbridge_local.broker import Broker
    from iotbridge_pi.fleet import run_fleet

    path = Path(args.data_dir) / "stack.json"
    if not path.exists():
        print(f"no running local stack in {args.data_dir}: start one with `iotbridge up`", file=sys.stderr)
        return 2
    state = json.loads(path.read_text())
    config = StackConfig(
        data_dir=Path(state["dataDir"]), mqtt_port=int(state["mqtt"]), mqtts_port=int(state["mqtts"]),
        iot_http_port=int(str(state["iot"]).rsplit(":", 1)[1]), tls=bool(state.get("tls", True)),
    )  # fmt: skip
    things = [f"{args.prefix}{n:05d}" for n in range(1, args.devices + 1)]
    registry = boto3.client(
        "iot", endpoint_url=config.iot_endpoint, region_name=config.region,
        aws_access_key_id="local", aws_secret_access_key="local",
    )  # fmt: skip
    for thing in things:  # registered, so they show in GET /devices and in bulk commands to all
        with contextlib.suppress(registry.exceptions.ResourceAlreadyExistsException):
            registry.create_thing(thingName=thing)
    broker = Broker(config)
    stop = StopFlag()
    print(f"simulating {len(things)} devices ({things[0]} … {things[-1]}); Ctrl-C stops them", flush=True)
    with stopped_by_signals(stop.set):
        run_fleet(endpoint_factory=broker.device_endpoint, things=things, state_dir=config.data_dir / "fleet",
                  stop_event=stop, telemetry_interval=args.telemetry)  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotbridge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                     epilog=apicommands.EXIT_CODES_HELP)  # fmt: skip
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
    sim = sub.add_parser("simulate", help="run N simulated devices in one process against the running local stack")
    sim.add_argument("--devices", type=int, default=100, help="how many (default 100; thousands fit on 2 cores)")
    sim.add_argument("--prefix", default="fleet-", help="thing names are PREFIX00001 … (default fleet-)")
    sim.add_argument("--telemetry", type=int, default=60, help="seconds between telemetry reports (default 60)")
    sim.add_argument("--data-dir", default=".iotbridge")
    sim.set_defaults(func=cmd_simulate)
    apicommands.add_subcommands(sub)
    _add_provision(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
