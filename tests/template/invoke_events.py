"""Drive the real function handlers with events/*.json against moto's AWS IoT.

Run as `python -m tests.template.invoke_events EVENTS_DIR` in a fresh process
whose environment is the deployed functions' environment (the test builds it
from template.yaml); prints one JSON line per invocation:
{"event": name, "status": ..., "headers": {...}, "body": ...}.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

ACTIONS = {"led": {"state": "enum:on|off|toggle"}, "ping": {}}


class LambdaContext:
    """What Lambda passes as `context`, as much as Powertools and the handler read."""

    def __init__(self, name: str, timeout_ms: int) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:eu-west-1:123456789012:function:{name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "2026/11/22/[$LATEST]0"
        self._timeout_ms = timeout_ms

    def get_remaining_time_in_millis(self) -> int:
        return self._timeout_ms


def main(events_dir: Path) -> None:
    os.environ["IOTBRIDGE_SHADOW_CALLS"] = "sdk"  # moto answers boto3 only (iotbridge_dataplane)
    with mock_aws():
        # The thing the samples talk about, advertising the actions the samples use.
        boto3.client("iot").create_thing(thingName="pi-01")
        reported = {"state": {"reported": {"led": "off", "actions": ACTIONS}}}
        boto3.client("iot-data").update_thing_shadow(thingName="pi-01", payload=json.dumps(reported).encode())

        from iotbridge_api.handler import lambda_handler as api
        from iotbridge_jobs import record
        from iotbridge_jobs.handler import lambda_handler as jobs
        from iotbridge_presence.handler import lambda_handler as presence

        def call(name: str) -> None:
            event = json.loads((events_dir / f"{name}.json").read_text())
            if name.startswith("jobs-"):
                # The page bulk.start() writes before it invokes the fan-out: pi-01, a ping.
                data = boto3.client("iot-data")
                job, shard = event["jobId"], record.page_thing(event["jobId"], 0)
                boto3.client("iot").create_thing(thingName=shard)
                command = json.dumps({"action": "ping", "params": {}, "issuedAt": 1, "expiresAt": 2**42})
                page = {"state": {"reported": {"things": "pi-01", "command": command}}}
                page_name = record.page_shadow(job, 0)
                data.update_thing_shadow(thingName=shard, shadowName=page_name, payload=json.dumps(page).encode())
                result = jobs(event, LambdaContext("iotbridge-jobs", 60_000))
                doc = json.loads(data.get_thing_shadow(thingName="pi-01", shadowName="commands")["payload"].read())
                pending = sorted(doc["state"].get("desired", {}))
                print(json.dumps({"event": name, "result": result, "pending": pending}), flush=True)
                return
            if name.startswith("presence-"):
                result: Any = presence(event, LambdaContext("iotbridge-presence", 10_000))
                print(json.dumps({"event": name, "result": result}), flush=True)
                return
            response = api(event, LambdaContext("iotbridge-api", 29_000))
            body = json.loads(response["body"]) if response.get("body") else None
            # A REST proxy answer may carry headers in either view (Powertools uses the multi-value one).
            headers = dict(response.get("headers") or {})
            headers.update({k: ",".join(v) for k, v in (response.get("multiValueHeaders") or {}).items()})
            line = {"event": name, "status": response["statusCode"], "headers": headers, "body": body}
            print(json.dumps(line), flush=True)

        for name in (
            "get-health",
            "get-devices",
            "presence-connected",
            "get-device",
            "presence-disconnected",
            "get-device",
            "post-command",
            "get-command",
            "bad-thing-name",
            "post-command-invalid-json",
            "jobs-fanout-page",
        ):
            call(name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
