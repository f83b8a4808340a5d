"""Find the smallest MicroPython heap in which the compiled firmware completes N commands end to end.

    .venv/bin/python device/esp32/tools/heap_probe.py [--commands 100] [--low 24] [--high 64]

Starts a real Mosquitto and the local shadow service (iotcore) on free ports,
compiles the firmware with mpy-cross, and for each heap size tried runs
`micropython -X heapsize=<K>k` against them: N commands queued through boto3
iot-data, up to 10 pending at a time (the API's limit, so the deltas are as
large as they get), then a reconnect that reads a commands shadow holding 16
outcomes and 10 pending commands (the largest get document). Command ids are
shaped as the API makes them when the caller gives none (26 base32
characters), or with --hex-ids as 32 hex digits (a caller's uuid4().hex);
derived from a counter, so every run sends the same documents. A size
passes when every command succeeded and the process is still alive. Binary
search between --low and --high (KB). Uses the test harness in tests/micropython.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

from iotbridge_local.broker import Broker  # noqa: E402
from iotbridge_local.config import StackConfig  # noqa: E402
from tests.micropython.harness import (  # noqa: E402
    FirmwareProcess,
    IotCoreProcess,
    command,
    compile_firmware,
    outcome_in_shadow,
    queue_command,
    wait_until,
)

THING = "esp32-probe"
VERBOSE = False  # --verbose: a failed run's last firmware lines go to stderr


HEX_IDS = False  # --hex-ids
PENDING = 10  # --pending: commands queued for the reconnect
SHADOW_RATE: float | None = None  # --shadow-rate: the shadow service's requests/s per thing (None: no limit)


def api_id(name: str) -> str:
    """An id shaped like the API's own (contract.new_id: 26 base32 characters), the same on every run."""
    digest = hashlib.md5(name.encode()).digest()
    return digest.hex() if HEX_IDS else base64.b32encode(digest).decode().rstrip("=").lower()


def _survived(fw: FirmwareProcess) -> tuple[bool, str]:
    """Alive, and never restarted by an error: the firmware restarts itself after one (out of memory)."""
    fatal = [ln for ln in fw.lines if ln.startswith("iotbridge: fatal")]
    return (fw.alive() and not fatal), "; ".join(fatal)


def run_once(heap_kb: int, commands: int, work: Path, image: Path, reconnect: bool = True) -> tuple[bool, str]:
    cfg = StackConfig.free(work / "stack", tls=False)
    with Broker(cfg) as broker:
        core = IotCoreProcess(cfg.data_dir / "iotcore", broker.service_endpoint(), cfg.iot_http_port,
                              max_rate=SHADOW_RATE).start()
        ep = broker.device_endpoint(THING)
        dev: dict[str, Any] = {"thing": THING, "host": ep.host, "port": ep.port, "user": ep.username,
                               "password": ep.password}
        fw = FirmwareProcess(work / "device", dev, heap=f"{heap_kb}k", code_dir=image)
        try:
            iot = core.iot_data()
            fw.start()
            fw.wait_for("ready")
            sent = 0
            while sent < commands:
                ids = [api_id(f"c{sent + i}") for i in range(min(10, commands - sent))]
                for cid in ids:
                    queue_command(iot, THING, cid, command("led", {"state": "toggle"}))
                for cid in ids:
                    out = wait_until(lambda c=cid: fw.alive() and outcome_in_shadow(iot, THING, c), cid, timeout=20)
                    if out["state"] != "SUCCEEDED":
                        return False, f"{cid}: {out}"
                sent += len(ids)
            if not reconnect:
                return _survived(fw)
            # The largest get/accepted: 16 outcomes + 10 pending, read on (re)connect.
            fw.stop()
            ids = [api_id(f"r{i}") for i in range(PENDING)]
            for cid in ids:
                queue_command(iot, THING, cid, command("ping"))
            fw.start()
            for cid in ids:
                out = wait_until(lambda c=cid: fw.alive() and outcome_in_shadow(iot, THING, c), cid, timeout=20)
                if out["state"] != "SUCCEEDED":
                    return False, f"{cid}: {out}"
            return _survived(fw)
        except AssertionError as e:
            errors = [ln for ln in fw.lines if "Error" in ln]
            state = "firmware failed: " + errors[-1] if errors else "firmware alive (slow?)"
            tb = [i for i, ln in enumerate(fw.lines) if ln.startswith("Traceback")]
            if tb:  # where: the first traceback's frames, innermost first
                frames = []
                for ln in fw.lines[tb[0] + 1:]:
                    if not ln.strip().startswith("File"):
                        break
                    frames.append(ln.strip())
                state += " at " + " < ".join(reversed(frames))
            if VERBOSE:
                print("\n".join(fw.lines[-80:]), file=sys.stderr)
            return False, f"{e}; {state}"
        finally:
            fw.stop()
            core.stop()


def trials(n: int, heap_kb: int, commands: int, work: Path, image: Path, reconnect: bool) -> tuple[bool, str]:
    for i in range(n):
        ok, why = run_once(heap_kb, commands, work / f"t{i}", image, reconnect)
        if not ok:
            return False, why
    return True, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commands", type=int, default=100)
    ap.add_argument("--low", type=int, default=24, help="KB known (or assumed) to fail")
    ap.add_argument("--high", type=int, default=64, help="KB expected to pass")
    ap.add_argument("--only", type=int, help="try this one size (KB) and report")
    ap.add_argument("--trials", type=int, default=1, help="runs per size; a size passes only if all pass")
    ap.add_argument("--no-reconnect", dest="reconnect", action="store_false",
                    help="only the N commands, without the reconnect to a full commands shadow")
    ap.add_argument("--verbose", action="store_true", help="print a failed run's last firmware lines")
    ap.add_argument("--hex-ids", action="store_true", help="ids of 32 hex digits (a caller's uuid4().hex), not the API's 26")
    ap.add_argument("--pending", type=int, default=10,
                    help="commands pending at the reconnect (the API queues at most 10; a bulk job's first write can add more)")
    ap.add_argument("--shadow-rate", type=float, default=0,
                    help="limit each thing's shadow requests per second, as AWS does (20); default 0: no limit, "
                         "since the probe queues 10 commands at once and the firmware answers them back to back")
    args = ap.parse_args()
    global VERBOSE, HEX_IDS, PENDING, SHADOW_RATE
    VERBOSE, HEX_IDS, PENDING, SHADOW_RATE = args.verbose, args.hex_ids, args.pending, args.shadow_rate or None
    with tempfile.TemporaryDirectory() as tmp:
        image = compile_firmware(Path(tmp) / "image")
        sizes = [args.only] if args.only else None
        if sizes:
            ok, why = trials(args.trials, sizes[0], args.commands, Path(tmp) / "only", image, args.reconnect)
            print(f"{sizes[0]}k: {'pass' if ok else 'FAIL'} {why}")
            return 0 if ok else 1
        lo, hi = args.low, args.high
        ok, why = trials(args.trials, hi, args.commands, Path(tmp) / f"h{hi}", image, args.reconnect)
        print(f"{hi}k: {'pass' if ok else 'FAIL'} {why}", flush=True)
        if not ok:
            return 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok, why = trials(args.trials, mid, args.commands, Path(tmp) / f"h{mid}", image, args.reconnect)
            print(f"{mid}k: {'pass' if ok else 'FAIL'} {why}", flush=True)
            lo, hi = (lo, mid) if ok else (mid, hi)
        what = " and the reconnect" if args.reconnect else ""
        print(f"smallest heap that completed {args.commands} commands{what}: {hi} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
