"""Least privilege: no `*` action, and no `*` resource where AWS allows a narrower one.

Sources of truth for "only `*` is possible": the Service Authorization Reference
(https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html,
list_awsx-ray.html), whose "Resource types" column is empty for these actions, and
AWS IoT's own table of action resources. The same IoT table gives a named shadow's
ARN as thing/{thing}/{shadow}, which the presence role relies on.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from iotbridge_contract import commands
from tests.template import cfn

# Actions that accept no resource type, so a statement granting them must say "*".
STAR_ONLY_ACTIONS = {
    # list_awsiot.html: ListThings has no resource type (it lists the whole registry).
    "iot:ListThings",
    # list_awsiot.html: DescribeEndpoint has no resource type.
    "iot:DescribeEndpoint",
    # https://docs.aws.amazon.com/iot/latest/developerguide/iot-action-resources.html lists
    # ListNamedShadowsForThing with resource "*" only (unused today; here for when it is).
    "iot:ListNamedShadowsForThing",
    # list_awsx-ray.html: PutTraceSegments / PutTelemetryRecords have no resource type.
    "xray:PutTraceSegments",
    "xray:PutTelemetryRecords",
}

IDENTITY_POLICY_TYPES = ("AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
RESOURCE_POLICY_TYPES = ("AWS::S3::BucketPolicy",)
FUNCTION_TYPE = "AWS::Serverless::Function"


def _statements(template: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every statement of every IAM policy in the template, with its owner's logical id."""
    found: list[tuple[str, dict[str, Any]]] = []
    for name, props in cfn.resources_of_type(template, *IDENTITY_POLICY_TYPES):
        docs = [p["PolicyDocument"] for p in props.get("Policies", [])]
        if "PolicyDocument" in props:
            docs.append(props["PolicyDocument"])
        found += [(name, st) for doc in docs for st in cfn.as_list(doc["Statement"])]
    for name, props in cfn.resources_of_type(template, *RESOURCE_POLICY_TYPES):
        found += [(name, st) for st in cfn.as_list(props["PolicyDocument"]["Statement"])]
    for name, props in cfn.resources_of_type(template, FUNCTION_TYPE):
        for policy in cfn.as_list(props.get("Policies", [])):
            if isinstance(policy, dict) and "Statement" in policy:
                found += [(name, st) for st in cfn.as_list(policy["Statement"])]
    return found


def violations(template: dict[str, Any]) -> list[str]:
    """What is broader than AWS requires, one line per problem."""
    problems: list[str] = []
    for owner, st in _statements(template):
        if st.get("Effect") != "Allow":
            continue  # a broad Deny only narrows
        for key in ("NotAction", "NotResource"):
            if key in st:
                problems.append(f"{owner}: Allow with {key} grants everything else")
        actions = [cfn.render(a) for a in cfn.as_list(st.get("Action", []))]
        resources = [cfn.render(r) for r in cfn.as_list(st.get("Resource", []))]
        for action in actions:
            if "*" in action or "?" in action:
                problems.append(f"{owner}: wildcard action {action}")
        if "*" in resources:
            for action in actions:
                if action not in STAR_ONLY_ACTIONS:
                    problems.append(f"{owner}: {action} on resource * (it supports a narrower resource type)")
        for resource in resources:
            # arn:partition:service:region:account:*  = every resource of the service
            if re.fullmatch(r"arn:[^:]+:[^:]+:[^:]*:[^:]*:\*", resource):
                problems.append(f"{owner}: service-wide resource {resource}")
    return problems


def test_template_grants_nothing_broader_than_aws_allows(template: dict[str, Any]) -> None:
    # GIVEN every IAM statement of the template
    # WHEN each is checked against the star-only allow-list
    # THEN none is broader than needed
    assert violations(template) == []


@pytest.mark.parametrize(
    "statement",
    [
        {"Effect": "Allow", "Action": "iot:*", "Resource": "arn:aws:iot:eu-west-1:1:thing/*"},
        {"Effect": "Allow", "Action": "iot:UpdateThingShadow", "Resource": "*"},
        {"Effect": "Allow", "Action": ["iot:ListThings", "iot:DescribeThing"], "Resource": "*"},
        {"Effect": "Allow", "Action": "iot:Publish", "Resource": {"Fn::Sub": "arn:${AWS::Partition}:iot:${AWS::Region}::*"}},
        {"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"},
    ],
    ids=["iot-star", "shadow-on-star", "describe-rides-along-with-list", "service-wide-arn", "not-action"],
)
def test_checker_catches_broad_grants(template: dict[str, Any], statement: dict[str, Any]) -> None:
    # GIVEN the real template with one broad statement added to the API function's role
    broken = {**template, "Resources": dict(template["Resources"])}
    role = broken["Resources"]["ApiFunctionRole"]
    policies = [*role["Properties"]["Policies"], {"PolicyName": "broad", "PolicyDocument": {"Statement": [statement]}}]
    broken["Resources"]["ApiFunctionRole"] = {**role, "Properties": {**role["Properties"], "Policies": policies}}
    # WHEN it is checked
    # THEN the broad statement is reported
    assert violations(broken)


