"""ESP32 firmware: the smallest MicroPython heap (`-X heapsize`) that completes N commands.

Runs the firmware owner's probe, device/esp32/tools/heap_probe.py (real
MicroPython unix port, real Mosquitto and shadow service, compiled .mpy image,
binary search between `low` and `high` KB), and reads its verdicts. The probe
sends 100 commands (up to 10 pending) with ids shaped as the API makes them (26
base32 characters), then restarts the firmware to a commands shadow of 16
outcomes and 10 pending. With `hex_ids` it runs again with 32-hex-digit ids, as
a caller that chooses uuid4().hex sends (every id on the device is longer).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_json

PROBE = ROOT / "device" / "esp32" / "tools" / "heap_probe.py"
DEFAULTS = {"commands": 100, "low": 16, "high": 64, "timeout_s": 1200, "hex_ids": True}
SMOKE = {"commands": 3, "low": 0, "high": 64, "timeout_s": 300, "hex_ids": False}  # low 0: one size only (--only high)

VERDICT = re.compile(r"^(\d+)k: (pass|FAIL)")
SMALLEST = re.compile(r"smallest heap that completed (\d+) commands[^:]*: (\d+) KB")


def _probe(params: dict[str, Any], *extra: str) -> tuple[dict[int, bool], int | None, subprocess.CompletedProcess[str]]:
    """The probe's verdict per size tried, and the smallest size that passed."""
    argv = [sys.executable, str(PROBE), "--commands", str(params["commands"]), *extra]
    if int(params["low"]) <= 0:
        argv += ["--only", str(params["high"])]
    else:
        argv += ["--low", str(params["low"]), "--high", str(params["high"])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=float(params["timeout_s"]), cwd=ROOT)
    tried = {int(m[1]): m[2] == "pass" for line in done.stdout.splitlines() if (m := VERDICT.match(line))}
    smallest = SMALLEST.search(done.stdout)
    passing = sorted(k for k, ok in tried.items() if ok)
    if not tried:
        tail = (done.stdout + done.stderr).splitlines()[-12:]
        raise RuntimeError(f"the heap probe gave no verdict (exit {done.returncode}): {tail}")
    return dict(sorted(tried.items())), int(smallest[2]) if smallest else (passing[0] if passing else None), done


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    if not PROBE.exists():
        raise FileNotFoundError(f"{PROBE} is missing: the firmware's heap probe is what this benchmark runs")
    started = time.monotonic()
    tried, smallest, done = _probe(params)
    result: dict[str, Any] = {
        "benchmark": "esp32_heap",
        "params": params,
        "exit_code": done.returncode,
        "tried_kb": tried,
        "smallest_passing_kb": smallest,
        "target_kb": 48,
        "probe_output_tail": (done.stdout + done.stderr).splitlines()[-12:],
    }
    if params.get("hex_ids"):
        tried, smallest, _ = _probe(params, "--hex-ids")
        result["hex_ids"] = {"tried_kb": tried, "smallest_passing_kb": smallest}
    result["seconds"] = round(time.monotonic() - started, 1)
    write_json(out, "esp32_heap", result)
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    tried = ", ".join(f"{k}k {'ok' if ok else 'fail'}" for k, ok in result["tried_kb"].items())
    rows = [
        (f"smallest heap for {result['params']['commands']} commands + a restart to 16 outcomes and 10 pending"
         " (ids as the API makes them; target ≤ 48 KB)", f"{result['smallest_passing_kb']} KB"),
        ("sizes tried", tried),
    ]
    hex_ids = result.get("hex_ids")
    if hex_ids:
        rows.append(("the same with 32-hex-digit ids (a caller's uuid4().hex)", f"{hex_ids['smallest_passing_kb']} KB"))
        rows.append(("sizes tried", ", ".join(f"{k}k {'ok' if ok else 'fail'}" for k, ok in hex_ids["tried_kb"].items())))
    return rows
