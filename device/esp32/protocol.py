"""docs/protocol.md for MicroPython: topics, param specs, outcomes and the service clock.

Pure functions and tiny classes with no I/O, so they are the same on the
device and under the unix port. CPython's iotbridge_contract is the reference;
this file follows the same document, written for a small heap (no re, no typing).
"""

try:
    from time import ticks_diff, ticks_ms
except ImportError:  # CPython tools only
    import time

    def ticks_ms():
        return int(time.monotonic() * 1000)

    def ticks_diff(a, b):
        return a - b


COMMANDS = "commands"
HISTORY = 16  # outcomes kept in the commands shadow's reported section
MAX_QUEUE = 16  # pending commands held in RAM (the API allows 10)
MAX_RESULT_BYTES = 256
MAX_ERROR_CHARS = 160

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
REJECTED = "REJECTED"
TIMED_OUT = "TIMED_OUT"
EXPIRED = "EXPIRED"

_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def shadow_topic(thing, op, shadow=None):
    """`$aws/things/{thing}/shadow[/name/{shadow}]/{op}`; op may be "update/delta" etc."""
    if shadow:
        return "$aws/things/%s/shadow/name/%s/%s" % (thing, shadow, op)
    return "$aws/things/%s/shadow/%s" % (thing, op)


def valid_command_id(cid):
    if not isinstance(cid, str) or not 1 <= len(cid) <= 64:
        return False
    for ch in cid:
        if ch not in _ID_CHARS:
            return False
    return True


def _check_value(name, spec, value):
    kind, _, arg = spec.rstrip("?").partition(":")
    if kind == "bool":
        if not isinstance(value, bool):
            return name + ": expected true or false"
        return None
    if kind == "int" or kind == "num":
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind == "num" else int):
            return name + (": expected an integer" if kind == "int" else ": expected a number")
        if arg:
            lo, _, hi = arg.partition("..")
            conv = int if kind == "int" else float
            if (lo and value < conv(lo)) or (hi and value > conv(hi)):
                return name + ": must be within " + arg
        return None
    if kind == "str":
        if not isinstance(value, str):
            return name + ": expected a string"
        if arg and len(value) > int(arg):
            return name + ": at most " + arg + " characters"
        return None
    if kind == "enum":
        if value not in arg.split("|"):
            return name + ": must be one of " + ", ".join(arg.split("|"))
        return None
    return name + ": unknown spec " + spec


def check_params(specs, params):
    """None when params match specs exactly, else the reason (the command is REJECTED)."""
    if not isinstance(params, dict):
        return "params must be an object"
    for name in params:
        if name not in specs:
            return "unknown parameter " + name
    for name in specs:
        spec = specs[name]
        if name not in params:
            if not spec.endswith("?"):
                return name + ": required"
        else:
            err = _check_value(name, spec, params[name])
            if err:
                return err
    return None


def outcome(state, action, done_at, result=None, error=None):
    """A reported outcome; keys without a value are left out (null deletes in a shadow)."""
    entry = {"state": state, "action": action, "doneAt": done_at}
    if result is not None:
        import json

        if len(json.dumps(result, separators=(",", ":"))) > MAX_RESULT_BYTES:
            result = {"truncated": True}
        entry["result"] = result
    if error:
        entry["error"] = str(error)[:MAX_ERROR_CHARS]
    return entry


def expired(entry, now_ms):
    """Started only if timestamp*1000 <= expiresAt (the service's clock, not ours)."""
    exp = entry.get("expiresAt")
    return isinstance(exp, int) and not isinstance(exp, bool) and now_ms > exp


def pending_commands(section):
    """[(id, entry)] of a delta/desired section, oldest issuedAt first; malformed ids left out."""
    out = []
    if not isinstance(section, dict):
        return out
    for cid in section:
        entry = section[cid]
        if valid_command_id(cid) and isinstance(entry, dict):
            out.append((cid, entry))
    out.sort(key=lambda item: item[1].get("issuedAt", 0) if isinstance(item[1].get("issuedAt", 0), int) else 0)
    return out


def history_ids(reported):
    """Ids of the outcomes in a reported section, oldest doneAt first."""
    items = []
    if isinstance(reported, dict):
        for cid in reported:
            v = reported[cid]
            if isinstance(v, dict):
                done = v.get("doneAt", 0)
                items.append((done if isinstance(done, int) else 0, cid))
    items.sort()
    return [cid for _, cid in items]


class History:
    """Which outcomes the commands shadow holds, so the device can keep it to HISTORY."""

    def __init__(self, keep=HISTORY):
        self.keep = keep
        self.ids = []

    def reset(self, reported):
        self.ids = history_ids(reported)

    def add(self, cid):
        """Record an outcome about to be reported; returns the ids to null in the same update."""
        if cid in self.ids:
            self.ids.remove(cid)
        self.ids.append(cid)
        drop = []
        while len(self.ids) > self.keep:
            drop.append(self.ids.pop(0))
        return drop


def outcome_update(cid, entry, drop_ids):
    """The one update that reports an outcome, clears its desired entry and prunes history."""
    reported = {cid: entry}
    for old in drop_ids:
        reported[old] = None
    return {"state": {"reported": reported, "desired": {cid: None}}, "clientToken": cid}


class ServiceClock:
    """The shadow service's time, in ms: the last document's `timestamp` plus our ticks since.

    An ESP32 has no RTC; this keeps expiry decisions on the service's clock.
    ticks_diff is valid for about 6 days on an ESP32, far longer than between
    two shadow documents.
    """

    def __init__(self):
        self.base_ms = None
        self.at = 0

    def observe(self, doc):
        ts = doc.get("timestamp") if isinstance(doc, dict) else None
        if isinstance(ts, (int, float)) and not isinstance(ts, bool):
            self.base_ms = int(ts) * 1000
            self.at = ticks_ms()
            return self.base_ms
        return None

    def now_ms(self):
        if self.base_ms is None:
            return 0
        return self.base_ms + ticks_diff(ticks_ms(), self.at)
