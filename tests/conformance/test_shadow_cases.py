"""Cases from the AWS Device Shadow docs, run over MQTT and HTTP against our iotcore
(real Mosquitto) and, for the part moto implements, against moto with the same
expected results.

Each case returns what a client observes, without timestamps; the expected
value is written from the docs, so every front is checked against the same truth.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conformance.conftest import Front, MotoFront

Case = Callable[[Front], Any]


def view(reply: tuple[int, dict[str, Any]]) -> tuple[int, Any]:
    """Status and the parts every front must agree on: state, version (or the error message)."""
    status, body = reply
    if status != 200:
        return status, body["message"]
    return status, {k: body[k] for k in ("state", "version") if k in body}


# -------------------------------------------------------------- cases moto implements too


def case_delta_from_docs(f: Front) -> Any:
    # "Delta state" example: desired color/state, reported color/engine
    f.update("lamp", {"state": {"desired": {"color": "RED", "state": "STOP"}}})
    f.update("lamp", {"state": {"reported": {"color": "GREEN", "engine": "ON"}}})
    return view(f.get("lamp"))


def case_nested_delta_from_docs(f: Front) -> Any:
    # "When nested objects differ, the delta contains the path all the way to the root"
    f.update("lamp", {"state": {"desired": {"lights": {"color": {"r": 255, "g": 255, "b": 255}}}}})
    f.update("lamp", {"state": {"reported": {"lights": {"color": {"r": 255, "g": 0, "b": 255}}}}})
    status, body = f.get("lamp")
    return status, body.get("state", {}).get("delta")


def case_optimistic_locking_from_docs(f: Front) -> Any:
    # "Optimistic locking": a stale version is a 409 Version conflict, the current one is accepted
    f.update("lamp", {"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}})
    stale = f.update("lamp", {"state": {"desired": {"colors": ["BLUE"]}}, "version": 0})
    fresh = f.update("lamp", {"state": {"desired": {"colors": ["BLUE"]}}, "version": 1})
    return view(stale), view(fresh), view(f.get("lamp"))


def case_named_shadows_are_separate(f: Front) -> Any:
    # Named shadows: their own documents and versions; the classic one is not listed
    f.update("lamp", {"state": {"reported": {"on": True}}})
    f.update("lamp", {"state": {"desired": {"c1": {"action": "ping"}}}}, shadow="commands")
    f.update("lamp", {"state": {"reported": {"connected": True}}}, shadow="presence")
    return view(f.get("lamp", "commands")), view(f.get("lamp")), f.list_named("lamp")


def case_null_removes_a_key(f: Front) -> Any:
    # "Fields with a value of null are removed from the shadow document"
    f.update("lamp", {"state": {"desired": {"a": 1, "b": {"c": 2, "d": 3}}}})
    f.update("lamp", {"state": {"desired": {"b": {"c": None}}}})
    return view(f.get("lamp"))


SHARED: dict[str, tuple[Case, Any]] = {
    "delta": (
        case_delta_from_docs,
        (
            200,
            {
                "state": {
                    "desired": {"color": "RED", "state": "STOP"},
                    "reported": {"color": "GREEN", "engine": "ON"},
                    "delta": {"color": "RED", "state": "STOP"},
                },
                "version": 2,
            },
        ),
    ),
    "nested-delta": (case_nested_delta_from_docs, (200, {"lights": {"color": {"g": 255}}})),
    "optimistic-locking": (
        case_optimistic_locking_from_docs,
        (
            (409, "Version conflict"),
            (200, {"state": {"desired": {"colors": ["BLUE"]}}, "version": 2}),
            (200, {"state": {"desired": {"colors": ["BLUE"]}, "delta": {"colors": ["BLUE"]}}, "version": 2}),
        ),
    ),
    "named-shadows": (
        case_named_shadows_are_separate,
        (
            (
                200,
                {"state": {"desired": {"c1": {"action": "ping"}}, "delta": {"c1": {"action": "ping"}}}, "version": 1},
            ),
            (200, {"state": {"reported": {"on": True}}, "version": 1}),
            ["commands", "presence"],
        ),
    ),
    "null-removes-key": (
        case_null_removes_a_key,
        (
            200,
            {"state": {"desired": {"a": 1, "b": {"d": 3}}, "delta": {"a": 1, "b": {"d": 3}}}, "version": 2},
        ),
    ),
}


@pytest.mark.parametrize("case", SHARED, ids=list(SHARED))
def test_docs_case_on_our_service(front: Front, case: str) -> None:
    # GIVEN our iotcore behind MQTT or HTTP / WHEN the docs' steps run / THEN the docs' result
    run, expected = SHARED[case]
    assert run(front) == expected


@pytest.mark.parametrize("case", SHARED, ids=list(SHARED))
def test_docs_case_on_moto_gives_the_same_result(moto_front: MotoFront, case: str) -> None:
    # GIVEN moto (things registered first, as it requires) / WHEN the same steps run / THEN the same result
    run, expected = SHARED[case]
    assert run(moto_front) == expected


# -------------------------------------------------------------- cases beyond moto


def test_desired_null_clears_the_section_and_state_null_clears_all(front: Front) -> None:
    # GIVEN desired and reported state
    front.update("lamp", {"state": {"desired": {"a": 1}, "reported": {"a": 0}}})
    # WHEN desired is set to null ("Empty shadow document properties")
    status, body = front.update("lamp", {"state": {"reported": {"a": 1}, "desired": None}})
    # THEN accepted echoes the request, and the document has reported only, no delta
    assert status == 200 and body["state"] == {"reported": {"a": 1}, "desired": None}
    assert view(front.get("lamp")) == (200, {"state": {"reported": {"a": 1}}, "version": 2})
    # WHEN the whole state is null / THEN the shadow exists, empty, at the next version
    front.update("lamp", {"state": None})
    assert view(front.get("lamp")) == (200, {"state": {}, "version": 3})


def test_client_token_is_echoed_on_accepted_and_rejected(front: Front) -> None:
    # GIVEN / WHEN an update with a client token
    status, body = front.update("lamp", {"state": {"reported": {"x": 1}}, "clientToken": "tok-1"})
    # THEN it comes back on the accepted document (HTTP too: it is the same document)
    assert status == 200 and body["clientToken"] == "tok-1"
    assert isinstance(body["timestamp"], int) and body["metadata"] == {"reported": {"x": {"timestamp": body["timestamp"]}}}


def test_delete_then_get_is_404_and_versions_continue(front: Front) -> None:
    # GIVEN a shadow at version 2
    front.update("lamp", {"state": {"reported": {"x": 1}}})
    front.update("lamp", {"state": {"reported": {"x": 2}}})
    # WHEN it is deleted
    status, body = front.delete("lamp")
    # THEN the delete answer carries its version, and reading it is a 404 naming it
    assert (status, body["version"]) == (200, 2)
    assert view(front.get("lamp")) == (404, "No shadow exists with name: 'lamp'")
    assert front.delete("lamp")[0] == 404
    # WHEN it is written again / THEN the version does not restart ("does not reset its version number to 0")
    assert view(front.update("lamp", {"state": {"reported": {"x": 3}}}))[1]["version"] == 3


MALFORMED = {
    "invalid-json": (b"{oops", 400, "Invalid JSON"),
    "missing-state": (b'{"desired": {"a": 1}}', 400, "Missing required node: state"),
    "state-not-object": (b'{"state": "on"}', 400, "State node must be an object"),
    "invalid-node": (b'{"state": {"delta": {"a": 1}}}', 400, "State contains an invalid node: 'delta'"),
    "too-deep": (
        json.dumps({"state": {"desired": {"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}}}).encode(),
        400,
        "JSON contains too many levels of nesting; maximum is 6",
    ),
    "token-65-bytes": (
        json.dumps({"state": {}, "clientToken": "t" * 65}).encode(),
        400,
        "Invalid clientToken",
    ),
    "9-kb": (
        json.dumps({"state": {"reported": {"blob": "x" * 9 * 1024}}}).encode(),
        413,
        "The payload exceeds the maximum size allowed",
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
def test_malformed_updates_are_rejected_with_aws_codes(front: Front, case: str) -> None:
    # GIVEN an existing shadow
    front.update("lamp", {"state": {"reported": {"ok": True}}})
    payload, code, message = MALFORMED[case]
    # WHEN a malformed update arrives
    # THEN it is rejected with AWS's code and message, and the shadow is untouched
    assert view(front.update("lamp", payload)) == (code, message)
    assert view(front.get("lamp")) == (200, {"state": {"reported": {"ok": True}}, "version": 1})


def test_unknown_shadow_is_404(front: Front) -> None:
    # GIVEN nothing / WHEN a named shadow that never existed is read / THEN 404 naming it
    assert view(front.get("lamp", "nothere")) == (404, "No shadow exists with name: 'nothere'")
