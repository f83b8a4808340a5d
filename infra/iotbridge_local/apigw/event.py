"""API Gateway REST proxy events and Lambda contexts, as AWS builds them."""

from __future__ import annotations

import base64
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Bodies of these types reach the function as text; anything else is base64 (binaryMediaTypes = */* off).
_TEXT_TYPES = ("application/json", "text/", "application/x-www-form-urlencoded", "application/xml")


def build_event(
    method: str,
    raw_path: str,
    *,
    headers: list[tuple[str, str]] | dict[str, str] | None = None,
    body: bytes | None = None,
    stage: str = "Prod",
    stage_in_url: bool = False,
    base_path: str = "",
    api_key: str | None = None,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """A REST API proxy event (`/{proxy+}` resource) for one HTTP request.

    `path` is the route; `requestContext.path` is the path as the caller reached it. On an
    execute-api URL (stage_in_url) that starts with /{stage}; the local gateway serves the
    stage at its root, as a custom domain does, so by default the two are the same.
    `base_path` ("/v1"): called through a custom domain's base path mapping, which API
    Gateway leaves at the start of `path` (and of requestContext.path), not in the proxy part.
    """
    parts = urlsplit(raw_path)
    route = parts.path or "/"  # as a REST API passes it: percent-encoded as sent
    path = base_path + route if base_path else route
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value  # API Gateway keeps the last value in `headers`
        multi.setdefault(name, []).append(value)
    query_multi = parse_qs(parts.query, keep_blank_values=True) if parts.query else {}
    query = {k: v[-1] for k, v in query_multi.items()}
    content_type = next((v for k, v in single.items() if k.lower() == "content-type"), "")
    is_text = body is None or any(content_type.lower().startswith(t) for t in _TEXT_TYPES) or not content_type
    text_body: str | None
    if body is None or body == b"":
        text_body, b64 = None, False
    elif is_text:
        try:
            text_body, b64 = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text_body, b64 = base64.b64encode(body).decode(), True
    else:
        text_body, b64 = base64.b64encode(body).decode(), True
    now = time.time()
    request_id = str(uuid.uuid4())
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method.upper(),
        "headers": single or None,
        "multiValueHeaders": multi or None,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": query_multi or None,
        "pathParameters": {"proxy": unquote(route.lstrip("/"))} if route != "/" else None,  # decoded, as on AWS
        "stageVariables": None,
        "requestContext": {
            "resourceId": "local",
            "resourcePath": "/{proxy+}",
            "httpMethod": method.upper(),
            "extendedRequestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "path": f"/{stage}{path}" if stage_in_url else path,
            "accountId": "123456789012",
            "protocol": "HTTP/1.1",
            "stage": stage,
            "domainPrefix": "localhost",
            "requestTimeEpoch": int(now * 1000),
            "requestId": request_id,
            "identity": {
                "sourceIp": source_ip,
                "apiKey": api_key,
                "apiKeyId": "local" if api_key else None,
                "userAgent": next((v for k, v in single.items() if k.lower() == "user-agent"), None),
            },
            "domainName": "localhost",
            "apiId": "local",
        },
        "body": text_body,
        "isBase64Encoded": b64,
    }


@dataclass
class LambdaContext:
    """What Lambda passes as `context`; the remaining time follows the function's Timeout."""

    timeout_s: float
    function_name: str = "ApiFunction"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ApiFunction"
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/ApiFunction"
    log_stream_name: str = "local"
    _started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._started + self.timeout_s - time.monotonic()) * 1000))
