"""The CLI subcommands that talk to the HTTP API: send, command, devices, shadow, job.

They print short human text, or with --json the API's JSON body, and end with an
exit code a script can branch on (`ExitCode`, also printed by `iotbridge --help`).
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotbridge_contract.commands import CommandState, new_id
from iotbridge_local.apiclient import (
    DEFAULT_DATA_DIR,
    ENV_KEY,
    ENV_URL,
    ApiClient,
    ApiResponse,
    ApiUnreachable,
    NoApiConfigured,
    resolve_target,
    sleep_until,
    stack_target,
)

API_MAX_WAIT_MS = 29_000  # API Gateway's integration timeout; longer waits poll GET …/commands/{id}
POLL_S = 0.2  # the first pause between polls; it grows to MAX_POLL_S (a usage plan counts every GET)
MAX_POLL_S = 2.0
TERMINAL = {s.value for s in CommandState if s.terminal}


class ExitCode(enum.IntEnum):
    SUCCEEDED = 0
    FAILED = 1  # the outcome is FAILED, REJECTED, TIMED_OUT, EXPIRED or UNKNOWN (or a job target was not queued)
    USAGE = 2
    PENDING = 3  # the wait ran out with the command still QUEUED/SENT (HTTP 202)
    OFFLINE = 4  # 409 DEVICE_OFFLINE (--if-offline fail)
    API_ERROR = 5  # any other 4xx: unknown action, bad params, no such device, wrong key (403) …
    UNREACHABLE = 6  # no connection, or a 5xx
    INTERRUPTED = 130  # Ctrl-C (128 + SIGINT, as a shell reports it); what may still run is printed


EXIT_CODES_HELP = """exit codes (send, command, desired, job, job-status, devices, shadow):
  0  SUCCEEDED (or the request was answered)
  1  the outcome is FAILED, REJECTED, TIMED_OUT, EXPIRED or UNKNOWN; a job target was not queued
  2  usage error (bad flags, bad --param, no API configured)
  3  still pending when the wait ran out (HTTP 202; desired: not yet reported); the command id is printed
  4  the device is offline (409 DEVICE_OFFLINE, with --if-offline fail)
  5  any other API error (4xx: unknown action, bad params, no such device, wrong API key)
  6  the API is unreachable, or answered 5xx
  130  interrupted (Ctrl-C); the command or job id that may still run is printed"""

API_HELP = f"""where the API is (first match wins): --api-url/--api-key; --stack NAME (its ApiUrl output and
API key, with your AWS credentials); {ENV_URL}/{ENV_KEY}; the running local stack's
<--data-dir>/stack.json (default {DEFAULT_DATA_DIR})."""


# -- argument parsing -------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def duration_ms(text: str) -> int:
    """'5s', '500ms', '2m', '1h', or plain seconds ('5') → milliseconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 5s, 500ms, 2m)")
    return int(float(match[1]) * _UNIT_MS[match[2] or "s"])


