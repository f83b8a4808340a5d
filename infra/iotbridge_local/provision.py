"""Provision a device: a thing, a certificate the broker trusts, and a bundle of files for the device.

AWS (`provision_aws`): the thing in AWS IoT, a certificate from AWS IoT
(`create_keys_and_certificate`), the stack's device policy on it, the certificate
attached to the thing, and the account's `iot:Data-ATS` endpoint.
Local (`provision_local`): the thing in the local stack's registry and a
certificate from the local CA (`pki.LocalCA`), pointing at 127.0.0.1:mqtts.

Either way the bundle written to the output directory is the same:

    agent.toml          the Pi agent's config (device/pi/iotbridge_pi/config.py), paths relative to it
    config.json         the ESP32 firmware's config (device/esp32/config.py)
    cert.pem key.pem    for the Pi (CPython)
    cert.der key.der    for the ESP32 (MicroPython's ssl loads DER only)
    ca.pem ca.der       local only; on AWS the README says how to get AmazonRootCA1.pem
    bundle.json         what was provisioned (thing, certificate, endpoint): how a rerun recognises it
    README.txt

Idempotent: AWS returns a private key exactly once, so a rerun never quietly makes a
second certificate. A thing that has a certificate and whose bundle is here is
reported as provisioned; a thing with a certificate but no bundle here is refused
unless `rotate=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from iotbridge_contract import names
from iotbridge_local.pki import write_atomically

AMAZON_ROOT_CA_URL = "https://www.amazontrust.com/repository/AmazonRootCA1.pem"
AMAZON_ROOT_CA_FILE = "AmazonRootCA1.pem"
DEFAULT_STACK_NAME = "iotbridge"  # samconfig.toml's stack_name
POLICY_OUTPUT = "DevicePolicyName"
MANIFEST = "bundle.json"
BUNDLE_FILES = ("agent.toml", "config.json", "cert.pem", "key.pem", "cert.der", "key.der", MANIFEST, "README.txt")


class ProvisionError(RuntimeError):
    """Cannot start: no policy, no stack output, no local stack. Nothing was created."""


class ProvisionRefused(RuntimeError):
    """Going on would create a second certificate without being asked to (--rotate)."""


@dataclass(frozen=True)
class Result:
    status: str  # created | exists | rotated | resumed | exported
    thing: str
    bundle: str
    target: str  # aws | local
    host: str
    port: int
    certificate: str  # AWS certificate ARN, or the local certificate's SHA-256 fingerprint
    policy: str | None = None
    previous: list[str] = field(default_factory=list)  # certificates still attached after a rotation

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# -- the bundle -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Material:
    thing: str
    host: str
    port: int
    target: str
    cert_pem: bytes
    key_pem: bytes
    certificate: str
    ca_pem: bytes | None = None  # the local CA; None on AWS (Amazon's root CA is fetched by the user)
    policy: str | None = None


def _der_cert(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _der_key(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _toml(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _agent_toml(m: _Material) -> str:
    local = m.target == "local"
    ca = "ca.pem" if local else AMAZON_ROOT_CA_FILE
    lines = [
        f"# iotbridge Pi agent for {m.thing} ({'local stack' if local else 'AWS IoT Core'}).",
        "# Paths are relative to this file. Run: iotbridge-pi --config agent.toml",
        f"thing = {_toml(m.thing)}",
        f"host = {_toml(m.host)}",
        f"port = {m.port}",
        f"state_dir = {_toml('state' if local else '/var/lib/iotbridge-pi')}",
        f"telemetry_interval = {10 if local else 60}",
        f"hardware = {_toml('simulated' if local else 'auto')}  # auto | gpio | simulated",
        f"reboot = {_toml('simulated' if local else 'system')}  # system (systemctl reboot) | simulated",
        "",
        "[tls]",
        f"ca = {_toml(ca)}",
        'cert = "cert.pem"',
        'key = "key.pem"',
    ]
    return "\n".join(lines) + "\n"


def _esp32_port(m: _Material) -> int:
    """The firmware does not negotiate ALPN, which AWS IoT needs for MQTT on 443: it always uses 8883 there."""
    return 8883 if m.target == "aws" else m.port


def _esp32_config(m: _Material) -> str:
    config = {
        "thing": m.thing, "host": m.host, "port": _esp32_port(m), "tls": True,
        "ca": "ca.der", "cert": "cert.der", "key": "key.der", "state": "executed.log",
        "pins": {"led": 2, "relay": 4}, "wifi": {"ssid": "your-ssid", "password": "your-password"},
    }  # fmt: skip
    return json.dumps(config, indent=2) + "\n"


def _readme(m: _Material) -> str:
    where = "the local iotbridge stack" if m.target == "local" else "AWS IoT Core"
    ca_text = (
        "ca.pem / ca.der   the local stack's CA (the broker's certificate is signed by it)\n"
        if m.target == "local"
        else f"""Amazon's root CA is NOT included. Download it into this folder before copying the bundle:
    {AMAZON_ROOT_CA_URL}
  save it as {AMAZON_ROOT_CA_FILE} (agent.toml expects that name next to it), and for the ESP32:
    openssl x509 -in {AMAZON_ROOT_CA_FILE} -outform DER -out ca.der
