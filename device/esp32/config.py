"""config.json, with defaults for everything but the thing name."""

import json

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 1883,
    "tls": False,
    "ca": "ca.der",  # DER files on the device's flash (MicroPython's ssl does not take PEM)
    "cert": "cert.der",
    "key": "key.der",
    "server_hostname": None,  # TLS SNI / name check; defaults to host
    "user": None,
    "password": None,
    "keepalive": 60,
    "state": "executed.log",  # the persistent command log
    "pins": {"led": 2, "relay": 4},
    "wifi": None,  # {"ssid": ..., "password": ...}
}


def load(path="config.json"):
    with open(path) as f:
        cfg = json.load(f)
    if not cfg.get("thing"):
        raise ValueError("config: 'thing' is required")
    for key in DEFAULTS:
        if key not in cfg:
            cfg[key] = DEFAULTS[key]
    return cfg
