"""`iotbridge provision --aws` against moto's AWS IoT and CloudFormation: what a device owner gets, and
that a rerun never quietly makes a second certificate (AWS returns a private key only once)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from moto import mock_aws

from iotbridge_local.cli import main
from iotbridge_pi import config as agent_config

REGION = "eu-west-1"
POLICY = "iotbridge-device"
THING = "pi-kitchen"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A deployed iotbridge stack as far as provisioning sees it: the device policy and the stack's outputs."""
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_IOT", "AWS_ENDPOINT_URL_IOT_DATA_PLANE", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with mock_aws():
        iot = boto3.client("iot", region_name=REGION)
        iot.create_policy(policyName=POLICY, policyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}))
        outputs = {"DevicePolicyName": {"Value": POLICY}, "ApiUrl": {"Value": "https://x.example/prod"}}
        template = {"Resources": {"Bucket": {"Type": "AWS::S3::Bucket"}}, "Outputs": outputs}
        boto3.client("cloudformation", region_name=REGION).create_stack(StackName="iotbridge", TemplateBody=json.dumps(template))
        yield {"iot": iot}


def _provision(out: Path, *extra: str) -> int:
    return main(["provision", THING, "--aws", "--region", REGION, "--out", str(out), *extra])


def _certificates(iot: Any) -> list[dict[str, Any]]:
    return list(iot.list_certificates()["certificates"])


def test_provision_creates_an_attached_certificate_and_a_device_bundle(aws: dict[str, Any], tmp_path: Path) -> None:
    iot = aws["iot"]
    out = tmp_path / "bundle"
    # WHEN a device is provisioned against the deployed stack (policy from its DevicePolicyName output)
    assert _provision(out, "--stack-name", "iotbridge") == 0
    # THEN the thing exists with exactly one certificate, active, carrying the stack's device policy
    [principal] = iot.list_thing_principals(thingName=THING)["principals"]
    [cert] = _certificates(iot)
    assert cert["certificateArn"] == principal and cert["status"] == "ACTIVE"
    assert [p["policyName"] for p in iot.list_attached_policies(target=principal)["policies"]] == [POLICY]
    # AND the bundle's certificate is that certificate, in PEM and DER, with a key that matches it
    pem = iot.describe_certificate(certificateId=cert["certificateId"])["certificateDescription"]["certificatePem"]
    bundle_cert = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    assert bundle_cert == x509.load_pem_x509_certificate(pem.encode())
    assert x509.load_der_x509_certificate((out / "cert.der").read_bytes()) == bundle_cert
    key = serialization.load_der_private_key((out / "key.der").read_bytes(), password=None)
    assert key.public_key().public_numbers() == bundle_cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert (out / "key.pem").stat().st_mode & 0o077 == 0  # the private key is readable by its owner only
    # AND the Pi agent's config loads and points at the account's ATS endpoint with Amazon's root CA
    # (moto answers describe_endpoint with a new random name each call: check its ATS form)
    endpoint = json.loads((out / "bundle.json").read_text())["host"]
    assert re.fullmatch(rf"[a-z0-9]+-ats\.iot\.{REGION}\.amazonaws\.com", endpoint)
    agent = agent_config.load(out / "agent.toml")
    assert (agent.thing, agent.endpoint.host, agent.endpoint.port) == (THING, endpoint, 8883)
    assert agent.endpoint.tls is not None
    assert agent.endpoint.tls.ca == str(out / "AmazonRootCA1.pem") and agent.endpoint.tls.cert == str(out / "cert.pem")
    # AND the ESP32 config uses TLS with the DER files, and the README says where the root CA comes from
    esp32 = json.loads((out / "config.json").read_text())
    assert (esp32["thing"], esp32["host"], esp32["port"], esp32["tls"]) == (THING, endpoint, 8883, True)
    assert (esp32["cert"], esp32["key"], esp32["ca"]) == ("cert.der", "key.der", "ca.der")
    readme = (out / "README.txt").read_text()
    assert "https://www.amazontrust.com/repository/AmazonRootCA1.pem" in readme
    assert not (out / "AmazonRootCA1.pem").exists()  # never downloaded for the user


