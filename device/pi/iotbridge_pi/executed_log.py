"""The persistent log of command ids a device has started, with their outcomes.

It is what makes "never run twice" survive QoS 1 redelivery, reconnects and
reboots: an id is written here *before* its handler starts, and its outcome
after. An id found here is never run again; its logged outcome is reported
again instead.

On disk it is append-only, one JSON line per record (`executed.jsonl`):
`{"id", "action", "outcome"}`, with `outcome` null for "started". A command
costs one `fdatasync`, after its `started` line and before its handler runs;
the `finished` line is appended without a sync (once reported, the outcome is
durable in the shadow; if a power cut takes the line, the id is still logged
as started and is answered as interrupted, never run again). Every so often
the file is rewritten to the newest CAPACITY ids (temp file, fsync, rename,
directory fsync), so it stays bounded.

A power cut during an append can leave a torn last line: it is ignored (it was
never synced, so no handler ran on the strength of it) and the file rewritten
before the next append. Any other unreadable line is an error: an empty or
partial log would let commands run twice.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CAPACITY = 256  # ids remembered; far more than the 16 outcomes kept in the shadow
COMPACT_EVERY = 256  # appends between two rewrites of the file
FILE_NAME = "executed.jsonl"
OLD_FILE_NAME = "executed.json"  # earlier agents: one JSON document, rewritten whole on every record
FORMAT = 2  # the old document said {"version": 1}
_HEADER = {"log": "iotbridge executed commands", "version": FORMAT}


@dataclass(frozen=True)
class LogEntry:
    command_id: str
    action: str
    outcome: dict[str, Any] | None  # None: started, and no outcome was recorded (interrupted)


@dataclass
class OnDisk:
    entries: OrderedDict[str, LogEntry]
    lines: int  # record lines in the file
    torn: bool  # its last line was cut short (or garbled) by a crash
    old: bool  # an old-format log is there too


def _record(line: bytes) -> dict[str, Any]:
    """One line as a record or header; ValueError if it is neither."""
    doc = json.loads(line)
    if not isinstance(doc, dict):
        raise ValueError("not an object")
    if "id" not in doc:
        if doc.get("version") != FORMAT:
            raise ValueError(f"unknown header {doc!r}")
        return doc
    outcome = doc.get("outcome")
    if not isinstance(doc["id"], str) or not isinstance(doc.get("action"), str) or not isinstance(outcome, (dict, type(None))):
        raise ValueError("not a record")
    return doc


def _apply(entries: OrderedDict[str, LogEntry], entry: LogEntry, capacity: int) -> None:
    """Record `entry` in memory; replaying the file's lines through this rebuilds the same log."""
    if entry.outcome is not None and entry.command_id in entries:
        entries[entry.command_id] = entry  # an outcome keeps its id's place: an id is as old as its start
        return
    entries.pop(entry.command_id, None)
    entries[entry.command_id] = entry
    while len(entries) > capacity:
        entries.popitem(last=False)


def read(state_dir: Path, *, capacity: int = CAPACITY) -> OnDisk:
    """Read the log in `state_dir` (either format) without changing anything on disk."""
    entries: OrderedDict[str, LogEntry] = OrderedDict()
    path = Path(state_dir) / FILE_NAME
    old_path = Path(state_dir) / OLD_FILE_NAME
    old = old_path.exists()
    if old:
        # Older entries first: the new file, if any, was written after them.
        try:
            doc = json.loads(old_path.read_text())
            for item in doc["entries"]:
                _apply(entries, LogEntry(item["id"], item["action"], item.get("outcome")), capacity)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RuntimeError(f"executed log {old_path} is unreadable: {exc}") from exc
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return OnDisk(entries, 0, False, old)
    except OSError as exc:
        raise RuntimeError(f"executed log {path} is unreadable: {exc}") from exc
    *complete, tail = data.split(b"\n")
    count = 0
    garbled: int | None = None  # the first line that did not parse, if every line after it failed too
    for number, line in enumerate(complete, start=1):
        try:
            doc = _record(line)
            if (number == 1) != ("id" not in doc):
                raise ValueError("the header must come first, and only there")
        except ValueError as exc:
            if number == 1:  # not a log we wrote: every file we write starts with a whole header
                raise RuntimeError(f"executed log {path} is unreadable: {exc}") from exc
            garbled = number if garbled is None else garbled
            continue
        if garbled is not None:
            # A synced line is never garbled and every line before it is synced with it:
            # damage followed by good lines is not a crash, it is a broken file.
            raise RuntimeError(f"executed log {path} is unreadable at line {garbled}")
        if number > 1:
            count += 1
            _apply(entries, LogEntry(doc["id"], doc["action"], doc.get("outcome")), capacity)
    if not complete:
        raise RuntimeError(f"executed log {path} is unreadable: no header line")
    # Lines cut short or garbled at the end were never synced (a power cut during or
    # after an unsynced append): no handler ran on the strength of them.
    torn = garbled is not None or tail != b""
    return OnDisk(entries, count, torn, old)


