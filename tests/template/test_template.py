"""What the rest of the project relies on in template.yaml: outputs, wiring, names."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from iotbridge_contract import topics
from iotbridge_jobs import fanout, record
from iotbridge_local.stack import function_timeout_s
from tests.template import cfn

# Read by the dashboard's deployed config and by the integration tests.
CONTRACT_OUTPUTS = {"ApiUrl", "ApiKeyId", "DashboardUrl", "DashboardBucket", "IotDataEndpoint", "DevicePolicyName"}
# Set by Lambda itself in every execution environment.
LAMBDA_PROVIDED_ENV = {"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_LAMBDA_FUNCTION_NAME", "AWS_EXECUTION_ENV", "_X_AMZN_TRACE_ID"}


def _function_env(template: dict[str, Any], name: str) -> dict[str, Any]:
    env = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    props = template["Resources"][name]["Properties"]
    env.update(props.get("Environment", {}).get("Variables", {}))
    return env


def test_outputs_hold_the_deployment_contract(template: dict[str, Any]) -> None:
    # GIVEN the template's outputs
    outputs = template["Outputs"]
    # THEN every key the dashboard config and the integration tests read is there
    assert set(outputs) >= CONTRACT_OUTPUTS
    # AND each points at the resource it names
    assert outputs["ApiKeyId"]["Value"] == {"Ref": "ApiKey"}
    assert outputs["DashboardBucket"]["Value"] == {"Ref": "DashboardBucket"}
    assert outputs["DevicePolicyName"]["Value"] == {"Ref": "DevicePolicy"}
    assert outputs["IotDataEndpoint"]["Value"] == {"Ref": "IotDataEndpoint"}
    # AND ApiUrl is the stage's base URL without a trailing slash (clients append /devices...)
    api_url = cfn.render(outputs["ApiUrl"]["Value"], {"IotBridgeApi": "a1b2c3d4e5", "Stage": "prod"})
    assert api_url == "https://a1b2c3d4e5.execute-api.eu-west-1.amazonaws.com/prod"
    dashboard_url = cfn.render(outputs["DashboardUrl"]["Value"], {"DashboardDistribution.DomainName": "d1.cloudfront.net"})
    assert dashboard_url == "https://d1.cloudfront.net"


FUNCTIONS = [("ApiFunction", "iotbridge_api"), ("PresenceFunction", "iotbridge_presence"), ("JobsFunction", "iotbridge_jobs")]


@pytest.mark.parametrize(("name", "package"), FUNCTIONS)
def test_each_handler_names_a_function_in_the_code(repo: Path, template: dict[str, Any], name: str, package: str) -> None:
    # GIVEN a function's Handler `package.module.function` and CodeUri functions/
    handler = template["Resources"][name]["Properties"]["Handler"]
    module, func = handler.rsplit(".", 1)
    source = repo / "functions" / (module.replace(".", "/") + ".py")
    assert module.split(".")[0] == package
    # THEN that module exists and defines that function at module level
    assert source.exists(), f"the template's Handler points at {source}, which does not exist"
    defined = {n.name for n in ast.parse(source.read_text(encoding="utf-8")).body if isinstance(n, ast.FunctionDef)}
    assert func in defined, f"{source} has no top-level {func}()"


def _env_names_read(package: Path) -> set[str]:
    """Environment variable names the code reads with a literal name."""
    found: set[str] = set()
    for source in package.glob("*.py"):
        text = source.read_text(encoding="utf-8")
        found |= set(re.findall(r"""(?:environ\.get|getenv|environ\[|environ\.setdefault)\(?\s*["']([A-Z0-9_]+)["']""", text))
    return found


@pytest.mark.parametrize(("name", "package"), FUNCTIONS)
def test_every_environment_variable_the_code_reads_is_set(repo: Path, template: dict[str, Any], name: str, package: str) -> None:
    # GIVEN the variables a function's code reads (its package and the shared contract)
    read = _env_names_read(repo / "functions" / package) | _env_names_read(repo / "functions" / "iotbridge_contract")
    # WHEN compared with what the template sets for that function
    env = _function_env(template, name)
    # THEN none is missing on AWS (where nothing else would set it)
    assert not read - set(env) - LAMBDA_PROVIDED_ENV, f"{name} does not set {sorted(read - set(env) - LAMBDA_PROVIDED_ENV)}"


def test_functions_reach_the_accounts_iot_data_endpoint_over_https(template: dict[str, Any]) -> None:
    # GIVEN the functions' environment
    for name, _ in FUNCTIONS:
        env = _function_env(template, name)
        # THEN botocore's iot-data endpoint variable is the IotDataEndpoint parameter behind https://
        assert cfn.render(env["AWS_ENDPOINT_URL_IOT_DATA_PLANE"], {"IotDataEndpoint": "abc-ats.iot.eu-west-1.amazonaws.com"}) == (
            "https://abc-ats.iot.eu-west-1.amazonaws.com"
        )
        assert env["POWERTOOLS_SERVICE_NAME"] == "iotbridge"
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "iotbridge"


@pytest.mark.parametrize(
    ("endpoint", "accepted"),
    [
        ("a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com", True),
        ("a1b2c3d4e5f6g7-ats.iot.cn-north-1.amazonaws.com.cn", True),
        ("a1b2c3d4e5.ats.iot.cn-north-1.amazonaws.com.cn", True),  # how China regions' ATS endpoints are spelt
        ("https://a1b2c3d4e5f6g7-ats.iot.eu-west-1.amazonaws.com", False),  # the scheme is added by the template
        ("a1b2c3d4e5f6g7.iot.eu-west-1.amazonaws.com", False),  # legacy VeriSign endpoint, not ATS
        ("iot.eu-west-1.amazonaws.com", False),  # the control plane, not the data plane
        ("", False),
    ],
)
def test_iot_data_endpoint_parameter_accepts_only_an_ats_data_endpoint(
    template: dict[str, Any], endpoint: str, accepted: bool
) -> None:
    # GIVEN the parameter's AllowedPattern (CloudFormation matches the whole value)
    pattern = template["Parameters"]["IotDataEndpoint"]["AllowedPattern"]
    # WHEN a value is offered  THEN only `describe-endpoint --endpoint-type iot:Data-ATS` output passes
    assert bool(re.fullmatch(pattern, endpoint)) is accepted


def test_presence_rule_feeds_lifecycle_events_to_the_presence_function(template: dict[str, Any]) -> None:
    # GIVEN the topic rule
    payload = template["Resources"]["PresenceRule"]["Properties"]["TopicRulePayload"]
    # THEN it selects whole connect and disconnect events of every client (not connect_failed: no presence change)
    assert payload["Sql"] == (f"SELECT * FROM '{topics.PRESENCE_PREFIX}+/+'"
                              " WHERE eventType = 'connected' OR eventType = 'disconnected'")  # fmt: skip
    assert payload["Actions"] == [{"Lambda": {"FunctionArn": {"Fn::GetAtt": ["PresenceFunction", "Arn"]}}}]
    # AND IoT may invoke that function, for this rule only
    permission = template["Resources"]["PresenceRulePermission"]["Properties"]
    assert permission["Principal"] == "iot.amazonaws.com"
    assert permission["FunctionName"] == {"Ref": "PresenceFunction"}
    assert permission["SourceArn"] == {"Fn::GetAtt": ["PresenceRule", "Arn"]}


def test_api_answers_before_api_gateway_gives_up(template: dict[str, Any]) -> None:
    # GIVEN API Gateway's 29 s integration limit and the handler's "remaining time less 1 s" wait
    # THEN the API function's timeout is at most 29 s, so a slow device gets 202, never a 504
    assert template["Resources"]["ApiFunction"]["Properties"]["Timeout"] <= 29


def test_the_api_reserves_concurrency_only_when_asked(template: dict[str, Any]) -> None:
    # GIVEN the parameter that reserves concurrency for the API function (a cap on what waiting
    # commands can take from the presence and fan-out functions)
    parameter = template["Parameters"]["ApiReservedConcurrency"]
    reserved = template["Resources"]["ApiFunction"]["Properties"]["ReservedConcurrentExecutions"]
    condition = template["Conditions"]["HasApiReservedConcurrency"]
    # THEN by default nothing is reserved (an account with a quota of 10 cannot reserve any: AWS
    # keeps 100 unreserved), and a value given is the API function's reservation
    assert parameter["Default"] == 0
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ApiReservedConcurrency"}, 0]}]}
    assert reserved == {"Fn::If": ["HasApiReservedConcurrency", {"Ref": "ApiReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}


def test_fan_out_attempts_are_what_the_page_records_count_on(template: dict[str, Any]) -> None:
    # GIVEN the fan-out function, invoked asynchronously once per page of a bulk command
    props = template["Resources"]["JobsFunction"]["Properties"]
    # THEN Lambda tries an event as often as the page record expects (a last attempt gives up and says why)
    assert 1 + props["EventInvokeConfig"]["MaximumRetryAttempts"] == record.MAX_ATTEMPTS
    # AND an attempt has time for a whole page beyond the margin it keeps to record how far it got
    assert props["Timeout"] * 1000 > 10 * fanout.MARGIN_MS
    # AND the local stack runs it with the same timeout, so a cut-off attempt behaves as deployed
    assert function_timeout_s(function="JobsFunction") == props["Timeout"]
    assert function_timeout_s(function="ApiFunction") == template["Resources"]["ApiFunction"]["Properties"]["Timeout"]
    assert function_timeout_s(function="PresenceFunction") == template["Globals"]["Function"]["Timeout"]


def test_api_needs_a_key_with_a_throttled_usage_plan(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    auth = resources["IotBridgeApi"]["Properties"]["Auth"]
    # GIVEN the REST API
    # THEN every method needs x-api-key, except the CORS preflight a browser sends without it
    assert auth["ApiKeyRequired"] is True
    assert auth["AddApiKeyRequiredToCorsPreflight"] is False
    # AND the key belongs to a usage plan bound to the API's stage, with throttle and quota
    plan_key = resources["UsagePlanKey"]["Properties"]
    assert plan_key == {"KeyId": {"Ref": "ApiKey"}, "KeyType": "API_KEY", "UsagePlanId": {"Ref": "UsagePlan"}}
    plan = resources["UsagePlan"]["Properties"]
    assert plan["ApiStages"] == [{"ApiId": {"Ref": "IotBridgeApi"}, "Stage": {"Ref": "IotBridgeApi.Stage"}}]
    assert set(plan["Throttle"]) == {"RateLimit", "BurstLimit"}
    assert set(plan["Quota"]) == {"Limit", "Period"}
    # AND the only route is the proxy: the handler answers 404/405 in the protocol's format
    events = resources["ApiFunction"]["Properties"]["Events"]
    assert [(e["Properties"]["Path"], e["Properties"]["Method"]) for e in events.values()] == [("/{proxy+}", "ANY")]


def test_one_cors_origin_everywhere(template: dict[str, Any]) -> None:
    api = template["Resources"]["IotBridgeApi"]["Properties"]
    quoted = api["Cors"]["AllowOrigin"]
    # GIVEN the origin answered to preflights (API Gateway wants it single-quoted)
    # THEN API Gateway's own 4xx/5xx (bad key, throttled) carry the same origin, so a browser
    # shows them instead of a CORS failure
    for kind in ("DEFAULT_4XX", "DEFAULT_5XX"):
        response = api["GatewayResponses"][kind]
        assert response["ResponseParameters"]["Headers"]["Access-Control-Allow-Origin"] == quoted
        body = response["ResponseTemplates"]["application/json"]
        assert '"code"' in body and '"message"' in body  # the protocol's error shape
    # AND the function is told the same origin for its own responses
    env = _function_env(template, "ApiFunction")["DASHBOARD_ORIGIN"]
    for params in ({"DashboardOrigin": "http://localhost:8000"}, {"DashboardDistribution.DomainName": "d1.cloudfront.net"}):
        chosen = 1 if "DashboardOrigin" in params else 2
        assert cfn.render(quoted["Fn::If"][chosen], params) == "'" + cfn.render(env["Fn::If"][chosen], params) + "'"
    # AND the preflight allows the headers the dashboard sends
    allowed = {h.strip().lower() for h in api["Cors"]["AllowHeaders"].strip("'").split(",")}
    assert {"content-type", "x-api-key"} <= allowed


def test_dashboard_bucket_is_private_and_read_only_by_its_distribution(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    # GIVEN the dashboard bucket
    block = resources["DashboardBucket"]["Properties"]["PublicAccessBlockConfiguration"]
    # THEN all public access is blocked
    assert block == dict.fromkeys(("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True)
    # AND the only reader is CloudFront, for this stack's distribution (origin access control)
    statements = resources["DashboardBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    allow = [st for st in statements if st["Effect"] == "Allow"]
    assert len(allow) == 1
    assert allow[0]["Principal"] == {"Service": "cloudfront.amazonaws.com"}
    assert allow[0]["Action"] == "s3:GetObject"
    source = cfn.render(allow[0]["Condition"]["StringEquals"]["AWS:SourceArn"], {"DashboardDistribution": "E2ABC"})
    assert source == "arn:aws:cloudfront::123456789012:distribution/E2ABC"
    origin = resources["DashboardDistribution"]["Properties"]["DistributionConfig"]["Origins"][0]
    assert origin["OriginAccessControlId"] == {"Fn::GetAtt": ["DashboardOriginAccessControl", "Id"]}


def test_lambda_requirements_cover_what_the_functions_import(repo: Path) -> None:
    # GIVEN functions/requirements.txt (what `sam build` packages) and pyproject's runtime dependencies
    lines = (repo / "functions" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    reqs = {re.split(r"[\[<>=!~ ]", line, maxsplit=1)[0].lower() for line in lines if line.strip() and not line.startswith("#")}
    project = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {re.split(r"[\[<>=!~ ]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    # THEN the Lambda gets Powertools and a boto3 recent enough for the endpoint variable, and no Pydantic
    #      (the API validates with its own stdlib schema layer: cold start)
    assert {"aws-lambda-powertools", "boto3"} <= reqs
    assert "pydantic" not in reqs
    # AND nothing the project itself does not depend on (paho-mqtt is device/local-stack only)
    assert reqs <= runtime


def test_samconfig_defaults_match_the_template(repo: Path, template: dict[str, Any]) -> None:
    # GIVEN samconfig.toml, read by `sam build` / `sam deploy [--guided]`
    config = tomllib.loads((repo / "samconfig.toml").read_text(encoding="utf-8"))["default"]
    deploy = config["deploy"]["parameters"]
    # THEN the parameters it overrides exist in the template and take allowed values
    overrides = dict(re.findall(r'(\w+)="([^"]*)"', deploy["parameter_overrides"]))
    for name, value in overrides.items():
        spec = template["Parameters"][name]
        if "AllowedValues" in spec:
            assert value in [str(v) for v in spec["AllowedValues"]], name
        if "AllowedPattern" in spec:
            assert re.fullmatch(spec["AllowedPattern"], value), name
    # AND the account-specific endpoint is left for --guided to ask (it has no default)
    assert "IotDataEndpoint" not in overrides and "Default" not in template["Parameters"]["IotDataEndpoint"]
    # AND CAPABILITY_IAM suffices: no IAM resource has a fixed name (that would need CAPABILITY_NAMED_IAM)
    assert deploy["capabilities"] == "CAPABILITY_IAM"
    for name, props in cfn.resources_of_type(template, "AWS::IAM::Role", "AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        assert not {"RoleName", "ManagedPolicyName"} & set(props), name
    assert config["global"]["parameters"]["stack_name"]