def parse_param(text: str) -> tuple[str, Any]:
    """k=v; v as JSON when it parses (true, 5, "x", {…}), otherwise the text itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        return key, raw
    if isinstance(value, float) and not math.isfinite(value):
        return key, raw  # NaN/Infinity are not JSON the API accepts
    return key, value


def _params(pairs: list[tuple[str, Any]] | None) -> dict[str, Any]:
    return dict(pairs or [])


def _things(text: str) -> list[str]:
    things = [t.strip() for t in text.split(",") if t.strip()]
    if not things:
        raise argparse.ArgumentTypeError("--things wants a comma-separated list of thing names")
    return things


def add_api_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("API")
    group.add_argument("--api-url", help=f"base URL of the API (or {ENV_URL})")
    group.add_argument("--api-key", help=f"x-api-key (or {ENV_KEY})")
    group.add_argument("--stack", metavar="NAME", help="a deployed stack: its ApiUrl and API key (AWS credentials)")
    group.add_argument("--region", help="the deployed stack's region (default: your AWS config)")
    group.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="local stack whose stack.json to read")
    parser.add_argument("--json", action="store_true", help="print the API's JSON body instead of text")


def add_subcommands(sub: Any) -> None:
    """Register send, command, devices, shadow and job on the CLI's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    epilog = API_HELP + "\n\n" + EXIT_CODES_HELP

    send = sub.add_parser(
        "send",
        help="send a command to one device and wait for its answer",
        description="Send ACTION to THING and wait for the outcome.",
        epilog=epilog,
        formatter_class=fmt,
    )
    send.add_argument("thing")
    send.add_argument("action")
    send.add_argument(
        "--param",
        "-p",
        dest="params",
        action="append",
        type=parse_param,
        metavar="K=V",
        help='a parameter; V is JSON when it parses (true, 5, "x"), else a string; repeatable',
    )
    send.add_argument(
        "--wait",
        type=duration_ms,
        default=10_000,
        metavar="DURATION",
        help="how long to wait for the outcome (default 10s; 0s: do not wait)",
    )
    send.add_argument("--id", help="your command id (1-64 of a-z A-Z 0-9 _ -): a retry never runs it twice")
    send.add_argument(
        "--ttl", type=duration_ms, metavar="DURATION", help="after this the device will not start it (EXPIRED); default 60s"
    )
    send.add_argument(
        "--if-offline",
        choices=("fail", "queue"),
        default="queue",
        help="device offline: fail now (exit 4) or queue until --ttl (default queue)",
    )
    add_api_options(send)
    send.set_defaults(func=run, api_func=_send)

    command = sub.add_parser(
        "command", help="show one command's state; optionally wait for its outcome", epilog=epilog, formatter_class=fmt
    )
    command.add_argument("thing")
    command.add_argument("id")
    command.add_argument(
        "--wait", type=duration_ms, default=0, metavar="DURATION", help="wait this long for a terminal state (default 0s)"
    )
    add_api_options(command)
    command.set_defaults(func=run, api_func=_command)

    desired = sub.add_parser(
        "desired", help="change a device's desired state; optionally wait until it reports it", epilog=epilog,
        formatter_class=fmt,
    )  # fmt: skip
    desired.add_argument("thing")
    desired.add_argument("state", nargs="+", type=parse_param, metavar="K=V",
                         help="keys to set (V as for --param); K=null removes a key")  # fmt: skip
    desired.add_argument("--wait", type=duration_ms, default=10_000, metavar="DURATION",
                         help="wait until reported converges (default 10s; exit 3 if it has not)")  # fmt: skip
    add_api_options(desired)
    desired.set_defaults(func=run, api_func=_desired)

    devices = sub.add_parser("devices", help="list devices: presence and reported state", epilog=epilog, formatter_class=fmt)
    add_api_options(devices)
    devices.set_defaults(func=run, api_func=_devices)

    shadow = sub.add_parser("shadow", help="show a device's shadow (classic, or --name)", epilog=epilog, formatter_class=fmt)
    shadow.add_argument("thing")
    shadow.add_argument("--name", help="a named shadow (commands, presence, …)")
    add_api_options(shadow)
    shadow.set_defaults(func=run, api_func=_shadow)

    job = sub.add_parser("job", help="send one command to many devices (a bulk job)", epilog=epilog, formatter_class=fmt)
    job.add_argument("action")
    targets = job.add_mutually_exclusive_group(required=True)
    targets.add_argument("--things", type=_things, metavar="A,B,…", help="target devices")
    targets.add_argument("--all", action="store_true", help="every registered device")
    job.add_argument(
        "--param",
        "-p",
        dest="params",
        action="append",
        type=parse_param,
        metavar="K=V",
        help="a parameter (as for send); repeatable",
    )
    job.add_argument("--ttl", type=duration_ms, metavar="DURATION", help="time-to-live on each device (default 60s)")
    job.add_argument(
        "--wait",
        type=duration_ms,
        default=0,
        metavar="DURATION",
        help="wait this long for every target to finish (default 0s: report the queued job)",
    )
    add_api_options(job)
    job.set_defaults(func=run, api_func=_job)

    status = sub.add_parser(
        "job-status", help="per-device progress of a bulk job; optionally wait for it", epilog=epilog, formatter_class=fmt
    )
    status.add_argument("job_id")
    status.add_argument(
        "--wait", type=duration_ms, default=0, metavar="DURATION", help="wait this long for every target to finish (default 0s)"
    )
    add_api_options(status)
    status.set_defaults(func=run, api_func=_job_status)


# -- output ------------------------------------------------------------------------------------


def _emit_json(body: Any) -> None:
    print(json.dumps(body, indent=2, sort_keys=True))


