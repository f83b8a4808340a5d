"""A simulated fleet in its own process (its own GIL), for the benchmarks.

    python -m benchmarks.fleet_proc --host H --port P --username U \
        --prefix bench --count 1000 --state-dir DIR [--connect-rate 500]

Runs iotbridge_pi.fleet.Fleet, prints one JSON line per half second
(`{"t", "connected", "commands_run"}`) and, after SIGTERM/SIGINT, a final line
with `"final": true` and each device's `commands_run`. Every device connects
with the given credentials (the benchmarks use the service identity on the plain
port: no TLS handshakes, no per-device passwords to generate); its client id is
its thing name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

from iotbridge_contract.mqtt import Endpoint
from iotbridge_contract.stopflag import StopFlag, stopped_by_signals
from iotbridge_pi.fleet import Fleet


def thing_names(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i:05d}" for i in range(1, count + 1)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--username")
    ap.add_argument("--password", default=os.environ.get("IOTBRIDGE_MQTT_PASSWORD"),
                    help="or set IOTBRIDGE_MQTT_PASSWORD, which keeps it out of the process list")
    ap.add_argument("--prefix", default="bench")
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--connect-rate", type=float, default=500.0)
    ap.add_argument("--telemetry-interval", type=int, default=3600, help="s; long, so telemetry does not load the run")
    ap.add_argument("--update-rate", type=float, help="what-if: override the agent's UPDATE_RATE_PER_S in this process")
    args = ap.parse_args(argv)
    if args.update_rate is not None:
        from iotbridge_pi import session

        session.UPDATE_RATE_PER_S = args.update_rate  # read at call time, so this process's devices use it

    endpoint = Endpoint(host=args.host, port=args.port, username=args.username, password=args.password)
    fleet = Fleet(
        endpoint_factory=lambda thing: endpoint,
        things=thing_names(args.prefix, args.count),
        state_dir=args.state_dir,
        telemetry_interval=args.telemetry_interval,
        connect_rate=args.connect_rate,
    )
    stop = StopFlag()  # set by the signal handler: no lock (see StopFlag)

    def on_signal() -> None:
        stop.set()
        fleet.wake()

    with stopped_by_signals(on_signal):
        runner = threading.Thread(target=fleet.run, args=(stop,), name="fleet", daemon=True)
        runner.start()
        started = time.monotonic()
        while runner.is_alive() and not stop.wait(0.5):
            # The counters are read without the pump's lock: approximate, which is all a progress line needs.
            print(json.dumps({"t": round(time.monotonic() - started, 2), "connected": fleet.connected,
                              "commands_run": fleet.commands_run}), flush=True)  # fmt: skip
        runner.join(30)
    per_device = {thing: s.commands_run for thing, s in fleet.sessions.items()}
    print(json.dumps({"final": True, "commands_run": sum(per_device.values()), "per_device": per_device}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
