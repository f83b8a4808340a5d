"""The engine against a small reference model written straight from the AWS docs.

The model rebuilds documents functionally (no metadata, no in-place edits), so
it shares no code with the engine:
- "Updates affect only the fields specified"; "Fields with a value of null are removed".
- "desired: null" removes the section.
- Delta: "Fields in the desired section that are not in the reported section are
  included"; "When nested objects differ, the delta contains the path all the way
  to the root"; "Arrays are treated like values".
- "with every update of a shadow, the version ... is incremented"; a request
  version that does not match is rejected with 409.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from iotbridge_local.shadow import engine
from iotbridge_local.shadow.engine import ShadowError

KEYS = st.sampled_from(["a", "b", "c"])
SCALARS = st.one_of(st.booleans(), st.integers(-2, 2), st.sampled_from(["x", "y"]))
VALUES = st.recursive(
    SCALARS | st.lists(SCALARS, max_size=2),
    lambda inner: st.dictionaries(KEYS, inner | st.none(), max_size=3),
    max_leaves=6,
)
SECTION = st.dictionaries(KEYS, VALUES | st.none(), max_size=3)
STATE = st.fixed_dictionaries({}, optional={"desired": SECTION | st.none(), "reported": SECTION | st.none()})
REQUEST = st.fixed_dictionaries({"state": STATE}, optional={"version": st.integers(0, 6)})


def model_merge(doc: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(doc)
    for key, value in update.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            base = doc.get(key)
            out[key] = model_merge(base if isinstance(base, dict) else {}, value)
        else:
            out[key] = value
    return out


def same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def model_delta(desired: dict[str, Any], reported: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, want in desired.items():
        have = reported.get(key, ...)
        if isinstance(want, dict) and isinstance(have, dict):
            sub = model_delta(want, have)
            if sub:
                out[key] = sub
        elif have is ... or not same(want, have):
            out[key] = want
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(REQUEST, min_size=1, max_size=8))
def test_merge_delta_and_version_follow_the_reference_model(requests: list[dict[str, Any]]) -> None:
    # GIVEN a fresh shadow and the model's empty document
    shadow = None
    model: dict[str, dict[str, Any]] = {}
    model_version = 0
    for now, request in enumerate(requests, start=1):
        # WHEN each update request is applied to both
        payload = json.dumps(request).encode()
        expect_conflict = "version" in request and request["version"] != model_version
        try:
            result = engine.apply_update(shadow, engine.parse_update(payload), now)
        except ShadowError as err:
            # THEN the engine rejects exactly the stale versions, with 409
            assert expect_conflict and err.code == 409
            continue
        assert not expect_conflict
        for section, update in request["state"].items():
            if update is None:
                model.pop(section, None)
            else:
                model[section] = model_merge(model.get(section, {}), update)
        model = {k: v for k, v in model.items() if v}
        model_version += 1
        shadow = result.shadow
        # THEN state, version and delta agree with the model
        doc = engine.get_document(shadow, "t", None, None, now)
        want_delta = model_delta(model.get("desired", {}), model.get("reported", {}))
        assert same({k: v for k, v in doc["state"].items() if k != "delta"}, model)
        assert same(doc["state"].get("delta", {}), want_delta)
        assert doc["version"] == model_version
        # AND delta is published after every update that leaves a non-empty delta
        assert (result.delta is not None) == bool(want_delta)
        if result.delta is not None:
            assert same(result.delta["state"], want_delta)
        # AND every leaf of the state has a timestamp, and nothing else does
        assert same(strip_to_shape(doc["metadata"]), shape(model))


def shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return "leaf"


def strip_to_shape(meta: Any) -> Any:
    if isinstance(meta, dict) and set(meta) == {"timestamp"} and isinstance(meta["timestamp"], int):
        return "leaf"
    if isinstance(meta, dict):
        return {k: strip_to_shape(v) for k, v in meta.items()}
    if isinstance(meta, list):
        return [strip_to_shape(v) for v in meta]
    raise AssertionError(f"unexpected metadata node {meta!r}")
