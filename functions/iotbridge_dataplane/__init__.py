"""Device shadow calls to AWS IoT's data plane, cheaper than boto3 makes them.

boto3 spends about 0.75 ms of CPU on one shadow call here; the same call, signed by
botocore's SigV4 signer and sent on a kept-alive urllib3 pool, about 0.28 ms, and
it answers 0.45 ms sooner (docs/benchmarks.md, session 10). A command makes about
five such calls and a bulk job two per device, so this is most of what the
functions spend outside AWS IoT.

`shadow_client(sdk)` takes the boto3 iot-data client, which still decides the
endpoint, region, credentials and signing name (nothing here knows where it
runs), and answers what has its `get_thing_shadow` and `update_thing_shadow`.
`IOTBRIDGE_SHADOW_CALLS=sdk` keeps boto3 for them: moto, which the unit tests
run against, answers only boto3.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def shadow_client(sdk: Any, *, connect_timeout: float, read_timeout: float, max_connections: int = 10,
                  budget: Callable[[], float | None] | None = None) -> Any:  # fmt: skip
    """budget: seconds a call may take at most, asked before each call (None: its timeouts). boto3 ignores it."""
    if os.environ.get("IOTBRIDGE_SHADOW_CALLS") == "sdk":
        return sdk
    from iotbridge_dataplane.signed import SignedShadows

    return SignedShadows(sdk, connect_timeout=connect_timeout, read_timeout=read_timeout,
                         max_connections=max_connections, budget=budget)  # fmt: skip
