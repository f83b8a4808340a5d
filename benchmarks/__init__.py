"""Benchmarks of the local stack: scripts that print figures, not timed tests.

    .venv/bin/python -m benchmarks                 # all of them (make bench)
    .venv/bin/python -m benchmarks roundtrip       # one by name
    .venv/bin/python -m benchmarks --smoke         # tiny sizes: checks they still run
    .venv/bin/python -m benchmarks throughput --set duration_s=10 --set callers=16

Each benchmark is a module with `DEFAULTS` and `SMOKE` (its parameters) and
`run(params, out) -> dict`; results go to bench-results/<name>.json, plots to
bench-results/<name>-*.png, and the latest figures are copied by hand into
docs/benchmarks.md together with the command that produced them.
"""

from __future__ import annotations

# name -> module under benchmarks/, in the order `make bench` runs them (cheap first)
BENCHMARKS: dict[str, str] = {
    "floor": "benchmarks.floor",
    "cold_init": "benchmarks.cold_init",
    "shadow_rate": "benchmarks.shadow_rate",
    "roundtrip": "benchmarks.roundtrip",
    "throughput": "benchmarks.throughput",
    "fleet_scale": "benchmarks.fleet_scale",
    "esp32_heap": "benchmarks.esp32_heap",
}
