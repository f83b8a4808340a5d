"""One Lambda execution environment: `python -m iotbridge_local.apigw.worker HANDLER TIMEOUT_S [FUNCTION_NAME]`.

Reads one JSON event per line on stdin, answers one JSON line per event on the
stdout it was started with. The function's own prints and logs go to stderr
(the environment's log), so they can never corrupt an answer.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

from iotbridge_local.apigw.event import LambdaContext


def main() -> None:
    handler_path, timeout_s = sys.argv[1], float(sys.argv[2])
    name = sys.argv[3] if len(sys.argv) > 3 else "function"
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # fd 1 is now the log
    sys.stdout = sys.stderr
    module_name, _, attr = handler_path.rpartition(".")
    handler = getattr(importlib.import_module(module_name), attr)
    answers.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            result = {"ok": handler(json.loads(line), LambdaContext(
                timeout_s=timeout_s, function_name=name, invoked_function_arn=arn, log_group_name=f"/aws/lambda/{name}"
            ))}
        except Exception:
            traceback.print_exc()
            result = {"error": "unhandled exception in the function"}
        answers.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
