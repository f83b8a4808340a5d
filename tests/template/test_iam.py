"""Least privilege: no `*` action, and no `*` resource where AWS allows a narrower one.

Sources of truth for "only `*` is possible": the Service Authorization Reference
(https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsiot.html,
list_awsx-ray.html), whose "Resource types" column is empty for these actions, and
AWS IoT's own table of action resources. The same IoT table gives a named shadow's
ARN as thing/{thing}/{shadow}, which the presence role relies on.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore import xform_name

from iotbridge_contract import commands
from iotbridge_jobs import record
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


def _allows(template: dict[str, Any], role: str, action: str, arn: str) -> bool:
    """IAM's rule for one role's own statements: some Allow matches and no Deny does."""
    matches = {"Allow": False, "Deny": False}
    for owner, st in _statements(template):
        actions = [cfn.render(a) for a in cfn.as_list(st.get("Action", []))]
        resources = [cfn.render(r) for r in cfn.as_list(st.get("Resource", []))]
        if owner == role and action in actions and any(fnmatch.fnmatchcase(arn, r) for r in resources):
            matches[st["Effect"]] = True
    return matches["Allow"] and not matches["Deny"]


def test_api_role_reads_presence_but_cannot_write_it(template: dict[str, Any]) -> None:
    # GIVEN the API function's role and a device's shadows
    thing = "arn:aws:iot:eu-west-1:123456789012:thing/sensor-1"
    presence, commands_shadow = f"{thing}/{commands.PRESENCE_SHADOW}", f"{thing}/{commands.COMMANDS_SHADOW}"
    # THEN it reads presence, but only the presence function may write it
    assert _allows(template, "ApiFunctionRole", "iot:GetThingShadow", presence)
    assert not _allows(template, "ApiFunctionRole", "iot:UpdateThingShadow", presence)
    # AND it still writes the classic and commands shadows it queues commands and desired state in
    assert _allows(template, "ApiFunctionRole", "iot:UpdateThingShadow", thing)
    assert _allows(template, "ApiFunctionRole", "iot:UpdateThingShadow", commands_shadow)


def test_presence_role_reaches_only_the_presence_shadow(template: dict[str, Any]) -> None:
    # GIVEN the presence function's role
    granted = _granted(template, "PresenceFunctionRole")
    iot_actions = {a for a in granted if a.startswith("iot:")}
    # THEN it reads and updates the `presence` named shadow (the contract's name) and nothing else in IoT
    assert iot_actions == {"iot:GetThingShadow", "iot:UpdateThingShadow"}
    for action in iot_actions:
        assert granted[action] == [f"arn:aws:iot:eu-west-1:123456789012:thing/*/{commands.PRESENCE_SHADOW}"]


def _modules(functions: Path, package: str) -> set[Path]:
    """A package's modules and, transitively, the modules of other function packages they import."""
    found: set[Path] = set()
    todo = list((functions / package).glob("*.py"))
    while todo:
        source = todo.pop()
        if source in found:
            continue
        found.add(source)
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                module = functions / (target.replace(".", "/") + ".py")
                if target.startswith("iotbridge_") and module.exists():
                    todo.append(module)
    return found


# boto3 method -> IAM action where the action is not the operation's own name.
_RENAMED = {"invoke": "lambda:InvokeFunction"}


def _aws_calls(functions: Path, package: str) -> set[str]:
    """IAM actions for the boto3 iot / iot-data / lambda operations a function's code calls (imports followed)."""
    session = botocore.session.get_session()
    operations = {
        xform_name(op): f"{service.removesuffix('-data')}:{op}"
        for service in ("iot", "iot-data", "lambda")
        for op in session.get_service_model(service).operation_names
    }
    operations.update(_RENAMED)
    calls: set[str] = set()
    for source in _modules(functions, package):
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in operations:
                calls.add(operations[node.func.attr])
    return calls


