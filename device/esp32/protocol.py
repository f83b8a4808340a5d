"""docs/protocol.md for MicroPython: topics, param specs, outcomes, and trimming documents.

Pure functions, no I/O, the same on the device and under the unix port.
CPython's iotbridge_contract follows the same document; this file is written
for a small heap instead (no re, no typing, no classes).
"""

import json

COMMANDS = "commands"
HISTORY = 16  # outcomes kept in the commands shadow's reported section
MAX_RESULT_BYTES = 256
MAX_ERROR_CHARS = 160

SUCCEEDED = "SUCCEEDED"
FAILED = "FAILED"
REJECTED = "REJECTED"
TIMED_OUT = "TIMED_OUT"
EXPIRED = "EXPIRED"


def shadow_topic(thing, op, shadow=None):
    """`$aws/things/{thing}/shadow[/name/{shadow}]/{op}`; op may be "update/delta" etc."""
    if shadow:
        return "$aws/things/" + thing + "/shadow/name/" + shadow + "/" + op
    return "$aws/things/" + thing + "/shadow/" + op


def valid_command_id(cid):
    """1-64 characters of a-z A-Z 0-9 _ - (it is also the shadow clientToken)."""
    if not isinstance(cid, str) or not 0 < len(cid) <= 64:
        return False
    for c in cid:
        if not (c.isalpha() or c.isdigit() or c in "_-") or ord(c) > 127:
            return False
    return True


def check_params(specs, params):
    """None when params match specs exactly, else the reason (the command is then REJECTED).

    A spec is bool | int[:MIN..MAX] | num[:MIN..MAX] | str[:MAXLEN] | enum:a|b|c,
    with a trailing ? when optional.
    """
    if not isinstance(params, dict):
        return "params must be an object"
    for name in params:
        if name not in specs:
            return "unknown parameter " + name
    for name in specs:
        spec = specs[name]
        if name not in params:
            if spec[-1] != "?":
                return name + ": required"
            continue
        v = params[name]
        kind, _, arg = spec.rstrip("?").partition(":")
        if kind == "enum":
            ok = v in arg.split("|")
        elif kind == "bool":
            ok = isinstance(v, bool)
        elif kind == "str":
            ok = isinstance(v, str) and not (arg and len(v) > int(arg))
        elif kind == "int" or kind == "num":
            ok = not isinstance(v, bool) and isinstance(v, int if kind == "int" else (int, float))
            if ok and arg:
                conv = int if kind == "int" else float
                lo, _, hi = arg.partition("..")
                ok = not ((lo and v < conv(lo)) or (hi and v > conv(hi)))
        else:
            ok = False
        if not ok:
            return name + ": expected " + spec.rstrip("?")
    return None


def outcome(state, action, done_at, result=None, error=None):
    """A reported outcome; keys without a value are left out (null deletes in a shadow)."""
    entry = {"state": state, "action": action, "doneAt": done_at}
    if result is not None:
        if len(json.dumps(result)) > MAX_RESULT_BYTES:
            result = {"truncated": True}
        entry["result"] = result
    if error:
        entry["error"] = str(error)[:MAX_ERROR_CHARS]
    return entry


def next_command(pending):
    """The pending command issued first, as (id, entry), or None; drops malformed entries."""
    best = None
    first = 0
    for cid in list(pending):
        entry = pending[cid]
        if not (valid_command_id(cid) and isinstance(entry, dict)):
            del pending[cid]
            continue
        t = entry.get("issuedAt")
        t = t if isinstance(t, int) else 0
        if best is None or t < first:
            best, first = cid, t
    return None if best is None else (best, pending[best])


def history_ids(reported):
    """Ids of the outcomes in a reported section, oldest doneAt first."""
    items = []
    if isinstance(reported, dict):
        for cid in reported:
            v = reported[cid]
            if isinstance(v, dict):
                t = v.get("doneAt")
                items.append((t if isinstance(t, int) else 0, cid))
    items.sort()
    return [cid for _, cid in items]


def blank(buf, targets):
    """Overwrite, in place, the object values of the members named in `targets` with `0` and spaces.

    targets: {depth: (b"key", ...)}; depth 1 is the top-level object's members.
    The device never reads a document's `metadata` (a timestamp per leaf) nor
    the `desired` copy of what `delta` already holds; blanking them in the
    received bytearray means json.loads never builds them. One pass over the
    bytes, no copy of the document.
    """
    depth = 0
    i = 0
    n = len(buf)
    ks = ke = -1  # the last string seen at a target depth: maybe a key
    while i < n:
        c = buf[i]
        if c == 0x22:
            j = _string_end(buf, i)
            if depth in targets:
                ks, ke = i + 1, j - 1
            i = j
            continue
        if c == 0x3A:  # ':' follows a key
            if ks >= 0 and bytes(buf[ks:ke]) in targets[depth]:
                j = i + 1
                while buf[j] in (0x20, 0x09, 0x0A, 0x0D):
                    j += 1
                if buf[j] in (0x7B, 0x5B):
                    end = _close(buf, j)
                    buf[j] = 0x30  # "0"
                    for k in range(j + 1, end):
                        buf[k] = 0x20
                    i = end
                    ks = -1
                    continue
            ks = -1
        elif c in (0x7B, 0x5B):
            depth += 1
            ks = -1
        elif c in (0x7D, 0x5D):
            depth -= 1
            ks = -1
        i += 1


def _string_end(buf, i):
    """Index just past the JSON string that starts at buf[i] (a quote)."""
    i += 1
    while buf[i] != 0x22:
        i += 2 if buf[i] == 0x5C else 1
    return i + 1


def _close(buf, i):
    """Index just past the object or array that starts at buf[i]."""
    depth = 0
    while True:
        c = buf[i]
        if c == 0x22:
            i = _string_end(buf, i)
            continue
        if c in (0x7B, 0x5B):
            depth += 1
        elif c in (0x7D, 0x5D):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
