"""GetThingShadow and UpdateThingShadow as boto3 would send them: SigV4-signed HTTPS, one attempt.

They answer as boto3 does: `{"payload": <readable>}`, and a botocore ClientError with
AWS's error code (the `x-amzn-ErrorType` header) and the HTTP status when AWS refuses.
A timeout or a broken connection raises urllib3's error; callers treat any other
exception as "unreachable", as they do boto3's.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path

# What a status means when AWS names no error type (iot-data's documented errors).
_BY_STATUS = {400: "InvalidRequestException", 401: "UnauthorizedException", 403: "ForbiddenException",
              404: "ResourceNotFoundException", 405: "MethodNotAllowedException", 409: "ConflictException",
              413: "RequestEntityTooLargeException", 415: "UnsupportedDocumentEncodingException",
              429: "ThrottlingException", 503: "ServiceUnavailableException"}  # fmt: skip
_SAFE = "-._~"  # what botocore leaves unescaped in a path label or query value


class SignedShadows:
    def __init__(self, sdk: Any, *, connect_timeout: float, read_timeout: float, max_connections: int,
                 budget: Callable[[], float | None] | None = None) -> None:  # fmt: skip
        import boto3

        meta = sdk.meta
        self._endpoint = meta.endpoint_url.rstrip("/")
        self._region = meta.region_name
        self._signing_name = meta.service_model.signing_name
        self._user_agent = meta.config.user_agent or "iotbridge"
        # The session boto3.client() used: it refreshes them when they are temporary.
        session = boto3.DEFAULT_SESSION or boto3.Session()
        credentials = session.get_credentials()
        if credentials is None:
            raise RuntimeError("no AWS credentials for AWS IoT's data plane")
        self._credentials = credentials
        self._connect_s, self._read_s = connect_timeout, read_timeout
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self._budget = budget
        # The CA bundle boto3 would use: AWS_CA_BUNDLE if set, else botocore's.
        ca_bundle = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
        self._pool = urllib3.PoolManager(maxsize=max_connections, cert_reqs="CERT_REQUIRED", ca_certs=ca_bundle)

    def get_thing_shadow(self, *, thingName: str, shadowName: str | None = None) -> dict[str, Any]:
        return self._call("GET", "GetThingShadow", thingName, shadowName, None)

    def update_thing_shadow(self, *, thingName: str, payload: bytes, shadowName: str | None = None) -> dict[str, Any]:
        return self._call("POST", "UpdateThingShadow", thingName, shadowName, payload)

    def _call(self, method: str, operation: str, thing: str, shadow: str | None, body: bytes | None) -> dict[str, Any]:
        url = f"{self._endpoint}/things/{quote(thing, safe=_SAFE)}/shadow"
        if shadow:
            url += f"?name={quote(shadow, safe=_SAFE)}"
        request = AWSRequest(method=method, url=url, data=body, headers={"User-Agent": self._user_agent})
        SigV4Auth(self._credentials.get_frozen_credentials(), self._signing_name, self._region).add_auth(request)
        timeout = self._timeout
        left = self._budget() if self._budget is not None else None
        if left is not None:  # the whole call, connect and answer, within what the caller has left
            left = max(left, 0.001)
            timeout = urllib3.Timeout(connect=min(self._connect_s, left), read=min(self._read_s, left), total=left)
        response = self._pool.request(method, url, body=body, headers=dict(request.headers.items()),
                                      timeout=timeout, retries=False, redirect=False)  # fmt: skip
        if response.status == 200:
            return {"payload": io.BytesIO(response.data)}
        raise _client_error(response, operation)


def _client_error(response: Any, operation: str) -> ClientError:
    code = (response.headers.get("x-amzn-ErrorType") or "").split(":")[0]
    if not code:
        code = _BY_STATUS.get(response.status, "InternalFailureException" if response.status >= 500 else "UnknownError")
    try:
        message = json.loads(response.data or b"{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    error = {"Error": {"Code": code, "Message": message},
             "ResponseMetadata": {"HTTPStatusCode": response.status, "HTTPHeaders": dict(response.headers)}}  # fmt: skip
    return ClientError(error, operation)  # type: ignore[arg-type]