def test_functions_use_their_own_roles_without_managed_policies(template: dict[str, Any]) -> None:
    # GIVEN the functions
    # WHEN SAM would create a role itself, it attaches AWSLambdaBasicExecutionRole (logs on "*")
    # THEN each function names a role of this template, and no role attaches a managed policy
    for name, props in cfn.resources_of_type(template, FUNCTION_TYPE):
        assert "Role" in props, f"{name} would get SAM's default role"
        assert props["Role"] == {"Fn::GetAtt": [f"{name}Role", "Arn"]}
    for name, props in cfn.resources_of_type(template, "AWS::IAM::Role"):
        assert "ManagedPolicyArns" not in props, name


def _granted(template: dict[str, Any], role: str) -> dict[str, list[str]]:
    """action -> resources granted by one role (rendered with example pseudo parameters)."""
    out: dict[str, list[str]] = {}
    for owner, st in _statements(template):
        if owner == role and st.get("Effect") == "Allow":
            for action in cfn.as_list(st["Action"]):
                out.setdefault(cfn.render(action), []).extend(cfn.render(r) for r in cfn.as_list(st["Resource"]))
    return out


THING_ARN = "arn:aws:iot:eu-west-1:123456789012:thing/*"


def test_api_role_reaches_classic_and_named_shadows_of_any_thing(template: dict[str, Any]) -> None:
    # GIVEN the API function's role
    granted = _granted(template, "ApiFunctionRole")
    # THEN shadow reads and writes are granted on thing ARNs, which cover named shadows
    # (thing/{thing}/{shadow}), and the thing list on "*", its only resource
    for action in ("iot:GetThingShadow", "iot:UpdateThingShadow"):
        assert granted[action] == [THING_ARN], action
    assert granted["iot:ListThings"] == ["*"]
    # AND nothing lets it publish on topics (devices hear from it through shadows only)
    assert "iot:Publish" not in granted


def test_presence_role_reaches_only_the_presence_shadow(template: dict[str, Any]) -> None:
    # GIVEN the presence function's role
    granted = _granted(template, "PresenceFunctionRole")
    iot_actions = {a for a in granted if a.startswith("iot:")}
    # THEN it reads and updates the `presence` named shadow (the contract's name) and nothing else in IoT
    assert iot_actions == {"iot:GetThingShadow", "iot:UpdateThingShadow"}
    for action in iot_actions:
        assert granted[action] == [f"arn:aws:iot:eu-west-1:123456789012:thing/*/{commands.PRESENCE_SHADOW}"]


def _aws_calls(package: Path) -> set[str]:
    """IAM actions for the boto3 iot / iot-data operations a package's code calls."""
    session = botocore.session.get_session()
    operations = {
        xform_name(op): f"iot:{op}"
        for service in ("iot", "iot-data")
        for op in session.get_service_model(service).operation_names
    }
    calls: set[str] = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in operations:
                calls.add(operations[node.func.attr])
    return calls


@pytest.mark.parametrize(
    ("package", "role"), [("iotbridge_api", "ApiFunctionRole"), ("iotbridge_presence", "PresenceFunctionRole")]
)
def test_each_function_role_grants_exactly_the_iot_calls_its_code_makes(
    repo: Path, template: dict[str, Any], package: str, role: str
) -> None:
    # GIVEN the boto3 iot / iot-data calls written in a function's package
    calls = _aws_calls(repo / "functions" / package)
    # WHEN compared with the IoT actions the function's role grants
    granted = {action for action in _granted(template, role) if action.startswith("iot:")}
    # THEN every call is allowed (else it fails with AccessDenied only once deployed)
    assert not calls - granted, f"{package} calls {sorted(calls - granted)}, which {role} does not grant"
    # AND nothing is granted that the code never calls
    assert not granted - calls, f"{role} grants {sorted(granted - calls)}, which {package} never calls"
