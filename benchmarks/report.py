"""`python -m benchmarks.report [DIR]`: the latest results as Markdown, for docs/benchmarks.md.

One table per benchmark from bench-results/*.json (each benchmark's own `table`
rows), headed by the commit and load average it ran at.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from benchmarks import BENCHMARKS
from benchmarks.common import ROOT


def render(results: Path) -> str:
    out: list[str] = []
    for name, module_name in BENCHMARKS.items():
        path = results / f"{name}.json"
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        origin = result.get("provenance") or {}
        load = ", ".join(f"{x:.1f}" for x in origin.get("load_avg", []))
        dirty = origin.get("uncommitted_files_measured", "?")
        out.append(f"### {name}\n\n`{origin.get('at', '?')}`, commit `{origin.get('commit', '?')}` "
                   f"(+{dirty} uncommitted files), load average {load or '?'}\n")  # fmt: skip
        if "error" in result:
            out.append(f"ERROR: {result['error']}\n")
            continue
        out.append("| figure | value |\n|---|---|")
        module = importlib.import_module(module_name)
        try:
            out.extend(f"| {label} | {value} |" for label, value in module.table(result))
        except KeyError as exc:  # written by an older version of the benchmark
            out.append(f"| (stale result: no {exc}; run it again) | |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench-results"))