@pytest.mark.parametrize(
    ("package", "role"),
    [
        ("iotbridge_api", "ApiFunctionRole"),
        ("iotbridge_presence", "PresenceFunctionRole"),
        ("iotbridge_jobs", "JobsFunctionRole"),
    ],
)
def test_each_function_role_grants_exactly_the_iot_calls_its_code_makes(
    repo: Path, template: dict[str, Any], package: str, role: str
) -> None:
    # GIVEN the boto3 iot / iot-data / lambda calls in a function's package and the function modules it imports
    calls = _aws_calls(repo / "functions", package)
    # WHEN compared with the IoT and Lambda actions the function's role grants
    granted = {action for action in _granted(template, role) if action.startswith(("iot:", "lambda:"))}
    # THEN every call is allowed (else it fails with AccessDenied only once deployed)
    assert not calls - granted, f"{package} calls {sorted(calls - granted)}, which {role} does not grant"
    # AND nothing is granted that the code never calls
    assert not granted - calls, f"{role} grants {sorted(granted - calls)}, which {package} never calls"


def test_the_scan_follows_imports_into_other_function_packages(repo: Path) -> None:
    # GIVEN the API package, whose bulk commands reach shadows through iotbridge_jobs.record
    modules = {p.relative_to(repo / "functions").as_posix() for p in _modules(repo / "functions", "iotbridge_api")}
    # THEN the scan of the API's calls covers that module, and the fan-out's scan covers no API module
    assert "iotbridge_jobs/record.py" in modules
    assert not any(m.startswith("iotbridge_api/") for m in _modules_rel(repo, "iotbridge_jobs"))
    # AND it finds the asynchronous invoke the API makes
    assert "lambda:InvokeFunction" in _aws_calls(repo / "functions", "iotbridge_api")


def _modules_rel(repo: Path, package: str) -> set[str]:
    return {p.relative_to(repo / "functions").as_posix() for p in _modules(repo / "functions", package)}


def test_jobs_role_reaches_only_commands_shadows_and_job_pages(template: dict[str, Any]) -> None:
    # GIVEN the fan-out function's role
    granted = _granted(template, "JobsFunctionRole")
    # THEN in IoT it reads and updates each device's `commands` shadow and the `job-*` shadows of the
    # job page things, no other shadow (not a device's classic or presence shadow) and no topic
    pages = "arn:aws:iot:eu-west-1:123456789012:thing/iotbridge-jobs-*/job-*"
    expected = sorted([f"arn:aws:iot:eu-west-1:123456789012:thing/*/{commands.COMMANDS_SHADOW}", pages])
    assert {a for a in granted if a.startswith("iot:")} == {"iot:GetThingShadow", "iot:UpdateThingShadow"}
    for action in ("iot:GetThingShadow", "iot:UpdateThingShadow"):
        assert sorted(granted[action]) == expected
    # AND every page shadow the code can address is covered by that pattern, and the job summaries are not
    for page in range(3 * record.SHARDS):
        arn = f"arn:aws:iot:eu-west-1:123456789012:thing/{record.page_thing('ab12', page)}/{record.page_shadow('ab12', page)}"
        assert fnmatch.fnmatchcase(arn, pages), arn
    summary = f"arn:aws:iot:eu-west-1:123456789012:thing/{record.JOBS_THING}/{record.summary_shadow('ab12')}"
    assert not fnmatch.fnmatchcase(summary, pages)


def test_api_may_invoke_the_fan_out_function_and_no_other(template: dict[str, Any]) -> None:
    # GIVEN the API function's role  THEN it invokes exactly the jobs function, whose name it gets in its environment
    granted = _granted(template, "ApiFunctionRole")
    assert granted["lambda:InvokeFunction"] == ["<JobsFunction.Arn>"]
    env = template["Resources"]["ApiFunction"]["Properties"]["Environment"]["Variables"]
    assert env["JOBS_FUNCTION_NAME"] == {"Ref": "JobsFunction"}
