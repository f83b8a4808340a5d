"""The persistent log of commands this device has run: "never twice", across reboots.

A line file in flash, append-only between compactions:
    S <id>\n            the handler is about to start
    D <id> <json>\n     its outcome (also for REJECTED/EXPIRED: nothing ran)
An `S` without a `D` at load time means the device restarted while running
that command; it is logged as FAILED and never started again.

RAM holds only a 16-bit hash per logged id (an array, ~2 bytes each). A hash
hit is confirmed by scanning the file, so the answer is exact and the heap
cost stays flat however long the ids are. The newest `keep` outcomes are
kept (docs/protocol.md: 256); the file is compacted when it holds twice that.
"""

import json
import os
from array import array

INTERRUPTED = "interrupted by a restart; not run again"


def _h(cid):
    return hash(cid) & 0xFFFF


class Ledger:
    def __init__(self, path, keep=256):
        self.path = path
        self.keep = keep
        self.hashes = array("H")
        self._load()

    def _load(self):
        open_id = None
        try:
            with open(self.path) as f:
                for line in f:
                    if line.startswith("D "):
                        cid = line[2:line.find(" ", 2)]
                        self.hashes.append(_h(cid))
                        if cid == open_id:
                            open_id = None
                    elif line.startswith("S "):
                        open_id = line[2:].strip()
        except OSError:
            return  # no log yet: a new device
        if open_id:
            self.done(open_id, {"state": "FAILED", "action": "", "doneAt": 0, "error": INTERRUPTED})

    def _maybe(self, h):
        for x in self.hashes:  # MicroPython's array has no `in`
            if x == h:
                return True
        return False

    def __len__(self):
        return len(self.hashes)

    def get(self, cid):
        """The logged outcome of cid, or None if it never ran here."""
        if not self._maybe(_h(cid)):
            return None
        prefix = "D " + cid + " "
        found = None
        try:
            with open(self.path) as f:
                for line in f:
                    if line.startswith(prefix):
                        found = line[len(prefix):]
        except OSError:
            return None
        return json.loads(found) if found else None

    def start(self, cid):
        self._append("S " + cid + "\n")

    def done(self, cid, entry):
        self._append("D " + cid + " " + json.dumps(entry, separators=(",", ":")) + "\n")
        self.hashes.append(_h(cid))
        if len(self.hashes) >= 2 * self.keep:
            self._compact()

    def _append(self, line):
        with open(self.path, "a") as f:
            f.write(line)

    def _compact(self):
        # Stream the newest `keep` outcomes into a new file; never the whole log in RAM.
        skip = len(self.hashes) - self.keep
        tmp = self.path + ".tmp"
        hashes = array("H")
        with open(self.path) as src, open(tmp, "w") as dst:
            for line in src:
                if not line.startswith("D "):
                    continue
                if skip > 0:
                    skip -= 1
                    continue
                dst.write(line)
                hashes.append(_h(line[2:line.find(" ", 2)]))
        os.rename(tmp, self.path)
        self.hashes = hashes