class ExecutedLog:
    """Insertion-ordered, capped at CAPACITY; the oldest id is forgotten first."""

    def __init__(
        self, state_dir: Path, *, capacity: int = CAPACITY, compact_every: int = COMPACT_EVERY, fsync: bool = True
    ) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.capacity = capacity
        self.compact_every = compact_every
        # The fleet simulator turns fsync off: thousands of virtual devices on one
        # disk; each append is one write() and rewrites are renames, so a killed
        # process still leaves a readable log.
        self.fsync = fsync
        found = read(Path(state_dir), capacity=capacity)
        self._entries = found.entries
        self._lines = found.lines
        self.compactions = 0  # rewrites so far (tests read it)
        self._torn = False  # a failed append may have left part of a line: rewrite before the next
        if found.torn or found.old or not self.path.exists():
            # Rewrite before appending anything: an append after a torn line would be
            # glued to it, and a migrated ledger must be on disk in the new format
            # before the old file goes. A new device's log is created now, not at its
            # first command: an unwritable state dir stops the agent at start, and the
            # first command pays for an append, not a file creation.
            self._compact()
        if found.old:
            with contextlib.suppress(FileNotFoundError):
                (Path(state_dir) / OLD_FILE_NAME).unlink()

    # -- disk --------------------------------------------------------------------

    def _line(self, entry: LogEntry) -> bytes:
        doc = {"id": entry.command_id, "action": entry.action, "outcome": entry.outcome}
        return json.dumps(doc, separators=(",", ":")).encode() + b"\n"

    def _compact(self) -> None:
        """Replace the file with the entries in memory: temp file, fsync, rename, directory fsync."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps(_HEADER, separators=(",", ":")).encode() + b"\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(header + b"".join(self._line(e) for e in self._entries.values()))
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if self.fsync:
            self._sync_dir()
        self._lines = len(self._entries)
        self._torn = False
        self.compactions += 1

    def _sync_dir(self) -> None:
        # A rename (or a new file) is durable only once its directory is synced.
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _append(self, entry: LogEntry, *, sync: bool) -> None:
        if self._torn or self._lines >= self.capacity + self.compact_every:
            # A rewrite holds the new entry too, and is as durable as a synced append.
            self._compact()
            return
        line = self._line(entry)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            # Deleted under us: a rewrite holds every entry, and makes the new file's name durable.
            self._compact()
            return
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                if sync and self.fsync:
                    os.fdatasync(fd)
            except OSError:
                # Disk full mid-line: half a line left behind would have the next one glued to it,
                # and that line would then read as torn at a restart: its command could run again.
                try:
                    os.ftruncate(fd, end)
                except OSError:
                    self._torn = True
                raise
        finally:
            os.close(fd)
        self._lines += 1

    def _put(self, entry: LogEntry, *, sync: bool) -> None:
        _apply(self._entries, entry, self.capacity)
        self._append(entry, sync=sync)

    # -- reading -------------------------------------------------------------------

    def get(self, command_id: str) -> LogEntry | None:
        return self._entries.get(command_id)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return list(self._entries)

    # -- writing -------------------------------------------------------------------

    def started(self, command_id: str, action: str) -> None:
        """Record, durably, that this id is about to run: the one disk sync of a command."""
        self._put(LogEntry(command_id, action, None), sync=True)

    def finished(self, command_id: str, action: str, outcome: dict[str, Any]) -> None:
        """Record the outcome, without a sync: a power cut can lose it, and then the command
        is answered as interrupted (or with the outcome its shadow already holds), never run again."""
        self._put(LogEntry(command_id, action, outcome), sync=False)
