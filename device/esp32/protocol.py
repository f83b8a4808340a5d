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


def params_digest(params):
    """iotbridge_contract.commands.params_digest: 12 hex digits of the SHA-256 of the params as
    compact, key-sorted JSON. Written here for what an action's params are (flat: enum, bool,
    int, plain ASCII strings), where MicroPython's JSON is byte for byte CPython's; for other
    params (nested, floats, strings needing escapes) it is None: no digest, and the API then
    compares the action only, as documented for devices without one. Never a wrong digest.
    """
    parts = []
    for k in sorted(params):
        v = params[k]
        if isinstance(v, (dict, list, tuple, float)):
            return None
        for x in (k, v):
            if isinstance(x, str) and len(json.dumps(x).encode()) != len(x) + 2:
                return None
        parts.append(json.dumps(k) + ":" + json.dumps(v))
    import hashlib
    from binascii import hexlify

    return hexlify(hashlib.sha256(("{" + ",".join(parts) + "}").encode()).digest()[:6]).decode()


def outcome(state, action, done_at, result=None, error=None, digest=None):
    """A reported outcome; keys without a value are left out (null deletes in a shadow).

    digest: params_digest of the command's params, so the API can tell a retry of
    the id with other params (409 ID_CONFLICT) after the command finished.
    """
    entry = {"state": state, "action": action, "doneAt": done_at}
    if digest:
        entry["paramsDigest"] = digest
    if result is not None:
        if len(json.dumps(result)) > MAX_RESULT_BYTES:
            result = {"truncated": True}
        entry["result"] = result
    if error:
        entry["error"] = str(error)[:MAX_ERROR_CHARS]
    return entry


def next_command(pending):
    """The pending command issued first, as (id, entry), or None.

    An entry that is no command object comes first (it is answered REJECTED at once); one
    under a key that is no command id is dropped (the API makes none: nothing to answer under).
    """
    best = None
    first = 0
    for cid in list(pending):
        entry = pending[cid]
        if not valid_command_id(cid):
            del pending[cid]
            continue
        if not isinstance(entry, dict):
            return cid, entry
        t = entry.get("issuedAt")
        t = t if isinstance(t, int) else 0
        if best is None or t < first:
            best, first = cid, t
    return None if best is None else (best, pending[best])


class Ids:
    """Up to `slots` command ids (<= 64 bytes each), oldest first, in memory allocated once.

    The firmware keeps ids for as long as it runs (history, recent reports);
    as str objects they would lie scattered between short-lived documents and
    fragment a small heap.
    """

    def __init__(self, slots, buf=None):
        self.ids = bytearray(65 * slots) if buf is None else buf  # per slot: length byte + id
        self.order = bytearray(range(slots))  # slot numbers, [:n] in use, oldest first
        self.n = 0

    def __len__(self):
        return self.n

    def find(self, cid):
        """Position of cid (oldest is 0), or -1."""
        b = cid.encode()
        k = len(b)
        ids = self.ids
        for i in range(self.n):
            o = self.order[i] * 65
            if ids[o] == k and memoryview(ids)[o + 1:o + 1 + k] == b:
                return i
        return -1

    def get(self, i):
        o = self.order[i] * 65
        return str(self.ids[o + 1:o + 1 + self.ids[o]], "utf-8")

    def pop(self, i=0):
        cid = self.get(i)
        order = self.order
        s = order[i]
        for j in range(i, self.n - 1):
            order[j] = order[j + 1]
        self.n -= 1
        order[self.n] = s
        return cid

    def append(self, cid):
        """Add cid as the newest; the oldest goes when full."""
        if self.n == len(self.order):
            self.pop(0)
        b = cid.encode()[:64]
        o = self.order[self.n] * 65
        self.ids[o] = len(b)
        self.ids[o + 1:o + 1 + len(b)] = b
        self.n += 1

    def clear(self):
        self.n = 0


def _grow(out, p):
    big = bytearray(2 * len(out) + 256)
    big[:p] = memoryview(out)[:p]
    return big


