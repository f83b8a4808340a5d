"""Declarative models, stdlib only: one class both validates a request and describes it in JSON Schema.

    class CommandRequest(Model, strict=True):
        action: str = field(min_length=1, max_length=32, description="An action the device advertises")
        timeoutMs: int = field(default=10_000, ge=0, le=MAX_WAIT_MS)

The annotation gives the type, `field` the constraints; `validate` checks a decoded JSON value
against both and `json_schema` writes the same constraints out for the OpenAPI document. Problems
are reported as Pydantic reports them (loc / msg / type), the shape the API has always answered.

Why not Pydantic: importing it (and Powertools' validation on top) cost more at cold start than
boto3 itself. Only the types the API uses are supported: str, int, float, bool, Any, None unions,
Literal, list[...], dict[str, ...] and nested models.
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Union, dataclass_transform, get_args, get_origin

Problem = dict[str, Any]  # {"loc": [...], "msg": str, "type": str}

_MISSING: Any = object()


class Invalid(Exception):
    """A value that does not match its model; `problems` lists every mismatch found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} validation problem(s)")
        self.problems = problems


class _Spec:
    """What `field(...)` returns at class level until the model's class is built."""

    __slots__ = ("default", "default_factory", "description", "ge", "le", "max_length", "min_length", "pattern")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None, description: str | None, ge: int | None,
                 le: int | None, min_length: int | None, max_length: int | None, pattern: str | None) -> None:  # fmt: skip
        self.default, self.default_factory, self.description = default, default_factory, description
        self.ge, self.le, self.min_length, self.max_length, self.pattern = ge, le, min_length, max_length, pattern


def field(
    *,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] | None = None,
    description: str | None = None,
    ge: int | None = None,
    le: int | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
) -> Any:
    """Constraints on a field: numbers (ge, le), strings and lists (min_length, max_length), strings (pattern)."""
    return _Spec(default=default, default_factory=default_factory, description=description, ge=ge, le=le,
                 min_length=min_length, max_length=max_length, pattern=pattern)  # fmt: skip


def _problem(loc: list[Any], msg: str, kind: str) -> Problem:
    return {"loc": loc, "msg": msg, "type": kind}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


# ---- types: each checks a value (appending problems) and describes itself in JSON Schema ----


class _Type:
    nullable = False

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        return value

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {}


class _Any(_Type):
    pass


class _Str(_Type):
    def __init__(self, spec: _Spec | None) -> None:
        self.min_length = spec.min_length if spec else None
        self.max_length = spec.max_length if spec else None
        self.pattern = spec.pattern if spec else None
        self._regex: re.Pattern[str] | None = None  # compiled on first use: cold start pays only for what it checks

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        if not isinstance(value, str):
            problems.append(_problem(loc, "Input should be a valid string", "string_type"))
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800") is no text a device could get
            problems.append(_problem(loc, "Input should be a valid string, unable to parse raw data as a unicode string",
                                     "string_unicode"))  # fmt: skip
            return value
        if self.min_length is not None and len(value) < self.min_length:
            problems.append(_problem(loc, f"String should have at least {_plural(self.min_length, 'character')}",
                                     "string_too_short"))  # fmt: skip
        elif self.max_length is not None and len(value) > self.max_length:
            problems.append(_problem(loc, f"String should have at most {_plural(self.max_length, 'character')}",
                                     "string_too_long"))  # fmt: skip
        elif self.pattern is not None and not self._matches(value):
            problems.append(_problem(loc, f"String should match pattern '{self.pattern}'", "string_pattern_mismatch"))
        return value

    def _matches(self, value: str) -> bool:
        if self._regex is None:
            pattern = self.pattern or ""
            # JSON Schema patterns are ECMA-262: `$` is the very end. Python's also matches before a
            # final newline, which would let "id\n" through (and into a Location header).
            if pattern.endswith("$") and not pattern.endswith("\\$"):
                pattern = pattern[:-1] + r"\Z"
            self._regex = re.compile(pattern)
        return self._regex.search(value) is not None

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "string"}
        for key, value in (("minLength", self.min_length), ("maxLength", self.max_length), ("pattern", self.pattern)):
            if value is not None:
                out[key] = value
        return out


# What a query string may hold for an integer: ASCII digits, `_` between them, a zero fraction.
_INT_TEXT = r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?"
_MAX_INT_TEXT = 40  # digits and all: past Python's 4,300-digit int() limit a query value would raise, not be refused


