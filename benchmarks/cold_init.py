"""Cold init of the API function: importing its handler in a fresh interpreter.

Compared in the same run, alternating, with `import boto3` + creating the
iot-data client (what any function talking to IoT pays) and with an empty
interpreter. `-X importtime` of one extra handler import names the modules
that cost the most.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import progress, ratio, summary_ms, write_json

DEFAULTS = {"runs": 7}
SMOKE = {"runs": 1}

CASES = {
    "python": "pass",
    "boto3_client": "import boto3; boto3.client('iot-data')",
    "handler": "import iotbridge_api.handler",
    "handler_first_client": "import iotbridge_api.handler; from iotbridge_api import iot; iot._client('iot-data')",
}

ENV = {
    "AWS_ENDPOINT_URL_IOT_DATA_PLANE": "http://127.0.0.1:9",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "POWERTOOLS_SERVICE_NAME": "iotbridge",
    "POWERTOOLS_METRICS_NAMESPACE": "iotbridge",
}


def _time_once(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, **ENV}, capture_output=True, timeout=60)
    return time.perf_counter() - start


def top_imports(code: str, count: int = 12) -> list[dict[str, Any]]:
    """The modules with the largest cumulative import time (µs), from `-X importtime`."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", code], env={**os.environ, **ENV},
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        self_us, cumulative_us, name = line.removeprefix("import time:").split("|")
        depth = (len(name) - len(name.lstrip()) - 1) // 2
        rows.append({"module": name.strip(), "depth": depth,
                     "self_ms": int(self_us) / 1000, "cumulative_ms": int(cumulative_us) / 1000})
    # our own modules only wrap the others: list what they pull in, biggest first (nested rows overlap)
    theirs = [r for r in rows if not r["module"].startswith(("iotbridge_", "__editable__", "site", "encodings"))]
    return sorted(theirs, key=lambda r: -r["cumulative_ms"])[:count]


def run(params: dict[str, Any], out: Path) -> dict[str, Any]:
    runs = int(params["runs"])
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for code in CASES.values():  # warm the page cache once so the first case is not penalised
        _time_once(code)
    for _ in progress(range(runs), desc="cold init"):
        for name, code in CASES.items():
            samples[name].append(_time_once(code))
    stats = {name: summary_ms(values) for name, values in samples.items()}
    handler, boto = stats["handler"]["p50"], stats["boto3_client"]["p50"]
    result = {
        "benchmark": "cold_init",
        "params": params,
        "ms": stats,
        "handler_over_boto3": ratio(handler, boto),
        # The handler imports boto3 lazily: its first request pays for it. This is the cold start a caller sees.
        "handler_and_client_over_boto3": ratio(stats["handler_first_client"]["p50"], boto),
        "handler_over_boto3_net_of_python": ratio(handler - stats["python"]["p50"], boto - stats["python"]["p50"]),
        "target_ratio": 1.2,
        "top_imports": top_imports(CASES["handler"]),
    }
    write_json(out, "cold_init", result)
    return result


def table(result: dict[str, Any]) -> list[tuple[str, str]]:
    ms = result["ms"]
    return [
        ("import handler (p50)", f"{ms['handler']['p50']} ms"),
        ("import boto3 + iot-data client (p50)", f"{ms['boto3_client']['p50']} ms"),
        ("handler / boto3 (target ≤ 1.2)", f"{result['handler_over_boto3']}x"),
        ("handler + its first client / boto3", f"{result['handler_and_client_over_boto3']}x"),
        ("top import", ", ".join(f"{r['module']} {r['cumulative_ms']:.0f} ms" for r in result["top_imports"][:4])),
    ]
