"""Tiny Lambda handlers that let the gateway tests see what a function receives."""

from __future__ import annotations

import json
import os
import time
from typing import Any


def echo(event: dict[str, Any], context: Any) -> dict[str, Any]:
    body = {"event": event, "remainingMs": context.get_remaining_time_in_millis(), "pid": os.getpid()}
    return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}


def slow(event: dict[str, Any], context: Any) -> dict[str, Any]:
    seconds = float((event.get("queryStringParameters") or {}).get("s", "0.5"))
    time.sleep(seconds)
    return {"statusCode": 200, "body": json.dumps({"pid": os.getpid()})}


def crash(event: dict[str, Any], context: Any) -> dict[str, Any]:
    raise RuntimeError("boom")


def runtime(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Which SigV4 signer botocore picks in this environment (the CRT's, or its own Python one)."""
    import boto3
    import botocore.auth

    client = boto3.client("iot-data", region_name="eu-west-1", aws_access_key_id="a", aws_secret_access_key="b")
    signer = botocore.auth.AUTH_TYPE_MAPS[client.meta.service_model.signature_version]
    return {"statusCode": 200, "body": json.dumps({"signer": f"{signer.__module__}.{signer.__name__}"})}
