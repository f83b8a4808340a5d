"""`iotbridge`: run the local stack, talk to the API (local or AWS), provision devices.

    iotbridge up [--devices N] [--data-dir DIR] [--api-port N] … [--no-tls]
    iotbridge status [--data-dir DIR]
    iotbridge simulate --devices N [--prefix fleet-] [--keep] [--data-dir DIR]   (against a running `iotbridge up`)
    iotbridge send THING ACTION [--param K=V …] [--wait 5s] [--id ID] [--ttl 60s] [--if-offline fail|queue] [--json]
    iotbridge command THING ID [--wait 30s] [--json]
    iotbridge desired THING K=V … [--wait 10s] [--json]
    iotbridge devices [--json]
    iotbridge shadow THING [--name NAME] [--json]
    iotbridge job ACTION (--things A,B | --all) [--param K=V …] [--wait 30s] [--json]
    iotbridge job-status JOB_ID [--wait 30s] [--json]
    iotbridge provision THING [--local | --aws] [--out DIR] [--stack NAME | --policy NAME] [--rotate]

The API commands find the API through --api-url/--api-key, --stack NAME (a deployed stack),
IOTBRIDGE_API_URL/IOTBRIDGE_API_KEY, or the running local stack. `iotbridge COMMAND --help` for each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotbridge_contract.stopflag import StopFlag, stopped_by_signals
from iotbridge_local import apicommands
from iotbridge_local.config import StackConfig, free_port, private_dir

if TYPE_CHECKING:
    from iotbridge_local.stack import LocalStack

_LOCK_TRIES = 6  # x 50 ms
_PORTS = ("mqtt_port", "mqtts_port", "ws_port", "iot_http_port", "api_port", "dashboard_port", "lambda_port")


def _port(text: str) -> int:
    """A TCP port for a flag: 1-65535 (a socket raised OverflowError deep in the start for 70000)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 1 and 65535")
    return port


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (simulate --devices 0 raised IndexError)."""

    def count(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {n}")
        return n

    return count


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _config(args: argparse.Namespace) -> StackConfig:
    defaults = StackConfig()
    values: dict[str, object] = {"data_dir": Path(args.data_dir), "devices": args.devices, "tls": not args.no_tls,
                                 "shadow_rate": args.shadow_rate or None}  # fmt: skip
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

    private_dir(data_dir)
    with open(data_dir / ".lock", "a+") as lock:  # not "w": that would erase the running stack's pid
        # A few tries: `status` holds a shared lock for a moment while it checks a stack that died.
        for attempt in range(_LOCK_TRIES):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < _LOCK_TRIES:
                    time.sleep(0.05)
        else:
            from iotbridge_local.apiclient import read_stack_json

            state = read_stack_json(data_dir) or {}
            where = str(state.get("dashboard", ""))
            raise SystemExit(f"iotbridge: a local stack is already running from {data_dir} {where}".rstrip())
        # Whose lock it is: `status` tells a stack that holds it from one that died and left stack.json.
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process: alive
    return False


def _lock_released(data_dir: Path, pid: int) -> bool:
    """True when `up` (process `pid`) locked the data dir and the lock is free: the kernel frees it when that
    process dies, however it died, so this holds even after its pid was given to another process."""
    import fcntl

    try:
        with open(data_dir / ".lock") as lock:
            if lock.read().strip() != str(pid):
                return False  # not locked by this stack (a LocalStack started by a test or benchmark)
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True  # closing the file releases the shared lock at once
    except OSError:
        return False


def stack_not_running(data_dir: Path, state: dict[str, Any]) -> str | None:
    """Why the stack that wrote stack.json is not running, or None when it is.

    A stack stopped cleanly removes stack.json; one killed (SIGHUP, kill -9) leaves it behind.
    """
    pid = state.get("pid")
    if not isinstance(pid, int):
        return None  # written by something that records no process: cannot tell
    if _process_gone(pid) or _lock_released(data_dir, pid):
        return f"its process {pid} is gone; it was not stopped cleanly"
    return None


def _not_running_message(data_dir: Path, why: str) -> str:
    return f"the local stack in {data_dir} is not running ({why}): start it with `iotbridge up --data-dir {data_dir}`"


def cmd_up(args: argparse.Namespace) -> int:
    from iotbridge_local.stack import LocalStack

    with _only_stack_in(Path(args.data_dir)):
        config = _config(args)
        stack = LocalStack(config, prewarm=2)
        stopping = StopFlag()  # set by the signal handlers: no lock (see StopFlag)
        with stopped_by_signals(stopping.set):
            return _run_stack(stack, config, stopping)


def _run_stack(stack: LocalStack, config: StackConfig, stopping: StopFlag) -> int:
    from botocore.exceptions import BotoCoreError

    from iotbridge_local.apigw.environments import InvocationError

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
              ws://127.0.0.1:{config.ws_port} (MQTT over WebSockets)
  Lambda      {config.lambda_endpoint}  (boto3 lambda endpoint_url)
  devices     {", ".join(stack.things)}
  logs        {stack.logs}

  try:  curl -s -H 'x-api-key: {config.api_key}' -H 'content-type: application/json' \\
          -d '{{"action":"led","params":{{"state":"toggle"}}}}' {config.api_url}/devices/{first}/commands

  Ctrl-C stops everything.""",
                flush=True,
            )
        while not stopping.wait(3600):
            pass
    # A port taken between the check and the bind, a data dir not writable (OSError); Mosquitto or a
    # service that exits at start (BrokerError, RuntimeError); the API function failing to load.
    except (OSError, RuntimeError, InvocationError, BotoCoreError) as exc:
        print(f"iotbridge: the local stack could not start: {exc} (logs: {stack.logs})", file=sys.stderr, flush=True)
        return 1
    finally:
        print("\nstopping …", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from iotbridge_local.apiclient import read_stack_json

    data_dir = Path(args.data_dir)
    state = read_stack_json(data_dir)
    if state is None:
        print("no local stack is running from", args.data_dir)
        return 1
    why = stack_not_running(data_dir, state)
    if why:
        print(_not_running_message(data_dir, why))
        return 1
    print(json.dumps(state, indent=2))
    return 0


def cmd_provision(args: argparse.Namespace) -> int:
    """Exit 0 provisioned (or already), 1 refused (would make a second certificate), 2 usage, 5 AWS error, 6 unreachable."""
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

    from iotbridge_contract.names import InvalidName
    from iotbridge_local import provision

    out = Path(args.out) if args.out else Path(args.thing)
    if args.stack_name and args.local:
        print("iotbridge: --stack names a deployed stack: it goes with --aws, not --local", file=sys.stderr)
        return apicommands.ExitCode.USAGE
    try:
        if args.aws or args.stack_name:
            import boto3

            session = boto3.Session(region_name=args.region)
            stack = args.stack_name or provision.DEFAULT_STACK_NAME
            policy = args.policy or provision.policy_from_stack(session.client("cloudformation"), stack)
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
        epilog="exit codes: 0 provisioned or already provisioned (--local exports the local CA's certificate again),\n"
        "1 refused (--aws: the thing has a certificate and the bundle is not in --out: pass --rotate for a new one),\n"
        "2 usage/config, 5 AWS error, 6 endpoint unreachable",
    )  # fmt: skip
    p.add_argument("thing")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="the running local stack (default)")
    where.add_argument("--aws", action="store_true", help="AWS IoT Core, with your AWS credentials")
    p.add_argument("--out", help="bundle directory (default ./THING)")
    p.add_argument("--data-dir", default=".iotbridge", help="local: the running stack's data dir")
    # --stack, as the API commands name a deployed stack; --stack-name, as sam and the aws CLI do.
    p.add_argument("--stack", "--stack-name", dest="stack_name", metavar="NAME",
                   help=f"implies --aws: read DevicePolicyName from this stack's outputs (default {DEFAULT_STACK_NAME})")
    p.add_argument("--policy", help="aws: the device policy name (instead of the stack output)")
    p.add_argument("--region", help="aws: region (default: your AWS config)")
    p.add_argument("--port", type=int, default=8883, choices=(8883, 443), help="aws: MQTT port the device uses")
    p.add_argument("--rotate", action="store_true", help="issue a new certificate even if the thing has one")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_provision)