def read_trimmed(n, fill, targets, out=None, piece=256, collapse=None):
    """Read an n-byte JSON document in small pieces, leaving out the members we never read.

    fill(view) reads exactly len(view) bytes into view (the MQTT client's socket).
    targets: {depth: (b"key", ...)}; depth 1 is the top-level object's members.
    The object or array value of such a member is replaced by 0, so the result
    stays valid JSON. A shadow document's `metadata` (a timestamp per leaf) is
    as large as its state; the commands get's `desired` repeats its `delta`.
    collapse: (depth, b"key"): in that member's object, each member's object
    value is replaced by its `doneAt` number (0 without one), and the object
    is cut into a list of objects of at most 8 members: a get's outcomes
    arrive as [{"id": doneAt, ...}, ...], all that is read of them. (Parsed
    whole, 16 outcomes need one 272-byte dict table, a block a small,
    fragmented heap may not have; 8 need 128 bytes.)
    Whitespace between tokens is left out too.
    out: a bytearray to write the result into (allocated once by the caller, so
    a document needs no new block of the heap); a larger one is allocated only
    if the result does not fit. piece: the read buffer, or its size.
    Returns a memoryview of the result.
    """
    buf = memoryview(bytearray(piece) if isinstance(piece, int) else piece)
    if out is None:
        out = bytearray(min(n, 256))
    p = 0  # bytes written to out
    kb = bytearray(16)  # the latest string where a key may be wanted
    kl = -1  # its length; -1: none, or too long to be a key we look for
    last = -1  # length of the key just closed, waiting for its ':'
    cdepth, ckey = collapse or (-1, b"")
    cin = -1  # while inside the collapse object: the depth of its members
    cn = 0  # members of the collapse object's current chunk, less one
    db = bytearray(20)  # the doneAt digits of the outcome being collapsed
    dn = -1  # >= 0: reading doneAt digits (that many so far); <= -2: read, -2 - count
    depth = 0
    in_str = esc = False
    want = 0  # after a wanted key's ':': 1 drop its value, 2 collapse its value
    skip = -1  # >= 0: dropping a value until depth falls back to this
    while n:
        k = len(buf) if n > len(buf) else n
        fill(buf[:k])
        n -= k
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
                if skip >= 0:
                    continue
            elif c == 0x20 or c == 0x0A or c == 0x0D or c == 0x09:
                continue
            elif c == 0x22:
                in_str = True
                if skip < 0:
                    kl = 0 if depth in targets or depth == cdepth else -1
                else:
                    kl = 0 if skip == cin and depth == cin + 1 else -1
                    continue
            elif skip >= 0:
                if dn >= 0:
                    if 0x30 <= c <= 0x39 or c == 0x2D:
                        if dn < 20:
                            db[dn] = c
                            dn += 1
                        continue
                    dn = -2 - dn
                if c == 0x7B or c == 0x5B:
                    depth += 1
                elif c == 0x7D or c == 0x5D:
                    depth -= 1
                    if depth == skip:
                        skip = -1
                        if depth == cin:
                            got = -2 - dn if dn < -1 else 0
                            if p + (got or 1) > len(out):  # grown only when it must: see the firmware's _publish
                                out = _grow(out, p)
                            if got:
                                out[p:p + got] = memoryview(db)[:got]
                                p += got
                            else:
                                out[p] = 0x30  # "0"
                                p += 1
                        dn = -1
                elif c == 0x3A:
                    if skip == cin and depth == cin + 1 and _is_target(kb, last, (b"doneAt",)):
                        dn = 0
                    last = -1
                continue
            else:
                if want:
                    if want == 2 and c == 0x7B:
                        cin = depth + 1
                        want = 0
                    elif c == 0x7B or c == 0x5B:
                        skip = depth
                        depth += 1
                        want = 0
                        c = 0x30  # the value becomes 0
                    else:
                        want = 0
                if skip >= 0:
                    pass
                elif c == 0x7B and depth == cin:  # an outcome: kept as its doneAt (written when it closes)
                    skip = depth
                    depth += 1
                    dn = -1
                    continue
                elif c == 0x3A:
                    if last > 0:
                        if _is_target(kb, last, targets.get(depth, ())):
                            want = 1
                        elif depth == cdepth and _is_target(kb, last, (ckey,)):
                            want = 2
                    last = -1
                elif c == 0x7B or c == 0x5B:
                    depth += 1
                    last = -1
                elif c == 0x7D or c == 0x5D:
                    depth -= 1
                    if depth < cin:  # the outcomes close (below)
                        cin = -2
                    last = -1
            if p + 3 > len(out):  # room for the most written below: "},{"
                out = _grow(out, p)
            if depth == cin and not in_str:  # the collapse object's own punctuation
                if c == 0x7B:  # the opening: "[{"
                    out[p] = 0x5B
                    p += 1
                    cn = 0  # members of the collapse object's current chunk, less one
                elif c == 0x2C:
                    cn += 1
                    if cn == 8:  # "},{"
                        cn = 0  # members of the collapse object's current chunk, less one
                        out[p] = 0x7D
                        out[p + 1] = 0x2C
                        p += 2
                        c = 0x7B
            elif cin == -2:  # the closing: "}]"
                cin = -1
                out[p] = 0x7D
                p += 1
                c = 0x5D
            out[p] = c
            p += 1
    return memoryview(out)[:p]


def _is_target(kb, n, keys):
    for key in keys:
        if len(key) == n:
            for j in range(n):
                if kb[j] != key[j]:
                    break
            else:
                return True
    return False
