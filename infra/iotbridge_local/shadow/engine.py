"""AWS IoT Device Shadow semantics as pure functions: no I/O, no clock, no locks.

Sources (AWS IoT developer guide): "Device Shadow service documents",
"Device Shadow MQTT topics", "Interacting with shadows", "Device Shadow error
messages" and the AWS IoT quotas. Choices where the docs are silent are
marked "(choice)" and kept in one place here.

- A request state document `{"state": {"desired"|"reported": {...}|null},
  "clientToken"?, "version"?}` is merged key by key; `null` removes a key,
  `"desired": null` removes the section, `"state": null` clears both.
- Arrays are values: an update replaces the whole array; arrays may not hold null.
- `delta` holds the desired keys whose value differs from reported, nested,
  with the desired metadata of those keys.
- `version` grows by one on every accepted update; a request `version` that is
  not the current one is a 409. A deleted shadow keeps its version: the next
  update continues from it (AWS: "deleting a shadow does not reset its version
  number to 0"; AWS forgets it after 48 h, we never do, so versions only grow).
- Limits: desired + reported as compact JSON <= 8 KB (metadata not counted);
  nesting inside a section <= 6 levels, the section object itself being level 1
  (AWS's example "desired" -> one -> two -> three -> four -> five: {} is the
  deepest accepted document); clientToken <= 64 bytes.
- Timestamps are epoch seconds (int), as AWS sends them.
- (choice) `update/documents` for the update that creates a shadow has
  `"previous": null`: the docs show no example of a first update.
- (choice) Arrays holding null are rejected as "State contains an invalid node"
  (the docs say they are rejected, not with which message).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from iotbridge_contract.commands import MAX_STATE_LEVELS, key_levels

SECTIONS = ("desired", "reported")
MAX_STATE_BYTES = 8192
MAX_CLIENT_TOKEN_BYTES = 64
MAX_PAYLOAD_BYTES = 128 * 1024  # AWS IoT message size limit

Json = Any
Tree = dict[str, Any]


class ShadowError(Exception):
    """A rejected request: `code` is the HTTP status AWS uses, `message` its text."""

    def __init__(self, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.client_token = client_token

    def document(self, now: int) -> dict[str, Any]:
        """The error response document published on `/rejected`."""
        doc: dict[str, Any] = {"code": self.code, "message": self.message, "timestamp": now}
        if self.client_token is not None:
            doc["clientToken"] = self.client_token
        return doc


def invalid_json() -> ShadowError:
    return ShadowError(400, "Invalid JSON")


def no_shadow(thing: str, shadow: str | None, client_token: str | None = None) -> ShadowError:
    name = shadow if shadow is not None else thing
    return ShadowError(404, f"No shadow exists with name: '{name}'", client_token)


_EXISTS_SUFFIX = ',"exists":true}'


@dataclass
class Shadow:
    """One stored shadow. `exists` is False after a delete (the version is kept).

    Not changed once built: its JSON is encoded once and kept (a commands shadow
    with its history is ~10 KB, and encoding was most of an update's CPU).
    """

    state: dict[str, Tree] = field(default_factory=dict)  # "desired"/"reported" -> tree, absent when empty
    metadata: dict[str, Tree] = field(default_factory=dict)
    version: int = 0
    exists: bool = False
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_json(self) -> str:
        if self._json is None:
            self._json = json.dumps(
                {"state": self.state, "metadata": self.metadata, "version": self.version, "exists": self.exists},
                separators=(",", ":"),
            )
        return self._json

    def public_json(self) -> str:
        """`{"state", "metadata", "version"}` as `update/documents` shows a shadow, from the stored JSON."""
        text = self.to_json()
        if text.endswith(_EXISTS_SUFFIX):
            return text[: -len(_EXISTS_SUFFIX)] + "}"
        return compact({"state": self.state, "metadata": self.metadata, "version": self.version})

    @classmethod
    def from_json(cls, text: str) -> Shadow:
        raw = json.loads(text)
        shadow = cls(state=raw["state"], metadata=raw["metadata"], version=raw["version"], exists=raw["exists"])
        shadow._json = text
        return shadow


@dataclass(frozen=True)
class UpdateRequest:
    state: dict[str, Tree | None] | None  # None: `"state": null`, clears both sections
    client_token: str | None
    version: int | None


@dataclass(frozen=True)
class UpdateResult:
    shadow: Shadow  # the new stored shadow
    accepted: dict[str, Any]  # `/update/accepted` (and the HTTP body)
    documents_json: str  # `/update/documents`, encoded: built from the shadows' stored JSON
    delta: dict[str, Any] | None  # `/update/delta`, None when nothing is published there

    @property
    def documents(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.documents_json)
        return parsed


# ---------------------------------------------------------------- JSON helpers


def compact(value: Json) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_equal(a: Json, b: Json) -> bool:
    """JSON equality: unlike Python's ==, `true` is not `1`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _has_null_in_array(value: Json, in_array: bool = False) -> bool:
    if value is None:
        return in_array
    if isinstance(value, dict):
        return any(_has_null_in_array(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_null_in_array(v, True) for v in value)
    return False


def _reject_constant(name: str) -> None:
    raise ValueError(name)  # NaN / Infinity are not JSON


def _finite(text: str) -> float:
    number = float(text)
    if math.isinf(number):  # 1e400: valid JSON text, but stored it would be written back as Infinity
        raise ValueError(text)
    return number


def parse_json(payload: bytes | str) -> Json:
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ShadowError(415, "Unsupported documented encoding; supported encoding is UTF-8") from None
    try:
        document = json.loads(payload, parse_constant=_reject_constant, parse_float=_finite)
        if "\\u" in payload:  # an escaped lone surrogate (\ud800) parses, but no UTF-8 document can hold it
            json.dumps(document, ensure_ascii=False).encode("utf-8")
        return document
    except (ValueError, RecursionError, UnicodeEncodeError):
        raise invalid_json() from None


# ---------------------------------------------------------------- request parsing


def _client_token(doc: dict[str, Any]) -> str | None:
    token = doc.get("clientToken")
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode("utf-8")) > MAX_CLIENT_TOKEN_BYTES:
        raise ShadowError(400, "Invalid clientToken")
    return token


def parse_update(payload: bytes | str) -> UpdateRequest:
    """Validate a request state document; raise ShadowError with AWS's code and message."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ShadowError(413, "The payload exceeds the maximum size allowed")
    doc = parse_json(payload)
    if not isinstance(doc, dict):
        raise invalid_json()
    token = _client_token(doc)
    try:
        if "state" not in doc:
            raise ShadowError(400, "Missing required node: state")
        version = doc.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
            raise ShadowError(400, "Invalid version")
        state = doc["state"]
        if state is None:
            return UpdateRequest(None, token, version)
        if not isinstance(state, dict):
            raise ShadowError(400, "State node must be an object")
        for key, section in state.items():
            if key not in SECTIONS:
                raise ShadowError(400, f"State contains an invalid node: '{key}'")
            if section is not None and not isinstance(section, dict):
                raise ShadowError(400, f"{key.capitalize()} node must be an object")
            if key_levels(section) > MAX_STATE_LEVELS:  # AWS's message counts the section too
                raise ShadowError(400, f"JSON contains too many levels of nesting; maximum is {MAX_STATE_LEVELS + 1}")
            if _has_null_in_array(section):
                raise ShadowError(400, f"State contains an invalid node: '{key}'")  # (choice) AWS: arrays can't hold null
        return UpdateRequest(state, token, version)
    except ShadowError as err:
        err.client_token = token
        raise


def parse_token_only(payload: bytes | str) -> str | None:
    """The clientToken of a `get` or `delete`, if its payload is a JSON object with one.

    AWS reads nothing else of these ("The content of the message is ignored"): a payload
    that is not JSON, or not an object, is a request without a token, not an error.
    """
    if not payload or not payload.strip():
        return None
    try:
        doc = parse_json(payload)
    except ShadowError:
        return None
    return _client_token(doc) if isinstance(doc, dict) else None


# ---------------------------------------------------------------- tree operations


def fresh_metadata(value: Json, now: int) -> Json:
    """Metadata for a value written now: one `{"timestamp"}` per leaf, arrays per element."""
    if isinstance(value, dict):
        return {k: fresh_metadata(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [fresh_metadata(v, now) for v in value]
    return {"timestamp": now}


def merge(state: Tree, metadata: Tree, update: Tree, now: int) -> None:
    """Merge `update` into `state` in place, keeping `metadata` in step."""
    for key, value in update.items():
        if value is None:
            state.pop(key, None)
            metadata.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(state.get(key), dict):
                state[key] = {}
                metadata[key] = {}
            elif not isinstance(metadata.get(key), dict):
                metadata[key] = {}
            merge(state[key], metadata[key], value, now)
        else:
            state[key] = value
            metadata[key] = fresh_metadata(value, now)


def delta(desired: Tree, reported: Tree) -> Tree:
    """Desired keys whose value differs from reported (nested objects compared key by key)."""
    out: Tree = {}
    for key, want in desired.items():
        if key not in reported:
            out[key] = want
        elif isinstance(want, dict) and isinstance(reported[key], dict):
            sub = delta(want, reported[key])
            if sub:
                out[key] = sub
        elif not json_equal(want, reported[key]):
            out[key] = want
    return out


def project(metadata: Json, shape: Json) -> Json:
    """The part of `metadata` at the paths of `shape` (the delta's metadata)."""
    if isinstance(shape, dict) and isinstance(metadata, dict):
        return {k: project(metadata.get(k, {}), v) for k, v in shape.items()}
    return metadata


def state_bytes(state: dict[str, Tree]) -> int:
    return sum(len(compact(state[s]).encode("utf-8")) for s in SECTIONS if s in state)


# ---------------------------------------------------------------- operations


def _copy(tree: Json) -> Json:
    return json.loads(json.dumps(tree))


def current_delta(shadow: Shadow) -> Tree:
    return delta(shadow.state.get("desired", {}), shadow.state.get("reported", {}))


def _with_token(doc: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token is not None:
        doc["clientToken"] = token
    return doc


def apply_update(shadow: Shadow | None, request: UpdateRequest, now: int) -> UpdateResult:
    """Apply one accepted-or-rejected update; raise ShadowError when rejected."""
    old = shadow if shadow is not None else Shadow()
    if request.version is not None and request.version != old.version:
        raise ShadowError(409, "Version conflict", request.client_token)

    # The change goes into a fresh parse of the stored JSON: `old` stays as it was, for `previous`.
    working = json.loads(old.to_json()) if old.exists else {"state": {}, "metadata": {}}
    state: dict[str, Tree] = working["state"]
    metadata: dict[str, Tree] = working["metadata"]
    if request.state is None:
        state, metadata = {}, {}
    else:
        for section, update in request.state.items():
            if update is None:
                state.pop(section, None)
                metadata.pop(section, None)
                continue
            tree, meta = state.setdefault(section, {}), metadata.setdefault(section, {})
            merge(tree, meta, update, now)
    for section in SECTIONS:  # an empty section is not shown (AWS: "present only if")
        if not state.get(section):
            state.pop(section, None)
            metadata.pop(section, None)
    if state_bytes(state) > MAX_STATE_BYTES:
        raise ShadowError(413, "The payload exceeds the maximum size allowed", request.client_token)

    new = Shadow(state=state, metadata=metadata, version=old.version + 1, exists=True)

    echo: Tree = {} if request.state is None else _copy(request.state)
    accepted = _with_token(
        {
            "state": echo,
            "metadata": {k: fresh_metadata(v, now) for k, v in echo.items()},
            "version": new.version,
            "timestamp": now,
        },
        request.client_token,
    )
    # Spliced from the two shadows' JSON (the new one is stored as it is encoded here): the
    # documents message is the largest one, and encoding it again cost more than the update.
    token = "" if request.client_token is None else f',"clientToken":{json.dumps(request.client_token)}'
    previous = old.public_json() if old.exists else "null"
    documents = f'{{"previous":{previous},"current":{new.public_json()},"timestamp":{now}{token}}}'
    # AWS publishes /update/delta "when it accepts a shadow update and the resulting shadow
    # contains different values for desired and reported states" (device-shadow-data-flow):
    # after a reported-only update too. It holds the whole delta, not just this change.
    return UpdateResult(new, accepted, documents, delta_document(new, now, request.client_token))


def delta_document(shadow: Shadow, now: int, client_token: str | None = None) -> dict[str, Any] | None:
    """The `/update/delta` message for the shadow as it is; None when desired and reported agree."""
    d = current_delta(shadow) if shadow.exists else {}
    if not d:
        return None
    doc = {"version": shadow.version, "timestamp": now, "state": d, "metadata": project(shadow.metadata.get("desired", {}), d)}
    return _with_token(doc, client_token)


def get_document(shadow: Shadow | None, thing: str, name: str | None, client_token: str | None, now: int) -> dict[str, Any]:
    """The `/get/accepted` document (and the GetThingShadow body); 404 when absent."""
    if shadow is None or not shadow.exists:
        raise no_shadow(thing, name, client_token)
    state = dict(shadow.state)  # one level: only "delta" is added, the sections are shared, not changed
    d = current_delta(shadow)
    if d:
        state["delta"] = d
    return _with_token(
        {"state": state, "metadata": shadow.metadata, "version": shadow.version, "timestamp": now},
        client_token,
    )


def delete_document(
    shadow: Shadow | None, thing: str, name: str | None, client_token: str | None, now: int
) -> tuple[Shadow, dict[str, Any]]:
    """The tombstone to store and the `/delete/accepted` document; 404 when absent."""
    if shadow is None or not shadow.exists:
        raise no_shadow(thing, name, client_token)
    tombstone = Shadow(version=shadow.version, exists=False)
    return tombstone, _with_token({"version": shadow.version, "timestamp": now}, client_token)
