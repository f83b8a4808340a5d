"""Call the API function in-process, the way API Gateway would, in one line per request.

    client = ApiClient()
    response = client.post("/devices/sim-1/commands", json={"action": "ping"})
    assert response.status == 200 and response.json["state"] == "SUCCEEDED"
"""

from __future__ import annotations

import json as jsonlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotbridge_local.apigw.event import LambdaContext, build_event

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: str

    @property
    def json(self) -> Any:
        return jsonlib.loads(self.body)


def response_headers(result: dict[str, Any]) -> dict[str, str]:
    """Headers of a proxy response; Powertools may answer them in `multiValueHeaders`."""
    headers = dict(result.get("headers") or {})
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[name] = ", ".join(values)
    return headers


class ApiClient:
    def __init__(self, *, handler: Handler | None = None, timeout_s: float = 30.0, api_key: str | None = "test",
                 stage_in_url: bool = False, base_path: str = "") -> None:
        if handler is None:
            from iotbridge_api.handler import lambda_handler

            handler = lambda_handler
        self.handler = handler
        self.timeout_s = timeout_s
        self.api_key = api_key
        self.stage_in_url = stage_in_url  # called as on an execute-api URL: https://…/Prod/devices
        self.base_path = base_path  # called through a custom domain's base path mapping: https://api.example/v1/devices

    def request(
        self, method: str, path: str, *, json: Any = None, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> ApiResponse:
        all_headers = {"Accept": "application/json"}
        if json is not None:
            body = jsonlib.dumps(json).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        event = build_event(method, path, headers=all_headers, body=body, api_key=self.api_key,
                            stage_in_url=self.stage_in_url, base_path=self.base_path)
        result = self.handler(event, LambdaContext(timeout_s=self.timeout_s))
        return ApiResponse(result["statusCode"], response_headers(result), result.get("body") or "")

    def get(self, path: str, **kw: Any) -> ApiResponse:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> ApiResponse:
        return self.request("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> ApiResponse:
        return self.request("PATCH", path, **kw)
