"""Lambda entry point: everything happens in `app`."""

from __future__ import annotations

from typing import Any

from iotbridge_api.app import app
from iotbridge_api.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return app.resolve(event, context)
