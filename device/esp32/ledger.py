"""The persistent log of commands this device has run: "never twice", across reboots.

A line file in flash, append-only between compactions:
    S <id> <action>\n   the handler is about to start
    D <id> <json>\n     its outcome (also for REJECTED/EXPIRED: nothing ran)
An `S` without a `D` at load time means the device restarted while running
that command; it is logged as FAILED and never started again.

RAM holds only a 16-bit hash per logged id, in one array allocated at boot
(2 bytes per slot, never resized, so it does not fragment the heap). A hash
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
    def __init__(self, path, keep=256, hashes=None):
        """hashes: an array("H") of 2*keep entries to use (the firmware allocates it early)."""
        self.path = path
        self.keep = keep
        # Room for 2*keep before a compaction; filled in place (no second buffer to copy from).
        self.hashes = array("H", range(2 * keep)) if hashes is None else hashes
        self.count = 0
        self._load()

    def _load(self):
        open_id = action = None
        total = 0
        line = "\n"
        try:
            with open(self.path) as f:
                for line in f:
                    if line.startswith("D "):
                        cid = line[2:line.find(" ", 2)]
                        if total < len(self.hashes):
                            self.hashes[total] = _h(cid)
                        total += 1
                        if cid == open_id:
                            open_id = None
                    elif line.startswith("S "):
                        open_id, _, action = line[2:].strip().partition(" ")
        except OSError:
            return  # no log yet: a new device
        if not line.endswith("\n"):
            self._append("\n")  # the power failed mid-line: the next line starts on its own
        self.count = min(total, len(self.hashes))
        if total >= len(self.hashes):  # a compaction was cut short: finish it
            self._compact(total)
        if open_id:
            self.done(open_id, {"state": "FAILED", "action": action, "doneAt": 0, "error": INTERRUPTED})

    def _add(self, h):
        self.hashes[self.count] = h
        self.count += 1

    def _maybe(self, h):
        hashes = self.hashes
        for i in range(self.count):  # MicroPython's array has no `in`
            if hashes[i] == h:
                return True
        return False

    def __len__(self):
        return self.count

    def get(self, cid):
        """The logged outcome of cid, or None if it never ran here."""
        if not self._maybe(_h(cid)):
            return None
        prefix = "D " + cid + " "
        started = "S " + cid + " "
        found = None
        ran = False
        try:
            with open(self.path) as f:
                for line in f:
                    if line.startswith(prefix):
                        found = line[len(prefix):]
                    elif line.startswith(started):
                        ran = True
        except OSError:
            return None
        if not found:
            # Started, outcome never written (the write failed): it ran, so it does not run again.
            return {"state": "FAILED", "doneAt": 0, "error": INTERRUPTED} if ran else None
        try:
            return json.loads(found)
        except ValueError:  # cut off by a power failure while it was written: it did run
            return {"state": "FAILED", "doneAt": 0, "error": INTERRUPTED}

    def start(self, cid, action):
        self._append("S " + cid + " " + action + "\n")

    def done(self, cid, entry):
        # Counted first: if the write fails, get() still scans, finds the start, and the command
        # is not run again. Written in pieces, the outcome streamed: no string of the line's
        # size, so this needs no contiguous free block of the heap (it comes after the command ran).
        self._add(_h(cid))
        with open(self.path, "a") as f:
            f.write("D ")
            f.write(cid)
            f.write(" ")
            json.dump(entry, f, separators=(",", ":"))
            f.write("\n")
        if self.count >= len(self.hashes):
            self._compact(self.count)

    def _append(self, line):
        with open(self.path, "a") as f:
            f.write(line)

    def _compact(self, total):
        # Stream the newest `keep` outcomes into a new file; never the whole log in RAM.
        skip = total - self.keep
        tmp = self.path + ".tmp"
        self.count = 0
        with open(self.path) as src, open(tmp, "w") as dst:
            for line in src:
                if not line.startswith("D "):
                    continue
                if skip > 0:
                    skip -= 1
                    continue
                dst.write(line)
                self._add(_h(line[2:line.find(" ", 2)]))
        os.rename(tmp, self.path)
