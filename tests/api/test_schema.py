"""One model definition, two uses: what the router accepts is exactly what the OpenAPI document says.

The request models validate bodies at runtime and write their JSON Schema into docs/openapi.json.
A client generated from the document must never be refused for a body the document allows, nor
get through with one it forbids: these tests hold both readings of each model against each other.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotbridge_api.models import BulkRequest, CommandRequest, DesiredRequest
from iotbridge_api.schema import Invalid, Model

REQUESTS = [CommandRequest, DesiredRequest, BulkRequest]


def _schema(model: type[Model]) -> dict[str, Any]:
    defs: dict[str, Any] = {}
    model.schema_ref(defs)
    # refs are "#/components/schemas/X": give the root the same layout as the OpenAPI document
    return {**defs[model.__name__], "components": {"schemas": defs}}


def _near(bounds: list[int]) -> list[int]:
    return sorted({b + d for b in bounds for d in (-1, 0, 1)})


def _values_for(model: type[Model]) -> st.SearchStrategy[Any]:
    """JSON values around every bound the document declares for the model, plus the wrong types."""
    schema = _schema(model)
    numbers: list[int] = [0]
    lengths: list[int] = [0]
    literals: list[Any] = []
    for prop in schema["properties"].values():
        for branch in prop.get("anyOf", [prop]):
            numbers += [branch[k] for k in ("minimum", "maximum") if k in branch]
            lengths += [branch[k] for k in ("minLength", "maxLength", "minItems", "maxItems") if k in branch]
            literals += branch.get("enum", [])
    scalars = st.one_of(
        st.sampled_from(_near(numbers)),
        st.sampled_from(_near(lengths)).map(lambda n: "a" * max(n, 0)),
        st.sampled_from([*literals, "a b", "ok_id-1", None, True, False, 1.5, -0.5]),
    )
    lists = st.lists(st.one_of(st.sampled_from(["dev-1", ""]), st.integers(-1, 1)), max_size=3)
    sized = st.sampled_from(_near(lengths)).map(lambda n: ["dev-1"] * max(n, 0))
    small = st.one_of(st.none(), st.integers(0, 2), st.text(max_size=2))
    objects = st.dictionaries(st.sampled_from(["state", "x"]), small, max_size=2)
    return st.one_of(scalars, lists, sized, objects)


@pytest.mark.parametrize("model", REQUESTS, ids=lambda m: m.__name__)
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_the_validator_and_the_document_agree_on_every_body(model: type[Model], data: st.DataObject) -> None:
    # GIVEN a body built from the model's own field names (and a stranger), with values around its bounds
    names = [*model.__fields__, "surprise"]
    body = data.draw(st.dictionaries(st.sampled_from(names), _values_for(model), max_size=len(names)))
    # WHEN both the runtime validator and a JSON Schema validator reading the document judge it
    try:
        model.validate(body, ["body"])
        accepted = True
    except Invalid:
        accepted = False
    allowed = jsonschema.Draft202012Validator(_schema(model)).is_valid(body)
    # THEN they agree
    assert accepted == allowed, body


def test_every_problem_is_listed_with_where_what_and_why() -> None:
    # GIVEN a command body wrong in many ways at once
    body = {"action": 5, "params": [], "id": "a b", "timeoutMs": True, "ttlMs": 999, "ifOffline": "later", "extra": 1}
    # WHEN it is validated
    with pytest.raises(Invalid) as caught:
        CommandRequest.validate(body, ["body"])
    # THEN each problem names its field (loc), says why (msg) and has a stable type, in declaration order
    got = [(tuple(p["loc"]), p["type"]) for p in caught.value.problems]
    assert got == [
        (("body", "action"), "string_type"),
        (("body", "params"), "dict_type"),
        (("body", "id"), "string_pattern_mismatch"),
        (("body", "timeoutMs"), "int_type"),
        (("body", "ttlMs"), "greater_than_equal"),
        (("body", "ifOffline"), "literal_error"),
        (("body", "extra"), "extra_forbidden"),
    ]
    assert all(p["msg"] for p in caught.value.problems)


def test_a_valid_body_gets_its_defaults_and_keeps_its_values() -> None:
    # GIVEN the smallest valid command WHEN validated THEN the documented defaults fill the rest
    request = CommandRequest.validate({"action": "ping", "params": {"x": 1}})
    got = (request.action, request.params, request.id, request.timeoutMs, request.ifOffline)
    assert got == ("ping", {"x": 1}, None, 10_000, "queue")
    assert request.ttlMs == _schema(CommandRequest)["properties"]["ttlMs"]["default"]


def test_a_missing_required_field_and_a_non_object_body_are_reported() -> None:
    with pytest.raises(Invalid) as missing:
        DesiredRequest.validate({}, ["body"])
    assert missing.value.problems == [{"loc": ["body", "state"], "msg": "Field required", "type": "missing"}]
    with pytest.raises(Invalid) as not_object:
        DesiredRequest.validate([], ["body"])
    assert [p["type"] for p in not_object.value.problems] == ["model_attributes_type"]


@pytest.mark.parametrize("value", ["abc\n", "\nabc", "a\nb", "abc\r"])
def test_a_pattern_is_anchored_at_the_very_end_as_in_json_schema(value: str) -> None:
    # GIVEN a command id with a line break (Python's `$` alone would accept "abc\n")
    # WHEN it is validated THEN it is refused: it would end up in a Location header and a topic
    with pytest.raises(Invalid) as caught:
        CommandRequest.validate({"action": "ping", "id": value}, ["body"])
    assert [p["type"] for p in caught.value.problems] == ["string_pattern_mismatch"]
