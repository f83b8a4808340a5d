"""MQTT topic names of the AWS IoT Device Shadow service and lifecycle events.

Builders validate every name they are given, so a topic built here is the
topic intended and nothing wider.
"""

from __future__ import annotations

from typing import NamedTuple

from iotbridge_contract import names

SHADOW_PREFIX = "$aws/things/"
PRESENCE_PREFIX = "$aws/events/presence/"
# Operations a client publishes to, and the replies the service publishes.
OPERATIONS = ("update", "get", "delete")
REPLIES = ("accepted", "rejected", "delta", "documents")


def shadow_base(thing: str, shadow: str | None = None) -> str:
    """`$aws/things/{thing}/shadow` or `…/shadow/name/{shadow}`."""
    base = f"{SHADOW_PREFIX}{names.thing_name(thing)}/shadow"
    if shadow is not None:
        base += f"/name/{names.shadow_name(shadow)}"
    return base


def shadow_topic(thing: str, operation: str, reply: str | None = None, *, shadow: str | None = None) -> str:
    if operation not in OPERATIONS:
        raise ValueError(f"unknown shadow operation {operation!r}")
    topic = f"{shadow_base(thing, shadow)}/{operation}"
    if reply is not None:
        if reply not in REPLIES:
            raise ValueError(f"unknown shadow reply {reply!r}")
        topic += f"/{reply}"
    return topic


class ShadowTopic(NamedTuple):
    thing: str
    shadow: str | None  # None is the classic (unnamed) shadow
    operation: str
    reply: str | None


def parse_shadow_topic(topic: str) -> ShadowTopic | None:
    """Split a shadow topic into its parts; None if it is not a valid one."""
    if not topic.startswith(SHADOW_PREFIX):
        return None
    parts = topic[len(SHADOW_PREFIX):].split("/")
    if len(parts) < 3 or parts[1] != "shadow":
        return None
    thing, rest = parts[0], parts[2:]
    shadow = None
    if rest[0] == "name":
        if len(rest) < 3:
            return None
        shadow, rest = rest[1], rest[2:]
    if not rest or rest[0] not in OPERATIONS or len(rest) > 2:
        return None
    reply = rest[1] if len(rest) == 2 else None
    if reply is not None and reply not in REPLIES:
        return None
    try:
        names.thing_name(thing)
        if shadow is not None:
            names.shadow_name(shadow)
    except names.InvalidName:
        return None
    return ShadowTopic(thing, shadow, rest[0], reply)


def presence_topic(event: str, client_id: str) -> str:
    """`$aws/events/presence/{connected|disconnected}/{clientId}`."""
    if event not in ("connected", "disconnected"):
        raise ValueError(f"unknown presence event {event!r}")
    return f"{PRESENCE_PREFIX}{event}/{names.thing_name(client_id)}"
