"""protocol.py under the MicroPython unix port: trimming documents while reading, and param specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.micropython.test_ledger import run_mpy

pytestmark = pytest.mark.micropython

GET_DOC: dict[str, Any] = {
    "state": {
        "desired": {"c-1": {"action": "led", "params": {"state": "on"}, "issuedAt": 1, "expiresAt": 9}},
        "delta": {"c-1": {"action": "led", "params": {"state": "on"}, "issuedAt": 1, "expiresAt": 9}},
        "reported": {
            "old": {"state": "SUCCEEDED", "action": "ping", "result": {"note": 'a "}]{[" b\\', "doneAt": 3}, "doneAt": 5},
            "no-time": {"state": "FAILED", "error": "doneAt"},
        },
    },
    "metadata": {"desired": {"c-1": {"action": {"timestamp": 1}}}, "reported": {"old": {"state": {"timestamp": 1}}}},
    "version": 7,
    "timestamp": 1700000000,
}


def test_trimming_while_reading_drops_metadata_and_desired_at_any_piece_size(tmp_path: Path) -> None:
    # GIVEN a commands get document (strings that look like brackets included), read in pieces of 1..40 bytes
    # into a buffer too small for it (so it must grow)
    doc = json.dumps(GET_DOC)
    script = f"""
import json
from protocol import read_trimmed
doc = {doc.encode()!r}
seen = set()
for piece in range(1, 41):
    pos = [0]
    def fill(view, pos=pos):
        view[:] = memoryview(doc)[pos[0]:pos[0] + len(view)]
        pos[0] += len(view)
    got = read_trimmed(len(doc), fill, {{1: (b"metadata",), 2: (b"desired",)}}, bytearray(8), piece, (2, b"reported"))
    seen.add(bytes(got))
print(json.dumps([len(seen), json.loads(seen.pop())]))
"""
    # WHEN the firmware's reader reads it
    (answer,) = run_mpy(script, tmp_path)
    assert isinstance(answer, list)
    variants, parsed = answer[0], dict(answer[1])
    # THEN every piece size gives the same valid JSON, without metadata or the desired copy
    assert variants == 1
    assert parsed["metadata"] == 0
    assert parsed["state"]["desired"] == 0
    assert parsed["state"]["delta"] == GET_DOC["state"]["delta"]
    # AND of each outcome only its own doneAt is kept (0 without one), not a nested one or a string
    assert parsed["state"]["reported"] == [{"old": 5, "no-time": 0}]
    assert (parsed["version"], parsed["timestamp"]) == (7, 1700000000)


def test_many_outcomes_are_read_in_dicts_of_eight(tmp_path: Path) -> None:
    # GIVEN a commands get with 17 outcomes (one with a string doneAt) and none, read in 1..13-byte pieces
    outcomes = {f"id-{i}": {"state": "SUCCEEDED", "doneAt": 1000 + i, "result": {"x": [1, {"y": 2}]}} for i in range(17)}
    outcomes["id-3"]["doneAt"] = "late"
    docs = [{"state": {"reported": outcomes}, "version": 3}, {"state": {"reported": {}}, "version": 4}]
    script = f"""
import json
from protocol import read_trimmed
out = []
for doc in {[json.dumps(d).encode() for d in docs]!r}:
    seen = set()
    for piece in range(1, 14):
        pos = [0]
        def fill(view, pos=pos, doc=doc):
            view[:] = memoryview(doc)[pos[0]:pos[0] + len(view)]
            pos[0] += len(view)
        seen.add(bytes(read_trimmed(len(doc), fill, {{1: (b"metadata",)}}, bytearray(8), piece, (2, b"reported"))))
    out.append([len(seen), json.loads(seen.pop())])
print(json.dumps(out))
"""
    # WHEN the firmware's reader reads them
    (answer,) = run_mpy(script, tmp_path)
    assert isinstance(answer, list)
    (variants, many), (variants_none, none) = answer
    # THEN every piece size gives the same valid JSON: the outcomes as id: doneAt in dicts of
    # at most 8 (0 for the doneAt that is not a number), and the rest intact
    assert variants == variants_none == 1
    chunks = many["state"]["reported"]
    assert [len(c) for c in chunks] == [8, 8, 1]
    assert {k: v for c in chunks for k, v in c.items()} == {f"id-{i}": 0 if i == 3 else 1000 + i for i in range(17)}
    assert many["version"] == 3
    assert none["state"]["reported"] == [{}]


@pytest.mark.parametrize(
    ("specs", "params", "ok"),
    [
        ({"state": "enum:on|off|toggle"}, {"state": "toggle"}, True),
        ({"state": "enum:on|off|toggle"}, {"state": "blue"}, False),
        ({"on": "bool"}, {"on": 1}, False),
        ({"seconds": "int:1..3600"}, {"seconds": 3600}, True),
        ({"seconds": "int:1..3600"}, {"seconds": 3601}, False),
        ({"seconds": "int:1..3600"}, {"seconds": True}, False),
        ({"delayMs": "int:0..10000?"}, {}, True),
        ({"level": "num:0..1"}, {"level": 0.5}, True),
        ({"name": "str:3"}, {"name": "abcd"}, False),
        ({}, {"x": 1}, False),
    ],
)
def test_param_specs_match_the_contract(tmp_path: Path, specs: dict[str, str], params: dict[str, object], ok: bool) -> None:
    # GIVEN an advertised spec and params, WHEN the firmware checks them
    script = f"import json\nfrom protocol import check_params\nprint(json.dumps(check_params({specs!r}, {params!r})))"
    (error,) = run_mpy(script, tmp_path)
    # THEN it agrees with the CPython contract (iotbridge_contract.actions)
    from iotbridge_contract.actions import ParamError, check_params

    try:
        check_params(specs, params)
        contract_ok = True
    except ParamError:
        contract_ok = False
    assert (error is None) == ok == contract_ok