class _Int(_Type):
    json_type = "integer"

    def __init__(self, spec: _Spec | None) -> None:
        self.ge = spec.ge if spec else None
        self.le = spec.le if spec else None

    def _number(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        # JSON true is not 1 and 1.0 is not an integer: strict, as for any typed field of a body.
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if coerce and isinstance(value, str):  # query strings are text: "5" is 5 there
            text = value.strip()
            if re.fullmatch(_INT_TEXT, text, re.ASCII) and len(text) <= _MAX_INT_TEXT:
                return int(text.split(".")[0])
            problems.append(_problem(loc, "Input should be a valid integer, unable to parse string as an integer", "int_parsing"))
            return None
        problems.append(_problem(loc, "Input should be a valid integer", "int_type"))
        return None

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        number = self._number(value, loc, problems, coerce)
        if number is None:
            return value
        if self.ge is not None and number < self.ge:
            problems.append(_problem(loc, f"Input should be greater than or equal to {self.ge}", "greater_than_equal"))
        elif self.le is not None and number > self.le:
            problems.append(_problem(loc, f"Input should be less than or equal to {self.le}", "less_than_equal"))
        return number

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.json_type}
        if self.ge is not None:
            out["minimum"] = self.ge
        if self.le is not None:
            out["maximum"] = self.le
        return out


class _Float(_Int):
    json_type = "number"

    def _number(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return value
        problems.append(_problem(loc, "Input should be a valid number", "float_type"))
        return None


class _Bool(_Type):
    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        if not isinstance(value, bool):
            problems.append(_problem(loc, "Input should be a valid boolean", "bool_type"))
        return value

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"type": "boolean"}


class _Literal(_Type):
    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        if not any(value == v and type(value) is type(v) for v in self.values):
            shown = [repr(v) for v in self.values]
            expected = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"
            problems.append(_problem(loc, f"Input should be {expected}", "literal_error"))
        return value

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        kinds = {type(v) for v in self.values}
        out: dict[str, Any] = {"const": self.values[0]} if len(self.values) == 1 else {"enum": list(self.values)}
        if kinds == {str}:
            out["type"] = "string"
        return out


class _List(_Type):
    def __init__(self, item: _Type, spec: _Spec | None) -> None:
        self.item = item
        self.min_length = spec.min_length if spec else None
        self.max_length = spec.max_length if spec else None

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        if not isinstance(value, list):
            problems.append(_problem(loc, "Input should be a valid list", "list_type"))
            return value
        before = len(problems)
        checked = [self.item.check(v, [*loc, i], problems, coerce) for i, v in enumerate(value)]
        if len(problems) == before:
            if self.min_length is not None and len(value) < self.min_length:
                problems.append(_problem(loc, f"List should have at least {_plural(self.min_length, 'item')} after "
                                              f"validation, not {len(value)}", "too_short"))  # fmt: skip
            elif self.max_length is not None and len(value) > self.max_length:
                problems.append(_problem(loc, f"List should have at most {_plural(self.max_length, 'item')} after "
                                              f"validation, not {len(value)}", "too_long"))  # fmt: skip
        return checked

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"items": self.item.schema(defs), "type": "array"}
        if self.min_length is not None:
            out["minItems"] = self.min_length
        if self.max_length is not None:
            out["maxItems"] = self.max_length
        return out


class _Dict(_Type):
    _keys = _Str(None)

    def __init__(self, value: _Type) -> None:
        self.value = value

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        if not isinstance(value, dict):
            problems.append(_problem(loc, "Input should be a valid dictionary", "dict_type"))
            return value
        for key, item in value.items():
            self._keys.check(key, [*loc, key, "[key]"], problems, coerce)
            self.value.check(item, [*loc, key], problems, coerce)
        return value

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        inner = self.value.schema(defs)
        return {"additionalProperties": inner or True, "type": "object"}


class _Nested(_Type):
    def __init__(self, model: type[Model]) -> None:
        self.model = model

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        try:
            return self.model.validate(value, loc)
        except Invalid as exc:
            problems.extend(exc.problems)
            return value

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return self.model.schema_ref(defs)


class _Nullable(_Type):
    nullable = True

    def __init__(self, inner: _Type) -> None:
        self.inner = inner

    def check(self, value: Any, loc: list[Any], problems: list[Problem], coerce: bool) -> Any:
        return None if value is None else self.inner.check(value, loc, problems, coerce)

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        return {"anyOf": [self.inner.schema(defs) or {}, {"type": "null"}]}


_RESOLVED: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "Any": Any}


def _resolve(annotation: str, namespace: dict[str, Any]) -> Any:
    """The type an annotation string names (they are strings: `from __future__ import annotations`)."""
    known = _RESOLVED.get(annotation)
    return known if known is not None else eval(annotation, namespace)


