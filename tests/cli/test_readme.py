"""The README's CLI examples promise exit codes: each promise matches what the CLI does with those flags."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from iotbridge_local.apicommands import ExitCode
from iotbridge_local.cli import build_parser

README = Path(__file__).resolve().parents[2] / "README.md"


def _send_examples() -> list[tuple[str, dict[int, str]]]:
    """Each `iotbridge send …  # exit N what, …` line of the README: the command, and what each code means."""
    examples = []
    for line in README.read_text().splitlines():
        command, _, comment = line.partition("#")
        if not command.startswith("iotbridge send ") or not comment.strip().startswith("exit "):
            continue
        meanings: dict[int, str] = {}
        for codes, meaning in re.findall(r"(\d+(?:/\d+)*) ([^,]+)", comment.strip().removeprefix("exit ")):
            for code in codes.split("/"):
                meanings[int(code)] = meaning
        examples.append((command.strip(), meanings))
    return examples


def test_the_send_examples_give_the_exit_code_of_an_offline_device() -> None:
    examples = _send_examples()
    assert examples, "no `iotbridge send … # exit …` example in the README"
    for command, meanings in examples:
        # GIVEN a send example, parsed as the CLI parses it
        args = build_parser().parse_args(shlex.split(command)[1:])
        # WHEN its device is offline: queued (202, still pending when the wait runs out) unless --if-offline fail (409)
        offline = ExitCode.OFFLINE if args.if_offline == "fail" else ExitCode.PENDING
        # THEN the README gives that code for an offline device, and no other
        said = sorted(code for code, meaning in meanings.items() if "offline" in meaning)
        assert said == [offline], f"README: {command!r} says {meanings}; an offline device exits {offline.value}"
