"""ESP32 firmware: the smallest MicroPython heap (`-X heapsize`) that completes N commands.

Runs the firmware owner's probe, device/esp32/tools/heap_probe.py (real
MicroPython unix port, real Mosquitto and shadow service, compiled .mpy image,
binary search between `low` and `high` KB), and reads its verdicts. The probe
sends 100 commands (up to 10 pending) with API-style 32-hex-character ids, then
restarts the firmware to a commands shadow of 16 outcomes and 10 pending.
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
DEFAULTS = {"commands": 100, "low": 16, "high": 64, "timeout_s": 1200}
SMOKE = {"commands": 3, "low": 0, "high": 64, "timeout_s": 300}  # low 0: one size only (--only high)

VERDICT = re.compile(r"^(\d+)k: (pass|FAIL)")
SMALLEST = re.compile(r"smallest heap that completed (\d+) commands[^:]*: (\d+) KB")


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    if not PROBE.exists():
        raise FileNotFoundError(f"{PROBE} is missing: the firmware's heap probe is what this benchmark runs")
    argv = [sys.executable, str(PROBE), "--commands", str(params["commands"])]
    if int(params["low"]) <= 0:
        argv += ["--only", str(params["high"])]
    else:
        argv += ["--low", str(params["low"]), "--high", str(params["high"])]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=float(params["timeout_s"]), cwd=ROOT)
    tried = {int(m[1]): m[2] == "pass" for line in done.stdout.splitlines() if (m := VERDICT.match(line))}
    smallest = SMALLEST.search(done.stdout)
    passing = sorted(k for k, ok in tried.items() if ok)
    result = {
        "benchmark": "esp32_heap",
        "params": params,
        "exit_code": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "tried_kb": dict(sorted(tried.items())),
        "smallest_passing_kb": int(smallest[2]) if smallest else (passing[0] if passing else None),
        "target_kb": 48,
        "probe_output_tail": (done.stdout + done.stderr).splitlines()[-12:],
    }
    write_json(out, "esp32_heap", result)
    if not tried:
        raise RuntimeError(f"the heap probe gave no verdict (exit {done.returncode}): {result['probe_output_tail']}")
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    tried = ", ".join(f"{k}k {'ok' if ok else 'fail'}" for k, ok in result["tried_kb"].items())
    return [
        (f"smallest heap for {result['params']['commands']} commands + a restart to 16 outcomes and 10 pending"
         " (target ≤ 48 KB)", f"{result['smallest_passing_kb']} KB"),
        ("sizes tried", tried),
    ]
