"""The persistent log of command ids a device has started, with their outcomes.

It is what makes "never run twice" survive QoS 1 redelivery, reconnects and
reboots: an id is written here *before* its handler starts, and its outcome
after. An id found here is never run again; its logged outcome is reported
again instead. The file is replaced atomically (write, fsync, rename), so a
power cut leaves either the old log or the new one, never half of one.
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
FILE_NAME = "executed.json"


@dataclass(frozen=True)
class LogEntry:
    command_id: str
    action: str
    outcome: dict[str, Any] | None  # None: started, and no outcome was recorded (interrupted)


class ExecutedLog:
    """Insertion-ordered, capped at CAPACITY; the oldest id is forgotten first."""

    def __init__(self, state_dir: Path, *, capacity: int = CAPACITY, fsync: bool = True) -> None:
        self.path = Path(state_dir) / FILE_NAME
        self.capacity = capacity
        # The fleet simulator turns fsync off: thousands of virtual devices on one
        # disk; rename still keeps every write atomic against a process crash.
        self.fsync = fsync
        self._entries: OrderedDict[str, LogEntry] = OrderedDict()
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"executed log {self.path} is unreadable: {exc}") from exc
        for item in raw.get("entries", []):
            self._entries[item["id"]] = LogEntry(item["id"], item["action"], item.get("outcome"))

    def _save(self, *, durable: bool = True) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "version": 1,
            "entries": [{"id": e.command_id, "action": e.action, "outcome": e.outcome} for e in self._entries.values()],
        }
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            if self.fsync and durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, self.path)
        if self.fsync and durable:
            # The rename itself is durable only once the directory is synced.
            with contextlib.suppress(OSError):
                dir_fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def _put(self, entry: LogEntry, *, durable: bool = True) -> None:
        self._entries.pop(entry.command_id, None)
        self._entries[entry.command_id] = entry
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        self._save(durable=durable)

    def get(self, command_id: str) -> LogEntry | None:
        return self._entries.get(command_id)

    def __contains__(self, command_id: object) -> bool:
        return command_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def ids(self) -> list[str]:
        return list(self._entries)

    def started(self, command_id: str, action: str) -> None:
        """Record, durably, that this id is about to run."""
        self._put(LogEntry(command_id, action, None))

    def finished(self, command_id: str, action: str, outcome: dict[str, Any]) -> None:
        """Record the outcome. Written atomically but not fsynced (half the disk syncs per
        command): a power cut can lose it, and then the command is reported FAILED as
        interrupted on boot, never run again. Only `started` must be on disk before a run."""
        existing = self._entries.get(command_id)
        entry = LogEntry(command_id, action, outcome)
        if existing is not None:
            # Keep its place in the order: an id is as old as its start.
            self._entries[command_id] = entry
            self._save(durable=False)
        else:
            self._put(entry, durable=False)
