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


def read_trimmed(n, fill, targets, piece=256):
    """Read an n-byte JSON document in small pieces, leaving out the members we never read.

    fill(view) reads exactly len(view) bytes into view (the MQTT client's socket).
    targets: {depth: (b"key", ...)}; depth 1 is the top-level object's members.
    The object or array value of such a member is replaced by 0, so the result
    stays valid JSON. A shadow document's `metadata` (a timestamp per leaf) is
    as large as its state; the commands get's `desired` repeats its `delta`.
    Dropping them while reading means the heap never holds them. What is kept
    grows one bytearray (in place while the heap after it is free), so there is
    no second copy, and no allocation per string.
    """
    buf = bytearray(min(n, piece))
    mv = memoryview(buf)
    out = bytearray()
    kb = bytearray(16)  # the latest string at a target depth: maybe a key
    kl = -1  # its length; -1: none, or too long to be a target
    last = -1  # length of the key just closed, waiting for its ':'
    depth = 0
    in_str = esc = want = False
    skip = -1  # >= 0: dropping a value until depth falls back to this
    while n:
        k = min(n, len(buf))
        fill(mv[:k])
        n -= k
        start = 0 if skip < 0 else -1  # where the bytes being kept began in this piece
        for i in range(k):
            c = buf[i]
            if in_str:
                if esc:
                    esc = False
                elif c == 0x5C:
                    esc = True
                elif c == 0x22:
                    in_str = False
                    last = kl
                    kl = -1
                elif kl >= 0:
                    if kl < 16:
                        kb[kl] = c
                        kl += 1
                    else:
                        kl = -1
                continue
            if c == 0x22:
                in_str = True
                if skip < 0 and depth in targets:
                    kl = 0
                continue
            if skip >= 0:
                if c == 0x7B or c == 0x5B:
                    depth += 1
                elif c == 0x7D or c == 0x5D:
                    depth -= 1
                    if depth == skip:
                        skip = -1
                        start = i + 1
                continue
            if want:
                if c == 0x20 or c == 0x0A or c == 0x0D or c == 0x09:
                    continue
                want = False
                if c == 0x7B or c == 0x5B:
                    if i > start:
                        out += mv[start:i]
                    out.append(0x30)  # "0"
                    skip = depth
                    depth += 1
                    start = -1
                    continue
            if c == 0x3A:
                want = last > 0 and _is_target(kb, last, targets.get(depth, ()))
                last = -1
            elif c == 0x7B or c == 0x5B:
                depth += 1
                last = -1
            elif c == 0x7D or c == 0x5D:
                depth -= 1
                last = -1
        if 0 <= start < k:
            out += mv[start:k]
    return out


def _is_target(kb, n, keys):
    for key in keys:
        if len(key) == n:
            for j in range(n):
                if kb[j] != key[j]:
                    break
            else:
                return True
    return False