def _error_exit(response: ApiResponse, args: argparse.Namespace) -> int:
    if args.json:
        _emit_json(response.body)
    code = f"HTTP {response.status} {response.code}" if response.code else f"HTTP {response.status}"
    print(f"iotbridge: {code}: {response.message}", file=sys.stderr)
    details = response.body.get("details") if isinstance(response.body, dict) else None
    if response.code == "UNKNOWN_ACTION" and isinstance(details, dict):
        known = details.get("known")
        if known:
            print(f"  known actions: {', '.join(map(str, known))}", file=sys.stderr)
    elif isinstance(details, list):  # VALIDATION_ERROR: "does not match the schema" alone says not what to fix
        for problem in details[:10]:
            print(f"  {_problem(problem)}", file=sys.stderr)
        if len(details) > 10:
            print(f"  … and {len(details) - 10} more", file=sys.stderr)
    if response.status == 409 and response.code == "DEVICE_OFFLINE":
        return ExitCode.OFFLINE
    if 400 <= response.status < 500:
        return ExitCode.API_ERROR
    still = getattr(args, "still_running", None)
    if still:  # a 5xx (a gateway timeout) may come after the command was queued
        print(f"  {still}", file=sys.stderr)
    return ExitCode.UNREACHABLE


def _problem(problem: Any) -> str:
    """One validation problem as `where: what`, e.g. `ttlMs: Input should be greater than or equal to 1000`."""
    if not isinstance(problem, dict):
        return str(problem)
    loc = [str(part) for part in problem.get("loc") or []]
    if len(loc) > 1 and loc[0] == "body":
        loc = loc[1:]  # the request's JSON body: its field names are what a person typed
    what = problem.get("msg") or problem.get("message") or _compact(problem)
    return f"{'.'.join(loc)}: {what}" if loc else str(what)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _describe_command(view: dict[str, Any]) -> str:
    state = view.get("state")
    line = f"{view.get('thing')} {view.get('action')}: {state}"
    if view.get("latencyMs") is not None:
        line += f" in {view['latencyMs']:.0f} ms"
    if view.get("result") is not None:
        line += f"  {_compact(view['result'])}"
    if view.get("error"):
        line += f"  ({view['error']})"
    return line


def _command_exit(view: dict[str, Any], args: argparse.Namespace, waited_ms: int) -> int:
    if args.json:
        _emit_json(view)
    state = view.get("state")
    if state in TERMINAL:
        if not args.json:
            print(_describe_command(view))
        return ExitCode.SUCCEEDED if state == CommandState.SUCCEEDED else ExitCode.FAILED
    if not args.json:
        print(f"{_describe_command(view)}, still pending after {waited_ms / 1000:g}s  id {view.get('id')}")
        print(f"  follow it: iotbridge command {view.get('thing')} {view.get('id')} --wait 30s")
    return ExitCode.PENDING


