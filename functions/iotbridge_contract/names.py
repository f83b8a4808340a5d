"""Validation of every name that ends up in an MQTT topic or a shadow key.

A name that passes here can never widen a topic: none of `/ + # $` nor NUL
is allowed, and lengths follow AWS IoT's limits.
"""

from __future__ import annotations

import re

# AWS: thing names are 1-128 chars of [a-zA-Z0-9:_-]; shadow names 1-64.
THING_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
SHADOW_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,64}")
# A command id doubles as the shadow clientToken (AWS: at most 64 bytes) and
# as a key in the commands shadow; ':' is left out so ids are URL-path safe.
COMMAND_ID_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
# Action and parameter names are shadow keys; keep them short identifiers.
ACTION_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")


class InvalidName(ValueError):
    """A thing, shadow, command or action name outside its allowed alphabet."""

    def __init__(self, kind: str, value: object, rule: str) -> None:
        self.kind = kind
        self.value = value
        super().__init__(f"invalid {kind} {value!r}: must be {rule}")


def _check(kind: str, value: object, pattern: re.Pattern[str], rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InvalidName(kind, value, rule)
    return value


def thing_name(value: object) -> str:
    return _check("thing name", value, THING_NAME_RE, "1-128 characters of a-z A-Z 0-9 : _ -")


# The things whose shadows hold iotbridge's bulk job records (iotbridge_jobs.record): never a device.
# The whole `iotbridge-jobs-*` family is kept from devices, as the device policy denies it (its
# only wildcard is `*`): a device of that name would read the job records' shadow topics.
JOBS_THING = "iotbridge-jobs"
_JOBS_THINGS_RE = re.compile(JOBS_THING + r"(-.*)?")


def is_jobs_thing(thing: str) -> bool:
    """Whether `thing` is (or is named like) one of the things holding bulk job records: `iotbridge-jobs[-*]`."""
    return _JOBS_THINGS_RE.fullmatch(thing) is not None


def device_name(value: object) -> str:
    """A thing name the API may address as a device: not one that holds job records."""
    thing = thing_name(value)
    if is_jobs_thing(thing):
        raise InvalidName("thing name", value, f"a device, not one of the things holding bulk job records ({JOBS_THING}[-*])")
    return thing


def shadow_name(value: object) -> str:
    return _check("shadow name", value, SHADOW_NAME_RE, "1-64 characters of a-z A-Z 0-9 : _ -")


def command_id(value: object) -> str:
    return _check("command id", value, COMMAND_ID_RE, "1-64 characters of a-z A-Z 0-9 _ -")


def action_name(value: object) -> str:
    return _check("action", value, ACTION_NAME_RE, "a lowercase identifier of at most 32 characters")
