"""Shadow semantics of the engine, case by case from the AWS Device Shadow docs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from iotbridge_local.shadow import engine
from iotbridge_local.shadow.engine import Shadow, ShadowError


def update(shadow: Shadow | None, doc: dict[str, Any] | bytes, now: int = 100) -> engine.UpdateResult:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return engine.apply_update(shadow, engine.parse_update(payload), now)


def rejected(payload: bytes, shadow: Shadow | None = None) -> ShadowError:
    with pytest.raises(ShadowError) as info:
        engine.apply_update(shadow, engine.parse_update(payload), 100)
    return info.value


def test_nested_desired_and_reported_merge_and_delta_has_only_differing_desired_keys() -> None:
    # GIVEN a shadow with nested desired colour and an extra desired key
    s = update(None, {"state": {"desired": {"lights": {"color": {"r": 255, "g": 255, "b": 255}}, "mode": "eco"}}}).shadow
    # WHEN the device reports a colour that differs in one channel, plus a reported-only key
    s = update(s, {"state": {"reported": {"lights": {"color": {"r": 255, "g": 0, "b": 255}}, "engine": "ON"}}}).shadow
    doc = engine.get_document(s, "t", None, None, 200)
    # THEN the delta holds the path to that channel and the missing desired key, nothing reported-only
    assert doc["state"]["delta"] == {"lights": {"color": {"g": 255}}, "mode": "eco"}
    assert doc["state"]["reported"]["engine"] == "ON"
    assert doc["version"] == 2


def test_null_removes_a_key_and_desired_null_removes_the_section() -> None:
    # GIVEN desired and reported state
    s = update(None, {"state": {"desired": {"a": 1, "b": {"c": 2, "d": 3}}, "reported": {"a": 0}}}).shadow
    # WHEN a nested key is set to null
    s = update(s, {"state": {"desired": {"b": {"c": None}}}}).shadow
    # THEN only that key is gone, with its metadata
    assert s.state["desired"] == {"a": 1, "b": {"d": 3}}
    assert s.metadata["desired"]["b"] == {"d": {"timestamp": 100}}
    # WHEN desired is set to null
    r = update(s, {"state": {"desired": None}})
    # THEN the section is gone, reported stays, no delta is published, and accepted echoes the null
    assert "desired" not in r.shadow.state and r.shadow.state["reported"] == {"a": 0}
    assert r.delta is None
    assert r.accepted["state"] == {"desired": None}
    assert "delta" not in engine.get_document(r.shadow, "t", None, None, 1)["state"]


def test_state_null_clears_both_sections_but_keeps_the_shadow_and_counts_a_version() -> None:
    # GIVEN a shadow at version 2
    s = update(update(None, {"state": {"desired": {"a": 1}}}).shadow, {"state": {"reported": {"a": 2}}}).shadow
    # WHEN the whole state is set to null
    s = update(s, {"state": None}).shadow
    # THEN the document is empty but exists, at version 3
    doc = engine.get_document(s, "t", None, None, 1)
    assert doc["state"] == {} and doc["version"] == 3


def test_arrays_are_replaced_whole_and_compared_as_values() -> None:
    # GIVEN a desired array
    s = update(None, {"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}, "reported": {"colors": ["RED"]}}}).shadow
    # WHEN a shorter array is written
    r = update(s, {"state": {"desired": {"colors": ["RED"]}}})
    # THEN it replaces the whole array, delta is empty, metadata is per element
    assert r.shadow.state["desired"]["colors"] == ["RED"]
    assert r.delta is None
    assert r.shadow.metadata["desired"]["colors"] == [{"timestamp": 100}]


def test_true_and_one_differ_in_the_delta() -> None:
    # GIVEN desired true and reported 1 (equal in Python, different in JSON)
    s = update(None, {"state": {"desired": {"on": True}, "reported": {"on": 1}}}).shadow
    # WHEN the document is read / THEN the delta shows the desired true
    assert engine.get_document(s, "t", None, None, 1)["state"]["delta"] == {"on": True}


def test_version_conflict_is_409_with_client_token_and_matching_version_is_accepted() -> None:
    # GIVEN a shadow at version 1
    s = update(None, {"state": {"desired": {"colors": ["RED"]}}}).shadow
    # WHEN an update names a stale version / THEN it is a 409 "Version conflict" echoing the token
    err = rejected(b'{"state":{"desired":{"x":1}},"version":0,"clientToken":"tok"}', s)
    assert (err.code, err.message, err.client_token) == (409, "Version conflict", "tok")
    assert err.document(5) == {"code": 409, "message": "Version conflict", "timestamp": 5, "clientToken": "tok"}
    # WHEN the version matches / THEN it is accepted as version 2
    assert update(s, {"state": {"desired": {"x": 1}}, "version": 1}).accepted["version"] == 2


def test_accepted_delta_and_documents_payloads_have_aws_shape() -> None:
    # GIVEN a shadow whose device reported led=off
    s = update(None, {"state": {"reported": {"led": "off", "t": 20}}}, now=50).shadow
    # WHEN an app sets desired led=on with a client token
    r = update(s, {"state": {"desired": {"led": "on"}}, "clientToken": "c1"}, now=60)
    # THEN accepted echoes only the request's fields with their metadata
    assert r.accepted == {
        "state": {"desired": {"led": "on"}},
        "metadata": {"desired": {"led": {"timestamp": 60}}},
        "version": 2,
        "timestamp": 60,
        "clientToken": "c1",
    }
    # AND delta has state, metadata of desired, version, timestamp, clientToken
    assert r.delta == {
        "state": {"led": "on"},
        "metadata": {"led": {"timestamp": 60}},
        "version": 2,
        "timestamp": 60,
        "clientToken": "c1",
    }
    # AND documents carries previous and current with state, metadata and version
    assert r.documents["previous"] == {
        "state": {"reported": {"led": "off", "t": 20}},
        "metadata": {"reported": {"led": {"timestamp": 50}, "t": {"timestamp": 50}}},
        "version": 1,
    }
    assert r.documents["current"]["version"] == 2
    assert r.documents["current"]["state"]["desired"] == {"led": "on"}
    assert r.documents["current"]["metadata"]["reported"]["t"] == {"timestamp": 50}
    assert r.documents["clientToken"] == "c1" and r.documents["timestamp"] == 60


def test_reported_only_update_that_leaves_a_delta_publishes_the_whole_delta() -> None:
    # GIVEN a pending desired change
    s = update(None, {"state": {"desired": {"a": 1, "b": 2}}}).shadow
    # WHEN the device reports only part of it
    r = update(s, {"state": {"reported": {"a": 1}}})
    # THEN update/delta carries what still differs, as AWS publishes "when it accepts a shadow
    # update and the resulting shadow contains different values for desired and reported"
    assert r.delta is not None and r.delta["state"] == {"b": 2} and r.delta["version"] == 2
    assert engine.get_document(r.shadow, "t", None, None, 1)["state"]["delta"] == {"b": 2}
    # AND a report that settles it publishes none
    assert update(r.shadow, {"state": {"reported": {"b": 2}}}).delta is None


def test_delete_keeps_the_version_and_a_recreated_shadow_continues_from_it() -> None:
    # GIVEN a shadow at version 3
    s = None
    for i in range(3):
        s = update(s, {"state": {"reported": {"i": i}}}).shadow
    # WHEN it is deleted
    tomb, doc = engine.delete_document(s, "t", None, "tok", 9)
    # THEN delete/accepted carries the version and get is a 404 naming the shadow
    assert doc == {"version": 3, "timestamp": 9, "clientToken": "tok"}
    with pytest.raises(ShadowError) as info:
        engine.get_document(tomb, "dev1", None, None, 9)
    assert (info.value.code, info.value.message) == (404, "No shadow exists with name: 'dev1'")
    # AND a second delete is a 404 too
    with pytest.raises(ShadowError):
        engine.delete_document(tomb, "t", "commands", None, 9)
    # WHEN it is updated again / THEN the version continues and the old state is gone
    r = update(tomb, {"state": {"desired": {"z": 1}}})
    assert r.shadow.version == 4 and r.shadow.state == {"desired": {"z": 1}}
    assert r.documents["previous"] is None


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        (b"{not json", 400, "Invalid JSON"),
        (b"[1, 2]", 400, "Invalid JSON"),
        (b'{"state": NaN}', 400, "Invalid JSON"),
        (b"\xff\xfe", 415, "Unsupported documented encoding; supported encoding is UTF-8"),
        (b'{"desired": {"a": 1}}', 400, "Missing required node: state"),
        (b'{"state": 5}', 400, "State node must be an object"),
        (b'{"state": {"desired": [1]}}', 400, "Desired node must be an object"),
        (b'{"state": {"reported": "x"}}', 400, "Reported node must be an object"),
        (b'{"state": {"delta": {}}}', 400, "State contains an invalid node: 'delta'"),
        (b'{"state": {}, "version": "3"}', 400, "Invalid version"),
        (b'{"state": {}, "version": true}', 400, "Invalid version"),
        (b'{"state": {}, "clientToken": 7}', 400, "Invalid clientToken"),
    ],
)
def test_malformed_requests_get_aws_codes_and_messages(payload: bytes, code: int, message: str) -> None:
    # GIVEN / WHEN a malformed update request / THEN it is rejected with AWS's code and message
    err = rejected(payload)
    assert (err.code, err.message) == (code, message)


def test_client_token_of_64_bytes_is_echoed_and_65_bytes_is_rejected() -> None:
    # GIVEN a 64-byte token (multi-byte characters count in bytes)
    ok = "é" * 32
    # WHEN used / THEN echoed
    assert update(None, {"state": {}, "clientToken": ok}).accepted["clientToken"] == ok
    # WHEN 65 bytes / THEN 400 Invalid clientToken, and the bad token is not echoed
    err = rejected(json.dumps({"state": {}, "clientToken": "x" * 65}).encode())
    assert (err.code, err.message, err.client_token) == (400, "Invalid clientToken", None)


def nest(levels: int) -> dict[str, Any]:
    """A section `levels` objects deep: nest(1) == {} ."""
    doc: dict[str, Any] = {}
    for i in range(levels - 1):
        doc = {f"k{i}": doc}
    return doc


@pytest.mark.parametrize("too_deep", [nest(7), {"one": {"two": {"three": {"four": {"five": {"six": 1}}}}}},
                                      {"one": {"two": {"three": {"four": {"five": [1]}}}}}])
def test_five_levels_of_keys_are_accepted_and_six_are_rejected(too_deep: dict[str, Any]) -> None:
    # GIVEN AWS's own deepest example ("desired" -> one..five -> {}) / WHEN sent / THEN accepted
    assert update(None, {"state": {"desired": nest(6)}}).shadow.version == 1
    assert update(None, {"state": {"desired": {"one": {"two": {"three": {"four": {"five": 5}}}}}}}).shadow.version == 1
    # WHEN a sixth level of keys (or an array's items at the sixth level) / THEN 400 with AWS's message
    err = rejected(json.dumps({"state": {"reported": too_deep}, "clientToken": "deep"}).encode())
    assert (err.code, err.message, err.client_token) == (
        400,
        "JSON contains too many levels of nesting; maximum is 6",
        "deep",
    )


def test_desired_plus_reported_over_8_kb_is_413_and_nothing_changes() -> None:
    # GIVEN a shadow with 5 KB of reported state
    s = update(None, {"state": {"reported": {"blob": "r" * 5000}}}).shadow
    # WHEN 4 KB of desired is added (together over 8192 bytes)
    err = rejected(json.dumps({"state": {"desired": {"blob": "d" * 4000}}}).encode(), s)
    # THEN 413 with AWS's message
    assert (err.code, err.message) == (413, "The payload exceeds the maximum size allowed")
    # AND a document that shrinks back under the limit is accepted (metadata does not count)
    assert update(s, {"state": {"desired": {"blob": "d" * 3000}}}).shadow.version == 2


def test_get_and_delete_take_an_optional_client_token_and_ignore_other_content() -> None:
    # GIVEN / WHEN get/delete payloads / THEN a token is read from a JSON object
    assert engine.parse_token_only(b"") is None
    assert engine.parse_token_only(b'{"clientToken": "g1"}') == "g1"
    # AND other content is ignored, as AWS documents for these topics, not refused
    assert engine.parse_token_only(b"please") is None
    assert engine.parse_token_only(b"[1, 2]") is None
    # AND a token that AWS would refuse anywhere (not a string, over 64 bytes) is still a 400
    with pytest.raises(ShadowError) as info:
        engine.parse_token_only(b'{"clientToken": 5}')
    assert info.value.code == 400


def test_metadata_keeps_old_timestamps_for_untouched_keys() -> None:
    # GIVEN a key written at t=10
    s = update(None, {"state": {"reported": {"a": 1, "n": {"x": 1}}}}, now=10).shadow
    # WHEN another key is written at t=20
    s = update(s, {"state": {"reported": {"b": 2, "n": {"y": 2}}}}, now=20).shadow
    # THEN each leaf carries the time it was last written
    assert s.metadata["reported"] == {
        "a": {"timestamp": 10},
        "b": {"timestamp": 20},
        "n": {"x": {"timestamp": 10}, "y": {"timestamp": 20}},
    }


def test_an_outcome_keeps_a_result_as_deep_as_the_shadow_takes_and_truncates_a_deeper_one() -> None:
    from iotbridge_contract.commands import CommandState, outcome_entry

    # GIVEN results three and four levels of keys deep
    kept = outcome_entry(CommandState.SUCCEEDED, "probe", done_at=1, result={"a": {"b": {"c": 1}}})
    cut = outcome_entry(CommandState.SUCCEEDED, "probe", done_at=1, result={"a": {"b": {"c": {"d": 1}}}})
    # THEN the first is kept and the second truncated, and both outcomes fit the shadow (reported.{id}.result.…)
    assert kept["result"] == {"a": {"b": {"c": 1}}} and cut["result"] == {"truncated": True}
    assert update(None, {"state": {"reported": {"c1": kept, "c2": cut}}}).shadow.version == 1