def test_rerun_with_the_bundle_reports_it_and_creates_nothing(aws: dict[str, Any], tmp_path: Path) -> None:
    iot = aws["iot"]
    out = tmp_path / "bundle"
    # GIVEN a provisioned device
    assert _provision(out, "--policy", POLICY) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # WHEN provisioning runs again with the same bundle directory
    assert _provision(out, "--policy", POLICY) == 0
    # THEN there is still one certificate and the bundle is byte for byte the same
    assert len(_certificates(iot)) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_rerun_without_the_bundle_is_refused_unless_rotating(
    aws: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    iot = aws["iot"]
    first = tmp_path / "first"
    assert _provision(first, "--policy", POLICY) == 0
    [old] = iot.list_thing_principals(thingName=THING)["principals"]
    capsys.readouterr()
    # WHEN provisioning runs for the same thing into a directory without its bundle
    elsewhere = tmp_path / "elsewhere"
    # THEN it refuses (exit 1), says why and what to do, and creates no certificate or files
    assert _provision(elsewhere, "--policy", POLICY) == 1
    err = capsys.readouterr().err
    assert "already has a certificate" in err and "--rotate" in err
    assert len(_certificates(iot)) == 1
    assert not (elsewhere / "key.pem").exists()
    # WHEN it is asked to rotate
    assert _provision(first, "--policy", POLICY, "--rotate") == 0
    # THEN a second certificate is attached beside the old one, and the old bundle is kept aside
    principals = iot.list_thing_principals(thingName=THING)["principals"]
    assert len(principals) == 2 and old in principals
    manifest = json.loads((first / "bundle.json").read_text())
    assert manifest["certificate"] in principals and manifest["certificate"] != old
    [kept] = [p for p in first.iterdir() if p.name.startswith("previous-")]
    assert json.loads((kept / "bundle.json").read_text())["certificate"] == old
    assert "detach-thing-principal" in capsys.readouterr().out


def test_a_bundle_whose_certificate_was_never_attached_is_finished(aws: dict[str, Any], tmp_path: Path) -> None:
    iot = aws["iot"]
    out = tmp_path / "bundle"
    # GIVEN a bundle written by a run that stopped before attaching its certificate
    assert _provision(out, "--policy", POLICY) == 0
    arn = json.loads((out / "bundle.json").read_text())["certificate"]
    iot.detach_thing_principal(thingName=THING, principal=arn)
    # WHEN provisioning runs again
    assert _provision(out, "--policy", POLICY) == 0
    # THEN that same certificate is attached again and no new one is created
    assert iot.list_thing_principals(thingName=THING)["principals"] == [arn]
    assert len(_certificates(iot)) == 1


def test_missing_policy_or_output_stops_before_any_certificate(
    aws: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    iot = aws["iot"]
    # WHEN the named policy does not exist, or the stack does not exist
    no_policy = _provision(tmp_path / "a", "--policy", "no-such-policy")
    no_stack = _provision(tmp_path / "b", "--stack", "not-deployed")  # named as the API commands name it
    # THEN both are usage errors (exit 2) that name the problem, and no certificate was created
    assert (no_policy, no_stack) == (2, 2)
    err = capsys.readouterr().err
    assert "no-such-policy" in err and "not-deployed" in err
    assert _certificates(iot) == []


def test_naming_a_deployed_stack_provisions_on_aws(aws: dict[str, Any], tmp_path: Path) -> None:
    # WHEN a device is provisioned naming the deployed stack, and no --aws
    done = main(["provision", THING, "--stack", "iotbridge", "--region", REGION, "--out", str(tmp_path / "b")])
    # THEN it is provisioned there (not on a local stack), with the stack's device policy
    assert done == 0
    [principal] = aws["iot"].list_thing_principals(thingName=THING)["principals"]
    assert [p["policyName"] for p in aws["iot"].list_attached_policies(target=principal)["policies"]] == [POLICY]
    # AND naming a stack with --local is a usage error
    assert main(["provision", "other", "--local", "--stack", "iotbridge", "--out", str(tmp_path / "c")]) == 2


@pytest.mark.parametrize("thing", ["bad/name", "iotbridge-jobs-0", "iotbridge-jobs"])
def test_an_invalid_thing_name_is_a_usage_error(aws: dict[str, Any], tmp_path: Path, thing: str) -> None:
    # WHEN the thing name has a character AWS IoT does not allow, or names one of the things that
    # hold the bulk job records (a device of that name could read them)
    done = main(["provision", thing, "--aws", "--region", REGION, "--policy", POLICY, "--out", str(tmp_path)])
    # THEN exit 2, nothing created
    assert done == 2
    assert _certificates(aws["iot"]) == []
    assert aws["iot"].list_things()["things"] == []


def test_port_443_uses_alpn_for_the_pi_and_8883_for_the_esp32(aws: dict[str, Any], tmp_path: Path) -> None:
    # WHEN a device is provisioned for a network that only lets 443 out
    assert _provision(tmp_path, "--policy", POLICY, "--port", "443") == 0
    # THEN the Pi agent connects on 443 with AWS's ALPN, and the ESP32 (no ALPN in its firmware) keeps 8883
    agent = agent_config.load(tmp_path / "agent.toml")
    assert agent.endpoint.port == 443
    assert agent.endpoint.tls is not None and agent.endpoint.tls.alpn == "x-amzn-mqtt-ca"
    assert json.loads((tmp_path / "config.json").read_text())["port"] == 8883
