"""`python -m benchmarks [NAME ...] [--smoke] [--out DIR] [--set key=value ...]` (also `make bench`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks import BENCHMARKS
from benchmarks.common import ROOT, write_json


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def provenance() -> dict[str, Any]:
    """Which code produced a figure: the commit, and whether the measured parts had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    dirty = git("status", "--porcelain", "--", "functions", "infra", "device")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_files_measured": len(dirty.splitlines()),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_avg": os.getloadavg()}  # fmt: skip


def parameters(module: Any, *, smoke: bool, overrides: dict[str, Any]) -> dict[str, Any]:
    params = dict(module.DEFAULTS)
    if smoke:
        params.update(module.SMOKE)
    params.update({k: v for k, v in overrides.items() if k in params})
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="iotbridge benchmarks")
    parser.add_argument("names", nargs="*", help=f"which to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that they still run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of the benchmarks that have it (JSON value)")  # fmt: skip
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    overrides = {k: _value(v) for k, _, v in (item.partition("=") for item in args.set)}
    names = args.names or list(BENCHMARKS)
    rows: list[tuple[str, str, str]] = []
    failed = []
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        params = parameters(module, smoke=args.smoke, overrides=overrides)
        print(f"== {name} {params}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            origin = provenance()
            result = module.run(params, args.out)
            write_json(args.out, name, {**result, "provenance": origin})
        except Exception as exc:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
            write_json(args.out, name, {"benchmark": name, "params": params, "error": f"{type(exc).__name__}: {exc}"})
            rows.append((name, "ERROR", f"{type(exc).__name__}: {exc}"[:120]))
            continue
        rows.extend((name, label, value) for label, value in module.table(result))
        print(f"   {name} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    width = max((len(f"{n}  {label}") for n, label, _ in rows), default=20)
    print()
    for name, label, value in rows:
        print(f"{f'{name}  {label}':<{width}}  {value}")
    print(f"\nJSON and plots in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
