"""Logger, Metrics and a Tracer that costs nothing at cold start when tracing is off.

Powertools' Tracer imports aws-xray-sdk (~0.3 s here); it is loaded only when
POWERTOOLS_TRACE_DISABLED is explicitly "false" (the template sets it with
`Tracing: Active`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from aws_lambda_powertools import Logger, Metrics

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "iotbridge")
logger = Logger(service=SERVICE)
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "iotbridge"), service=SERVICE)
# Reads (GET routes) emit no metric; that is expected, not worth a warning per request.
warnings.filterwarnings("ignore", message="No application metrics to publish")

F = TypeVar("F", bound=Callable[..., Any])


class _NoTracer:
    def capture_method(self, func: F) -> F:
        return func

    def capture_lambda_handler(self, func: F) -> F:
        return func

    def put_annotation(self, key: str, value: Any) -> None:
        pass


def _tracer() -> Any:
    if os.environ.get("POWERTOOLS_TRACE_DISABLED", "true").lower() in ("false", "0"):
        from aws_lambda_powertools import Tracer

        return Tracer()
    return _NoTracer()


tracer = _tracer()
