"""Every benchmark still runs: tiny sizes, and its JSON has sane fields. Speed is not asserted here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import BENCHMARKS

ROOT = Path(__file__).resolve().parents[2]


def _positive_ordered(stats: dict[str, Any]) -> bool:
    return stats["n"] > 0 and 0 < stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]


# What a user of each report relies on; a broken measurement shows up here.
CHECKS = {
    "floor": lambda r: _positive_ordered(r["mqtt_qos1_ms"]) and _positive_ordered(r["http_keepalive_ms"]),
    "cold_init": lambda r: r["ms"]["handler"]["n"] == 1 and r["handler_over_boto3"] > 0 and r["top_imports"],
    "shadow_rate": lambda r: r["mqtt"]["accepted"] > 0 and r["http"]["accepted"] > 0 and r["http"]["errors"] == 0,
    "roundtrip": lambda r: (r["api_command_ms"]["n"] == 5 and r["answers"] == {"200 SUCCEEDED": 10}
                            and r["data_plane_calls_per_command"]["GetThingShadow"] >= 1
                            and Path(r["profile_html"]).exists()),
    "throughput": lambda r: (len(r["runs"]) == 2 and all(run["lost"] == 0 and run["errors"] == 0 for run in r["runs"])
                             and r["run_twice"] == 0 and r["commands_that_ran"] > 0),
    "fleet_scale": lambda r: r["sizes"][0]["bulk_reported"] == 5 and r["sizes"][0]["job_view"]["complete"] is True,
    "esp32_heap": lambda r: r["smallest_passing_kb"] == 64 and r["tried_kb"] == {"64": True},
}
PLOTS = {"floor", "shadow_rate", "roundtrip", "throughput", "fleet_scale"}


def test_every_benchmark_has_a_check() -> None:
    # GIVEN the registry WHEN a benchmark is added THEN it gets a smoke check too
    assert set(CHECKS) == set(BENCHMARKS)


@pytest.mark.stack
@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.micropython) if n == "esp32_heap" else n for n in BENCHMARKS]
)
def test_benchmark_runs_with_tiny_sizes(name: str, tmp_path: Path) -> None:
    # GIVEN a benchmark at its smoke sizes
    # WHEN it runs as `make bench` would run it
    done = subprocess.run([sys.executable, "-m", "benchmarks", name, "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)  # fmt: skip
    # THEN it exits cleanly, writes its JSON with sane fields, and its plots
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert "error" not in result
    assert CHECKS[name](result), json.dumps(result, indent=1)[:3000]
    if name in PLOTS:
        assert list(tmp_path.glob(f"{name}-*.png"))
    assert name in done.stdout  # the table names it