def cmd_simulate(args: argparse.Namespace) -> int:
    """N virtual devices in this process, each a real (mutual TLS) MQTT connection to the running stack.

    Exit 0 stopped (Ctrl-C), 2 no running stack or a bad --prefix, 6 the stack could not be reached.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    from iotbridge_contract.names import InvalidName, device_name
    from iotbridge_local.apiclient import read_stack_json
    from iotbridge_local.broker import Broker, BrokerError
    from iotbridge_pi.fleet import run_fleet

    data_dir = Path(args.data_dir)
    state = read_stack_json(data_dir)
    if state is None:
        print(f"no running local stack in {args.data_dir}: start one with `iotbridge up`", file=sys.stderr)
        return apicommands.ExitCode.USAGE
    why = stack_not_running(data_dir, state)
    if why:
        print(f"iotbridge: {_not_running_message(data_dir, why)}", file=sys.stderr)
        return apicommands.ExitCode.USAGE
    config = StackConfig(
        data_dir=Path(state["dataDir"]), mqtt_port=int(state["mqtt"]), mqtts_port=int(state["mqtts"]),
        iot_http_port=int(str(state["iot"]).rsplit(":", 1)[1]), tls=bool(state.get("tls", True)),
    )  # fmt: skip
    things = [f"{args.prefix}{n:05d}" for n in range(1, args.devices + 1)]
    try:
        device_name(things[-1])  # the longest: a prefix that makes it too long or invalid fails here, not mid-way
    except InvalidName as exc:
        print(f"iotbridge: --prefix {args.prefix!r}: {exc}", file=sys.stderr)
        return apicommands.ExitCode.USAGE
    registry = boto3.client(
        "iot", endpoint_url=config.iot_endpoint, region_name=config.region,
        aws_access_key_id="local", aws_secret_access_key="local",
    )  # fmt: skip
    stop = StopFlag()
    created: list[str] = []  # registered by this run: removed when it stops, unless --keep
    code = apicommands.ExitCode.SUCCEEDED
    with stopped_by_signals(stop.set):  # from here on a Ctrl-C while registering also removes what was registered
        try:
            _register_fleet(registry, things, created, stop)
            if not stop.is_set():
                broker = Broker(config)
                print(f"simulating {len(things)} devices ({things[0]} … {things[-1]}); Ctrl-C stops them", flush=True)
                run_fleet(endpoint_factory=broker.device_endpoint, things=things, state_dir=config.data_dir / "fleet",
                          stop_event=stop, telemetry_interval=args.telemetry)  # fmt: skip
        except (BotoCoreError, ClientError, BrokerError) as exc:  # the stack stopped, or never listened there
            print(f"iotbridge: cannot reach the local stack at {config.iot_endpoint}: {exc} "
                  f"(is it running? `iotbridge status --data-dir {args.data_dir}`)", file=sys.stderr)  # fmt: skip
            code = apicommands.ExitCode.UNREACHABLE
        finally:
            if created and not args.keep and not _unregister_fleet(registry, created, args.data_dir):
                code = code or apicommands.ExitCode.UNREACHABLE
    return code


def _register_fleet(registry: Any, things: list[str], created: list[str], stop: StopFlag) -> None:
    """Register the things, so they show in GET /devices and in bulk commands to all; `created` gets
    those that were not registered before (a provisioned device or a --keep fleet stays when this one stops)."""
    before: set[str] = set()
    for page in registry.get_paginator("list_things").paginate(PaginationConfig={"PageSize": 250}):
        before.update(t["thingName"] for t in page.get("things") or [])
    for thing in things:
        if stop.is_set():
            return
        if thing in before:
            continue
        with contextlib.suppress(registry.exceptions.ResourceAlreadyExistsException):
            registry.create_thing(thingName=thing)
        created.append(thing)


def _unregister_fleet(registry: Any, things: list[str], data_dir: str) -> bool:
    """Delete the things this run registered: left behind, a 1000-device fleet filled the dashboard's list
    (the stack's own devices fell off it) and made every later `job --all` target 1000 offline devices."""
    from botocore.exceptions import BotoCoreError, ClientError

    print(f"removing {len(things)} simulated thing(s) from the registry (--keep keeps them) …", flush=True)
    try:
        for thing in things:
            registry.delete_thing(thingName=thing)
    except (BotoCoreError, ClientError) as exc:
        print(f"iotbridge: could not remove the simulated things: {exc}; they stay until the local stack's data is "
              f"reset (see the README: stop the stack, delete {data_dir})", file=sys.stderr)  # fmt: skip
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotbridge", description=__doc__, formatter_class=argparse.RawTextHelpFormatter,
                                     epilog=apicommands.EXIT_CODES_HELP)  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the local stack with simulated devices and the dashboard")
    up.add_argument("--data-dir", default=".iotbridge", help="where shadows, broker data, certs and logs live")
    up.add_argument("--devices", type=_at_least(0), default=2, help="simulated devices to start (default 2)")
    up.add_argument("--no-tls", action="store_true", help="devices connect without mutual TLS (no device auth)")
    up.add_argument("--shadow-rate", type=_at_least(0), default=20,
                    help="shadow requests per second per thing before 429, as AWS IoT allows (default 20; 0: no limit)")
    defaults = StackConfig()
    for f in fields(StackConfig):
        if f.name in _PORTS:
            flag = "--" + f.name.replace("_", "-")
            up.add_argument(flag, type=_port, default=None, help=f"default {getattr(defaults, f.name)}")
    up.set_defaults(func=cmd_up)
    status = sub.add_parser("status", help="show the running local stack's endpoints")
    status.add_argument("--data-dir", default=".iotbridge")
    status.set_defaults(func=cmd_status)
    sim = sub.add_parser("simulate", help="run N simulated devices in one process against the running local stack")
    sim.add_argument("--devices", type=_at_least(1), default=100, help="how many (default 100; thousands fit on 2 cores)")
    sim.add_argument("--prefix", default="fleet-", help="thing names are PREFIX00001 … (default fleet-)")
    sim.add_argument("--telemetry", type=_at_least(1), default=60, help="seconds between telemetry reports (default 60)")
    sim.add_argument("--keep", action="store_true",
                     help="leave the things registered when it stops (default: remove those it registered)")  # fmt: skip
    sim.add_argument("--data-dir", default=".iotbridge")
    sim.set_defaults(func=cmd_simulate)
    apicommands.add_subcommands(sub)
    _add_provision(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # here, where a reader that left is caught, not at the interpreter's exit
        return code
    except KeyboardInterrupt:  # the API commands say what may still run (apicommands.run); the rest stop here
        print("\niotbridge: interrupted", file=sys.stderr)
        return apicommands.ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The output's reader left (`| head`): nothing more to say, and the exit's own flush of
        # stdout must not fail again. 141 = 128 + SIGPIPE, as a shell reports a program it killed.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