def _when(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- subcommands -------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> ApiClient:
    if args.stack and not args.api_url:
        # The stack's own key, unless one is passed: an exported local key must not replace it.
        return ApiClient(stack_target(args.stack, args.region, args.api_key or None))
    return ApiClient(resolve_target(args.api_url, args.api_key, Path(args.data_dir)))


def run(args: argparse.Namespace) -> int:
    """Dispatch with the failures every API subcommand shares turned into exit codes."""
    try:
        return int(args.api_func(args))
    except NoApiConfigured as exc:
        print(f"iotbridge: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except ApiUnreachable as exc:
        # The request may have arrived before the connection failed: say what may run, so a re-run
        # of the same command line (a new id) is not the only way to find out.
        still = getattr(args, "still_running", None)
        print(f"iotbridge: {exc}{'; ' + still if still else ''}", file=sys.stderr)
        return ExitCode.UNREACHABLE
    except KeyboardInterrupt:
        # Ctrl-C ends only the wait: the API may have queued the command, so say which one and how to follow it.
        still = getattr(args, "still_running", None)
        print(f"\niotbridge: interrupted{'; ' + still if still else ''}", file=sys.stderr)
        return ExitCode.INTERRUPTED


def _command_may_run(args: argparse.Namespace, thing: str, cid: str) -> None:
    args.still_running = f"command {cid} on {thing} may still run: follow it with `iotbridge command {thing} {cid} --wait 30s`"


def _job_may_run(args: argparse.Namespace, job_id: str) -> None:
    args.still_running = f"job {job_id} may still run: follow it with `iotbridge job-status {job_id} --wait 30s`"


def _transient(answer: ApiResponse | None) -> bool:
    """Throttled (429), failed (5xx) or unreachable: worth asking again; the command is queued regardless."""
    return answer is None or answer.status == 429 or answer.status >= 500


def _get_or_none(fetch: Any) -> ApiResponse | None:
    try:
        answer: ApiResponse = fetch()
    except ApiUnreachable:
        return None
    return answer


def _poll_command(client: ApiClient, thing: str, view: dict[str, Any], deadline: float) -> ApiResponse | None:
    """GET the command until it is terminal or the deadline passes; None when nothing newer was learned.

    A throttled or failed poll is asked again (less often): one bad answer must not end the
    wait of a command that is queued, and the id is printed when the wait runs out.
    """
    last, pause, cid = None, POLL_S, str(view["id"])
    while view.get("state") not in TERMINAL and sleep_until(deadline, pause):
        pause = min(pause * 1.5, MAX_POLL_S)
        answer = _get_or_none(lambda: client.get_command(thing, cid))
        if _transient(answer):
            continue
        assert answer is not None
        if answer.status != 200 or not isinstance(answer.body, dict):
            return answer
        last, view = answer, answer.body
    return last


def _send(args: argparse.Namespace) -> int:
    client = _client(args)
    started = time.monotonic()
    deadline = started + args.wait / 1000
    # Our own id, not the API's: known before the POST, so a Ctrl-C during its wait can still name the command.
    cid = args.id if args.id is not None else new_id()
    request: dict[str, Any] = {
        "action": args.action, "params": _params(args.params), "id": cid,
        "timeoutMs": min(args.wait, API_MAX_WAIT_MS), "ifOffline": args.if_offline,
    }  # fmt: skip
    if args.ttl is not None:
        request["ttlMs"] = args.ttl
    _command_may_run(args, args.thing, cid)
    response = client.send_command(args.thing, request)
    if response.status not in (200, 202) or not isinstance(response.body, dict):
        return _error_exit(response, args)
    view = response.body
    if response.status == 202:
        polled = _poll_command(client, args.thing, view, deadline)
        if polled is not None:
            if polled.status != 200:
                return _error_exit(polled, args)
            view = polled.body
    return _command_exit(view, args, args.wait)


def _command(args: argparse.Namespace) -> int:
    client = _client(args)
    _command_may_run(args, args.thing, args.id)
    deadline = time.monotonic() + args.wait / 1000
    response = client.get_command(args.thing, args.id)
    if response.status != 200 or not isinstance(response.body, dict):
        return _error_exit(response, args)
    view = response.body
    polled = _poll_command(client, args.thing, view, deadline)
    if polled is not None:
        if polled.status != 200:
            return _error_exit(polled, args)
        view = polled.body
    return _command_exit(view, args, args.wait)


def _desired(args: argparse.Namespace) -> int:
    """Exit 0 when reported converged within the wait, 3 when the device has not applied it yet (offline: it will)."""
    state = _params(args.state)
    args.still_running = f"{args.thing} may still apply the desired state: see `iotbridge shadow {args.thing}`"
    response = _client(args).patch_desired(args.thing, state, wait_ms=min(args.wait, API_MAX_WAIT_MS))
    if response.status != 200 or not isinstance(response.body, dict):
        return _error_exit(response, args)
    body = response.body
    if args.json:
        _emit_json(body)
    if body.get("converged"):
        if not args.json:
            print(f"{body.get('thing')}: reported {_state_summary({k: (body.get('reported') or {}).get(k) for k in state})}")
        return ExitCode.SUCCEEDED
    if not args.json:
        print(
            f"{body.get('thing')}: desired set, not yet reported after {args.wait / 1000:g}s  delta {_compact(body.get('delta'))}"
        )
    return ExitCode.PENDING


def _state_summary(reported: dict[str, Any]) -> str:
    """The device's own scalar state (led, relay, interval …): what a person scans for."""
    skip = {"telemetry", "agent"}
    parts = [f"{k}={_compact(v)}" for k, v in sorted(reported.items()) if k not in skip and not isinstance(v, dict | list)]
    return " ".join(parts) or "-"


def _devices(args: argparse.Namespace) -> int:
    response = _client(args).list_devices()
    if response.status != 200 or not isinstance(response.body, dict):
        return _error_exit(response, args)
    if args.json:
        _emit_json(response.body)
        return ExitCode.SUCCEEDED
    devices = response.body.get("devices") or []
    if not devices:
        print("no devices")
        return ExitCode.SUCCEEDED
    width = max(len("THING"), *(len(str(d.get("thing"))) for d in devices))
    print(f"{'THING':<{width}}  {'ONLINE':<6}  {'SINCE':<20}  STATE")
    for d in devices:
        online = "yes" if d.get("connected") else "no"
        print(f"{d.get('thing')!s:<{width}}  {online:<6}  {_when(d.get('lastSeen')):<20}  "
              f"{_state_summary(d.get('reported') or {})}")  # fmt: skip
    return ExitCode.SUCCEEDED


def _shadow(args: argparse.Namespace) -> int:
    response = _client(args).get_device(args.thing, args.name)
    if response.status != 200 or not isinstance(response.body, dict):
        return _error_exit(response, args)
    if args.json:
        _emit_json(response.body)
        return ExitCode.SUCCEEDED
    body = response.body
    doc = body.get("shadow") or {}
    label = f"{body.get('thing')} shadow {args.name!r}" if args.name else f"{body.get('thing')} classic shadow"
    online = "online" if body.get("connected") else "offline"
    print(f"{label}, version {doc.get('version', '-')}, device {online}")
    print(json.dumps(doc.get("state") or {}, indent=2, sort_keys=True))
    return ExitCode.SUCCEEDED


def _job_line(progress: dict[str, Any]) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted((progress.get("counts") or {}).items()))
    done = f"{progress.get('done')}/{progress.get('targets')}"
    return f"job {progress.get('jobId')} {progress.get('action')}: {done} done  ({counts})"


def _job(args: argparse.Namespace) -> int:
    client = _client(args)
    deadline = time.monotonic() + args.wait / 1000
    # No id of ours: a job with a caller-chosen id reads every device's shadow before writing it
    # (docs/protocol.md), twice the calls for nothing when the id is fresh. It is known from the 202.
    request: dict[str, Any] = {"action": args.action, "params": _params(args.params)}
    if args.all:
        request["all"] = True
    else:
        request["things"] = args.things
    if args.ttl is not None:
        request["ttlMs"] = args.ttl
    args.still_running = "a job may have started: see `iotbridge devices` or the dashboard"
    response = client.start_job(request)
    if response.status not in (200, 202) or not isinstance(response.body, dict):
        return _error_exit(response, args)
    started = response.body
    _job_may_run(args, str(started.get("jobId")))
    not_queued = started.get("notQueued") or []
    if args.wait <= 0:
        if args.json:
            _emit_json(started)
        else:
            print(f"job {started.get('jobId')} {started.get('action')}: queued on {started.get('queued')}"
                  f" of {started.get('targets')} devices")  # fmt: skip
            for item in not_queued:
                print(f"  not queued: {_compact(item)}")
            print(f"  follow it: iotbridge job-status {started.get('jobId')} --wait 30s")
        return ExitCode.FAILED if not_queued else ExitCode.SUCCEEDED
    return _follow_job(client, str(started["jobId"]), deadline, not_queued, args)


def _job_status(args: argparse.Namespace) -> int:
    _job_may_run(args, args.job_id)
    return _follow_job(_client(args), args.job_id, time.monotonic() + args.wait / 1000, [], args)


def _follow_job(client: ApiClient, job_id: str, deadline: float, not_queued: list[Any], args: argparse.Namespace) -> int:
    """Poll the job until every target is done or the deadline passes; exit 0 only if all SUCCEEDED."""
    progress = client.job_progress(job_id)
    pause = POLL_S
    while progress.status == 200 and isinstance(progress.body, dict) and not progress.body.get("complete"):
        if not sleep_until(deadline, pause):
            break
        pause = min(pause * 1.5, MAX_POLL_S)
        answer = _get_or_none(lambda: client.job_progress(job_id))
        if not _transient(answer):  # a throttled or failed read keeps the last progress and asks again
            assert answer is not None
            progress = answer
    if progress.status != 200 or not isinstance(progress.body, dict):
        return _error_exit(progress, args)
    body = progress.body | ({"notQueued": not_queued} if not_queued else {})
    if args.json:
        _emit_json(body)
    else:
        print(_job_line(body))
        for device in body.get("devices") or []:
            if device.get("state") != CommandState.SUCCEEDED:
                error = f" ({device['error']})" if device.get("error") else ""
                print(f"  {device.get('thing')}: {device.get('state')}{error}")
        for item in not_queued:
            print(f"  not queued: {_compact(item)}")
    if not body.get("complete"):
        return ExitCode.PENDING
    counts = body.get("counts") or {}
    all_ok = counts.get(CommandState.SUCCEEDED.value, 0) == body.get("targets") and not not_queued
    return ExitCode.SUCCEEDED if all_ok else ExitCode.FAILED