def _compile(annotation: Any, spec: _Spec | None) -> _Type:
    """The checker for a resolved annotation; constraints apply to the non-null part."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1 or len(rest) == len(args):
            raise TypeError(f"only `X | None` unions are supported, not {annotation!r}")
        return _Nullable(_compile(rest[0], spec))
    if annotation is Any:
        return _Any()
    if annotation is str:
        return _Str(spec)
    if annotation is bool:
        return _Bool()
    if annotation is int:
        return _Int(spec)
    if annotation is float:
        return _Float(spec)
    if origin is Literal:
        return _Literal(args)
    if origin is list:
        return _List(_compile(args[0], None), spec)
    if origin is dict:
        if args[0] is not str:
            raise TypeError("JSON object keys are strings")
        return _Dict(_compile(args[1], None))
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return _Nested(annotation)
    raise TypeError(f"unsupported field type {annotation!r}")


class Field:
    __slots__ = ("default", "default_factory", "description", "name", "type")

    def __init__(self, name: str, kind: _Type, spec: _Spec | None, default: Any) -> None:
        self.name, self.type = name, kind
        self.description = spec.description if spec else None
        self.default_factory = spec.default_factory if spec else None
        self.default = spec.default if spec else default

    @property
    def required(self) -> bool:
        return self.default is _MISSING and self.default_factory is None

    def make_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default

    def schema(self, defs: dict[str, Any]) -> dict[str, Any]:
        out = {"title": self.name.replace("_", " ").title(), **self.type.schema(defs)}
        if self.description:
            out["description"] = self.description
        if self.default is not _MISSING and self.default is not None:
            out["default"] = self.default
        return out


@dataclass_transform(kw_only_default=True, field_specifiers=(field,))
class Model:
    """A JSON object with typed fields. Subclass with `strict=True` for what clients send: unknown
    fields are refused (a typo must not pass silently) and no value is converted."""

    __fields__: ClassVar[dict[str, Field]] = {}
    __strict__: ClassVar[bool] = False
    __coerce__: ClassVar[bool] = False  # query strings: "5" is an integer there

    def __init_subclass__(cls, *, strict: bool | None = None, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if strict is not None:
            cls.__strict__ = strict
        namespace = vars(sys.modules[cls.__module__])
        fields = dict(cls.__fields__)  # inherited ones first, in their order
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063 (inspect costs an import for the same dict)
        for name, annotation in own.items():
            if annotation.startswith("ClassVar"):
                continue
            declared = cls.__dict__.get(name, _MISSING)
            spec = declared if isinstance(declared, _Spec) else None
            fields[name] = Field(name, _compile(_resolve(annotation, namespace), spec), spec, declared)
            if spec is not None:
                delattr(cls, name)  # instances hold the values; a missing one must not read as its spec
        cls.__fields__ = fields

    def __init__(self, **values: Any) -> None:
        fields = self.__fields__
        unknown = values.keys() - fields.keys()
        if unknown and self.__strict__:  # other models take what they know of a dict, as answers are built from records
            raise TypeError(f"{type(self).__name__} has no field(s) {', '.join(sorted(unknown))}")
        for name, f in fields.items():
            if name in values:
                setattr(self, name, values[name])
            elif f.required:
                raise TypeError(f"{type(self).__name__} needs {name}")
            else:
                setattr(self, name, f.make_default())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self.__fields__)})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.dump() == other.dump()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def validate(cls, data: Any, loc: list[Any] | None = None) -> Any:
        """An instance from a decoded JSON object, or Invalid listing every problem (declaration order, then extras)."""
        loc = loc or []
        if not isinstance(data, dict):
            raise Invalid([_problem(loc, "Input should be a valid dictionary or object to extract fields from",
                                    "model_attributes_type")])  # fmt: skip
        problems: list[Problem] = []
        values: dict[str, Any] = {}
        for name, f in cls.__fields__.items():
            if name in data:
                values[name] = f.type.check(data[name], [*loc, name], problems, cls.__coerce__)
            elif f.required:
                problems.append(_problem([*loc, name], "Field required", "missing"))
        if cls.__strict__:
            problems.extend(_problem([*loc, name], "Extra inputs are not permitted", "extra_forbidden")
                            for name in data if name not in cls.__fields__)  # fmt: skip
        if problems:
            raise Invalid(problems)
        return cls(**values)

    def dump(self) -> dict[str, Any]:
        """The JSON object: every field, in declaration order, nested models included."""
        return {name: _plain(getattr(self, name)) for name in self.__fields__}

    @classmethod
    def json_schema(cls, defs: dict[str, Any]) -> dict[str, Any]:
        """This model's JSON Schema; models it refers to are added to `defs` (referenced as components)."""
        out: dict[str, Any] = {"title": cls.__name__, "type": "object",
                               "properties": {name: f.schema(defs) for name, f in cls.__fields__.items()}}  # fmt: skip
        required = [name for name, f in cls.__fields__.items() if f.required]
        if required:
            out["required"] = required
        if cls.__strict__:
            out["additionalProperties"] = False
        doc = cls.__dict__.get("__doc__")
        if doc:
            out["description"] = " ".join(doc.split())
        return out

    @classmethod
    def schema_ref(cls, defs: dict[str, Any]) -> dict[str, Any]:
        if cls.__name__ not in defs:
            defs[cls.__name__] = {}  # placeholder first: a model may refer to itself
            defs[cls.__name__] = cls.json_schema(defs)
        return {"$ref": f"#/components/schemas/{cls.__name__}"}


def _plain(value: Any) -> Any:
    if isinstance(value, Model):
        return value.dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
