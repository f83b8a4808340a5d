"""Static promises of the dashboard's source: no HTML parsing of data, nothing from other hosts."""

from __future__ import annotations

import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
HTML_SINKS = re.compile(r"\b(innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval)\b|new Function\(")


def test_no_script_turns_strings_into_html() -> None:
    # GIVEN every script of the dashboard
    scripts = sorted((DASHBOARD / "js").glob("*.js"))
    assert scripts
    # THEN none uses an API that parses a string as HTML or code
    offenders = [f"{p.name}:{n}" for p in scripts for n, line in enumerate(p.read_text().splitlines(), 1)
                 if HTML_SINKS.search(line)]  # fmt: skip
    assert offenders == []


def test_every_resource_comes_from_the_dashboard_itself() -> None:
    # GIVEN the page and its stylesheet
    html = (DASHBOARD / "index.html").read_text()
    css = (DASHBOARD / "styles.css").read_text()
    # THEN every src/href and url() is relative, and modules import only local files
    refs = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url\(([^)]+)\)", css)
    assert refs and all(not re.match(r"^[a-z]+:|^//", ref) for ref in refs if ref != "#main"), refs
    imports = [m for p in (DASHBOARD / "js").glob("*.js") for m in re.findall(r'from "([^"]+)"', p.read_text())]
    assert imports and all(m.startswith("./") for m in imports), imports
