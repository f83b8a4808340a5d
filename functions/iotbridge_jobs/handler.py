"""The fan-out function: `{"jobId": …, "page": n}` in, that page of the job queued on its devices.

Invoked asynchronously by the API (`lambda.invoke(InvocationType="Event")`), one
event per page. An attempt that could not reach every device raises, so Lambda
retries the event (twice, per the template's EventInvokeConfig); the page's
record says how far each attempt got, and `GET /commands/jobs/{id}` shows it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from iotbridge_contract import names
from iotbridge_jobs import fanout

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    job_id, page = event.get("jobId"), event.get("page")
    if not isinstance(job_id, str) or not names.COMMAND_ID_RE.fullmatch(job_id) or not isinstance(page, int) or page < 0:
        logger.error("not a fan-out event", extra={"event": str(event)[:500]})
        return {"error": "expected {\"jobId\": <id>, \"page\": <n >= 0>}"}  # a retry would not fix it
    logger.append_keys(jobId=job_id, page=page)
    try:
        outcome = fanout.run_page(job_id, page, by="fanout", remaining_ms=context.get_remaining_time_in_millis)
    except fanout.Incomplete as exc:
        logger.warning("page not fully queued; Lambda retries it", extra=exc.outcome.as_dict())
        raise
    logger.info("page done", extra=outcome.as_dict())
    return outcome.as_dict()
