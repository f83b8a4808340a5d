"""The small language devices use to advertise their actions' parameters.

A device reports `actions: {name: {param: spec}}` in its classic shadow. A spec
is one short string, so the advertisement stays shallow and small:

    bool | int[:MIN..MAX] | num[:MIN..MAX] | str[:MAXLEN] | enum:a|b|c
    with a trailing `?` for an optional parameter.

The API checks params against it before anything is sent, and the agent checks
again before it runs a handler (the device is the authority).
"""

from __future__ import annotations

from typing import Any


class ParamError(ValueError):
    """Params that do not match the advertised spec; nothing is run."""


def _bounds(arg: str, kind: str) -> tuple[float | None, float | None]:
    lo, _, hi = arg.partition("..")
    conv = int if kind == "int" else float
    return (conv(lo) if lo else None, conv(hi) if hi else None)


def check_value(name: str, spec: str, value: Any) -> None:
    if not isinstance(spec, str):
        raise ParamError(f"{name}: the device advertises a spec that is not a string: {spec!r}")
    try:
        _check_value(name, spec, value)
    except ParamError:
        raise
    except ValueError:  # a bound or length that is no number: the advertisement is wrong, not the caller
        raise ParamError(f"{name}: the device advertises a malformed spec {spec!r}") from None


def _check_value(name: str, spec: str, value: Any) -> None:
    kind, _, arg = spec.rstrip("?").partition(":")
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParamError(f"{name}: expected true or false")
    elif kind in ("int", "num"):
        ok = isinstance(value, int) if kind == "int" else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ParamError(f"{name}: expected {'an integer' if kind == 'int' else 'a number'}")
        lo, hi = _bounds(arg, kind) if arg else (None, None)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ParamError(f"{name}: must be within {arg}")
    elif kind == "str":
        if not isinstance(value, str):
            raise ParamError(f"{name}: expected a string")
        if arg and len(value) > int(arg):
            raise ParamError(f"{name}: at most {arg} characters")
    elif kind == "enum":
        choices = arg.split("|")
        if value not in choices:
            raise ParamError(f"{name}: must be one of {', '.join(choices)}")
    else:
        raise ParamError(f"{name}: the device advertises an unknown spec {spec!r}")


def check_params(specs: dict[str, str], params: dict[str, Any]) -> None:
    """Raise ParamError unless params match specs exactly (no unknown names)."""
    if not isinstance(specs, dict):
        raise ParamError(f"the device advertises no parameter list for this action, but {specs!r}")
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise ParamError(f"unknown parameter(s): {', '.join(unknown)}; known: {', '.join(sorted(specs)) or 'none'}")
    for name, spec in specs.items():
        if name not in params:
            if not isinstance(spec, str):
                raise ParamError(f"{name}: the device advertises an unknown spec {spec!r}")
            if not spec.endswith("?"):
                raise ParamError(f"{name}: required")
            continue
        check_value(name, spec, params[name])