"""
    )
    return f"""Device bundle for thing {m.thing!r}, connecting to {where} at {m.host}:{m.port}.
Certificate: {m.certificate}

key.pem and key.der are the device's private key. Keep them on the device only.
{"AWS returns a private key exactly once: this folder is its only copy." if m.target == "aws" else ""}

{ca_text}
Raspberry Pi (CPython agent)
  copy agent.toml, cert.pem, key.pem and the CA file to e.g. /etc/iotbridge-pi/ and run
    iotbridge-pi --config /etc/iotbridge-pi/agent.toml

ESP32 (MicroPython firmware, device/esp32), port {_esp32_port(m)}
  set wifi in config.json, then copy config.json, cert.der, key.der and ca.der to the board's
  flash next to main.py (MicroPython's ssl loads DER, not PEM).

The thing name is the MQTT client id and the certificate's identity: do not rename it here.
"""


def bundle_complete(out: Path) -> bool:
    return all((out / name).exists() for name in BUNDLE_FILES)


def read_manifest(out: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _set_aside(out: Path, label: str) -> Path | None:
    """Keep a replaced bundle (its key may still be in use) in a sub-folder instead of overwriting it."""
    present = [out / name for name in (*BUNDLE_FILES, "ca.pem", "ca.der") if (out / name).exists()]
    if not present:
        return None
    keep = out / f"previous-{label}-{int(time.time())}"
    keep.mkdir(mode=0o700)
    for path in present:
        shutil.move(str(path), keep / path.name)
    return keep


def write_bundle(out: Path, m: _Material) -> None:
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    write_atomically(out / "key.pem", m.key_pem, secret=True)  # first: on AWS this is the only copy of the key
    write_atomically(out / "key.der", _der_key(m.key_pem), secret=True)
    write_atomically(out / "cert.pem", m.cert_pem)
    write_atomically(out / "cert.der", _der_cert(m.cert_pem))
    if m.ca_pem is not None:
        write_atomically(out / "ca.pem", m.ca_pem)
        write_atomically(out / "ca.der", _der_cert(m.ca_pem))
    write_atomically(out / "agent.toml", _agent_toml(m).encode())
    write_atomically(out / "config.json", _esp32_config(m).encode())
    write_atomically(out / "README.txt", _readme(m).encode())
    manifest = {"thing": m.thing, "target": m.target, "host": m.host, "port": m.port,
                "certificate": m.certificate, "policy": m.policy, "createdAt": int(time.time())}  # fmt: skip
    write_atomically(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


# -- AWS --------------------------------------------------------------------------------------------


def policy_from_stack(cloudformation: Any, stack_name: str) -> str:
    """The device policy's name from the deployed stack's outputs (template.yaml: DevicePolicyName)."""
    from botocore.exceptions import ClientError

    try:
        stacks = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        raise ProvisionError(f"cannot read stack {stack_name!r}: {exc} (deploy it, or pass --policy)") from exc
    for output in (stacks[0].get("Outputs") or []) if stacks else []:
        if output.get("OutputKey") == POLICY_OUTPUT:
            return str(output["OutputValue"])
    raise ProvisionError(f"stack {stack_name!r} has no output {POLICY_OUTPUT} (is it the iotbridge stack?); pass --policy")


def _thing_principals(iot: Any, thing: str) -> list[str]:
    principals: list[str] = []
    kwargs: dict[str, Any] = {"thingName": thing}
    while True:
        page = iot.list_thing_principals(**kwargs)
        principals.extend(page.get("principals") or [])
        if not page.get("nextToken"):
            return principals
        kwargs["nextToken"] = page["nextToken"]


def _ensure_thing(iot: Any, thing: str) -> None:
    """create_thing is not a no-op everywhere (moto gives an existing thing a new id): look first."""
    try:
        iot.describe_thing(thingName=thing)
    except iot.exceptions.ResourceNotFoundException:
        with contextlib.suppress(iot.exceptions.ResourceAlreadyExistsException):  # created by someone else meanwhile
            iot.create_thing(thingName=thing)


def _attach(iot: Any, thing: str, policy: str, certificate_arn: str) -> None:
    iot.attach_policy(policyName=policy, target=certificate_arn)  # attaching twice is allowed
    iot.attach_thing_principal(thingName=thing, principal=certificate_arn)


def provision_aws(
    thing: str,
    out: Path,
    *,
    iot: Any,
    policy: str,
    port: int = 8883,
    rotate: bool = False,
) -> Result:
    """Thing, certificate, policy, attachment and bundle on AWS IoT. Checks everything before it creates a key."""
    thing = names.device_name(thing)  # not a job records' thing: it could read their topics
    out = Path(out)
    try:
        iot.get_policy(policyName=policy)
    except iot.exceptions.ResourceNotFoundException:
        raise ProvisionError(f"no IoT policy named {policy!r} in this account/region") from None
    host = str(iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"])
    _ensure_thing(iot, thing)
    principals = _thing_principals(iot, thing)
    manifest = read_manifest(out) if bundle_complete(out) else None
    mine = manifest is not None and manifest.get("thing") == thing and manifest.get("target") == "aws"
    result = {"thing": thing, "bundle": str(out), "target": "aws", "host": host, "port": port, "policy": policy}

    if not rotate and mine and manifest is not None:
        arn = str(manifest.get("certificate"))
        if arn in principals:
            return Result(status="exists", certificate=arn, **result)  # type: ignore[arg-type]
        if not principals:
            # A previous run wrote the bundle and stopped before attaching: finish it, no new key.
            _attach(iot, thing, policy, arn)
            return Result(status="resumed", certificate=arn, **result)  # type: ignore[arg-type]
    if principals and not rotate:
        raise ProvisionRefused(
            f"thing {thing!r} already has a certificate ({', '.join(principals)}) but {out} holds no bundle for it. "
            "AWS hands out a private key only once, so it cannot be written again. Use the bundle you kept, or "
            "pass --rotate to create a new certificate (the old one stays attached until you detach it)."
        )
    if rotate:
        _set_aside(out, "aws")
    created = iot.create_keys_and_certificate(setAsActive=True)
    arn = str(created["certificateArn"])
    material = _Material(thing=thing, host=host, port=port, target="aws", cert_pem=created["certificatePem"].encode(),
                         key_pem=created["keyPair"]["PrivateKey"].encode(), certificate=arn, policy=policy)  # fmt: skip
    write_bundle(out, material)
    _attach(iot, thing, policy, arn)
    return Result(status="rotated" if principals else "created", certificate=arn, previous=principals, **result)  # type: ignore[arg-type]


# -- local stack --------------------------------------------------------------------------------


def _fingerprint(cert_pem: bytes) -> str:
    from cryptography.hazmat.primitives import hashes

    return x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256()).hex()


def local_iot_client(endpoint: str, region: str = "us-east-1") -> Any:
    import boto3

    return boto3.client("iot", endpoint_url=endpoint, region_name=region,
                        aws_access_key_id="local", aws_secret_access_key="local")  # fmt: skip


def provision_local(thing: str, out: Path, *, data_dir: Path, rotate: bool = False) -> Result:
    """Thing in the local registry, certificate from the local CA, bundle for 127.0.0.1:mqtts."""
    from iotbridge_local.apiclient import read_stack_json
    from iotbridge_local.config import HOST
    from iotbridge_local.pki import CertificateMissing, LocalCA

    thing = names.device_name(thing)  # not a job records' thing: it could read their topics
    out = Path(out)
    state = read_stack_json(Path(data_dir))
    if not state or not state.get("iot") or not state.get("mqtts"):
        raise ProvisionError(f"no local stack is running from {data_dir} (start one: iotbridge up --data-dir {data_dir})")
    _ensure_thing(local_iot_client(str(state["iot"])), thing)
    ca = LocalCA.for_data_dir(Path(state.get("dataDir") or data_dir))
    try:
        existing = ca.device(thing)
    except CertificateMissing:
        existing = None
    if existing is not None and not rotate:
        fingerprint = _fingerprint(existing.cert_pem.read_bytes())
        manifest = read_manifest(out) if bundle_complete(out) else None
        status = "exists" if manifest and manifest.get("certificate") == fingerprint else "exported"
        cert = existing  # the local CA keeps the key, so exporting it again creates no second certificate
    else:
        if rotate:
            _set_aside(out, "local")
        cert = ca.issue_device(thing, replace=rotate)
        status = "rotated" if existing is not None else "created"
    cert_pem = cert.cert_pem.read_bytes()
    material = _Material(thing=thing, host=HOST, port=int(state["mqtts"]), target="local", cert_pem=cert_pem,
                         key_pem=cert.key_pem.read_bytes(), certificate=_fingerprint(cert_pem),
                         ca_pem=cert.ca_pem.read_bytes())  # fmt: skip
    if status != "exists":
        write_bundle(out, material)
    return Result(status=status, thing=thing, bundle=str(out), target="local", host=HOST, port=material.port,
                  certificate=material.certificate)  # fmt: skip


def describe(result: Result) -> Iterable[str]:
    """Short human lines for a result."""
    verbs = {
        "created": "provisioned", "exists": "already provisioned; bundle unchanged", "rotated": "new certificate",
        "resumed": "finished attaching the certificate from the existing bundle",
        "exported": "certificate exported from the local CA",
    }  # fmt: skip
    yield f"{result.thing}: {verbs.get(result.status, result.status)} ({result.target}, {result.host}:{result.port})"
    yield f"  certificate  {result.certificate}"
    if result.policy:
        yield f"  policy       {result.policy}"
    yield f"  bundle       {result.bundle}  (see README.txt)"
    if result.target == "aws":
        yield f"  root CA      download {AMAZON_ROOT_CA_URL} into the bundle (not included)"
    for arn in result.previous:
        yield f"  still attached: {arn}"
        yield f"    later: aws iot detach-thing-principal --thing-name {result.thing} --principal {arn}"
