"""The device IoT policy: a certificate can act only as the thing it is attached to.

AWS IoT evaluates policy resources as ARNs where `*` and `?` are wildcards and
MQTT's `+` and `#` are literal characters; Subscribe is checked against the
topic filter (`topicfilter/...`), Publish/Receive against the topic (`topic/...`).
The small evaluator below follows those rules to check what a device may do.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from iotbridge_contract import commands, topics
from tests.template import cfn

THING_VAR = "${iot:Connection.Thing.ThingName}"
ARN_PREFIX = "arn:aws:iot:eu-west-1:123456789012:"
RESOURCE_TYPE = {
    "iot:Connect": "client",
    "iot:Publish": "topic",
    "iot:RetainPublish": "topic",
    "iot:Receive": "topic",
    "iot:Subscribe": "topicfilter",
}


def _statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    doc = template["Resources"]["DevicePolicy"]["Properties"]["PolicyDocument"]
    return list(cfn.as_list(doc["Statement"]))


def _matches(template: dict[str, Any], effect: str, thing: str, action: str, target: str) -> bool:
    for st in _statements(template):
        if st["Effect"] != effect or action not in cfn.as_list(st["Action"]):
            continue
        for resource in cfn.as_list(st["Resource"]):
            pattern = cfn.render(resource).replace(THING_VAR, thing)
            regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
            if re.fullmatch(regex, target):
                return True
    return False


def _allowed(template: dict[str, Any], thing: str, action: str, name: str) -> bool:
    """May the device connected as `thing` do `action` on `name` (client id, topic or filter)? An explicit Deny wins."""
    target = f"{ARN_PREFIX}{RESOURCE_TYPE[action]}/{name}"
    return _matches(template, "Allow", thing, action, target) and not _matches(template, "Deny", thing, action, target)


def test_every_resource_is_scoped_to_the_connected_thing(template: dict[str, Any]) -> None:
    # GIVEN each resource the device policy allows (a Deny only narrows what is allowed)
    for st in _statements(template):
        if st["Effect"] == "Deny":
            continue
        assert st["Effect"] == "Allow"
        for action in cfn.as_list(st["Action"]):
            for resource in cfn.as_list(st["Resource"]):
                arn = cfn.render(resource)
                # THEN its type is the one AWS checks for the action (topicfilter for Subscribe)
                assert arn.startswith(f"{ARN_PREFIX}{RESOURCE_TYPE[action]}/"), (action, arn)
                # AND the thing-name variable is a whole path segment with no wildcard before it
                head, sep, tail = arn.partition(THING_VAR)
                assert sep, f"{arn} is not keyed on {THING_VAR}"
                assert "*" not in head and "?" not in head, arn
                assert head.endswith("/") and (tail == "" or tail.startswith("/")), arn


def test_connect_requires_the_exact_thing_name_as_client_id(template: dict[str, Any]) -> None:
    # GIVEN a certificate attached to thing pi-01
    # WHEN it connects
    # THEN only the client id pi-01 is accepted, not another thing's nor a longer one
    assert _allowed(template, "pi-01", "iot:Connect", "pi-01")
    assert not _allowed(template, "pi-01", "iot:Connect", "pi-02")
    assert not _allowed(template, "pi-01", "iot:Connect", "pi-01-shadow")
    # AND only while the certificate is attached to that thing
    connect = next(st for st in _statements(template) if "iot:Connect" in cfn.as_list(st["Action"]))
    assert connect["Condition"] == {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}


@pytest.mark.parametrize("thing", ["iotbridge-jobs", "iotbridge-jobs-0", "iotbridge-jobs-17"])
def test_no_certificate_connects_as_a_thing_holding_the_bulk_job_records(template: dict[str, Any], thing: str) -> None:
    # GIVEN a certificate attached to a thing named like those whose shadows hold the job records
    # WHEN it connects as that thing
    # THEN the policy refuses: it would receive every job record on those shadows' topics
    assert not _allowed(template, thing, "iot:Connect", thing)
    # AND a device whose name only starts alike still connects
    assert _allowed(template, "iotbridge-jobsite", "iot:Connect", "iotbridge-jobsite")


@pytest.mark.parametrize("shadow", [None, commands.COMMANDS_SHADOW])
def test_a_device_speaks_the_shadow_protocol_for_itself(template: dict[str, Any], shadow: str | None) -> None:
    # GIVEN device pi-01 and one of the shadows it works with (classic, commands)
    for operation in ("update", "get"):
        # WHEN it sends a shadow request
        # THEN it may publish it
        assert _allowed(template, "pi-01", "iot:Publish", topics.shadow_topic("pi-01", operation, shadow=shadow))
        for reply in ("accepted", "rejected"):
            reply_topic = topics.shadow_topic("pi-01", operation, reply, shadow=shadow)
            # AND subscribe to and receive the service's replies
            assert _allowed(template, "pi-01", "iot:Subscribe", reply_topic)
            assert _allowed(template, "pi-01", "iot:Receive", reply_topic)
    for reply in ("delta", "documents"):
        reply_topic = topics.shadow_topic("pi-01", "update", reply, shadow=shadow)
        assert _allowed(template, "pi-01", "iot:Subscribe", reply_topic)
        assert _allowed(template, "pi-01", "iot:Receive", reply_topic)
    # AND a wildcard subscription over its own shadow topics works
    assert _allowed(template, "pi-01", "iot:Subscribe", topics.shadow_base("pi-01", shadow) + "/#")


def test_a_device_cannot_reach_another_things_topics(template: dict[str, Any]) -> None:
    # GIVEN device pi-01 and a neighbour pi-012 whose name starts with the same characters
    for other in ("pi-02", "pi-012"):
        for action in ("iot:Publish", "iot:Receive"):
            # THEN it can neither publish nor receive on the neighbour's topics
            assert not _allowed(template, "pi-01", action, topics.shadow_topic(other, "update"))
            assert not _allowed(template, "pi-01", action, topics.shadow_topic(other, "update", "delta", shadow="commands"))
            assert not _allowed(template, "pi-01", action, f"iotbridge/things/{other}/telemetry")
        assert not _allowed(template, "pi-01", "iot:Subscribe", topics.shadow_topic(other, "update", "delta"))
    # AND it cannot subscribe to every thing's topics with MQTT wildcards
    broad_filters = ("#", "$aws/things/#", "$aws/things/+/shadow/update/delta", "iotbridge/things/+/#")
    for broad in (*broad_filters, topics.PRESENCE_PREFIX + "#"):
        assert not _allowed(template, "pi-01", "iot:Subscribe", broad), broad


def test_a_device_cannot_write_its_presence_shadow(template: dict[str, Any]) -> None:
    # GIVEN device pi-01, whose presence the lifecycle rule records in its presence shadow
    # WHEN it tries to write or read that shadow itself (e.g. connected: true with a far-future
    # timestamp, which would make every later lifecycle event look older)
    # THEN the policy refuses: only the rule writes it
    for operation in ("update", "get", "delete"):
        topic = topics.shadow_topic("pi-01", operation, shadow=commands.PRESENCE_SHADOW)
        assert not _allowed(template, "pi-01", "iot:Publish", topic), topic
    # AND the same holds for any other named shadow nobody listed for devices
    assert not _allowed(template, "pi-01", "iot:Publish", topics.shadow_topic("pi-01", "update", shadow="anything"))


def test_a_device_cannot_forge_the_shadow_services_replies(template: dict[str, Any]) -> None:
    # GIVEN device pi-01
    # WHEN it tries to publish what only the shadow service publishes, or to delete its shadows
    # THEN the policy refuses
    for topic in (
        topics.shadow_topic("pi-01", "update", "accepted"),
        topics.shadow_topic("pi-01", "update", "delta", shadow="commands"),
        topics.shadow_topic("pi-01", "delete"),
        topics.presence_topic("connected", "pi-01"),
    ):
        assert not _allowed(template, "pi-01", "iot:Publish", topic), topic


def test_a_device_owns_its_application_topics_including_a_retained_last_will(template: dict[str, Any]) -> None:
    # GIVEN device pi-01 and its application topic tree iotbridge/things/pi-01/
    topic = "iotbridge/things/pi-01/status"
    # THEN it may publish (also retained, as a last will may be), subscribe and receive there
    for action in ("iot:Publish", "iot:RetainPublish", "iot:Receive", "iot:Subscribe"):
        assert _allowed(template, "pi-01", action, topic), action
    # AND retained publishing stays off the shadow topics
    assert not _allowed(template, "pi-01", "iot:RetainPublish", topics.shadow_topic("pi-01", "update"))


def test_the_pi_agents_retained_status_and_last_will_are_allowed(template: dict[str, Any]) -> None:
    # GIVEN the topic the Pi agent publishes its retained status and last will on
    from iotbridge_pi.session import status_topic

    topic = status_topic("pi-01")
    # THEN AWS IoT lets it publish there with RETAIN (a refused will topic refuses the CONNECT)
    assert _allowed(template, "pi-01", "iot:Publish", topic)
    assert _allowed(template, "pi-01", "iot:RetainPublish", topic)
    # AND not on a neighbour's status
    assert not _allowed(template, "pi-01", "iot:Publish", status_topic("pi-02"))
