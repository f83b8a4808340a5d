"""SQLite (WAL) persistence for shadows and the thing registry.

Every change is one transaction, committed before the caller acknowledges
anything: `update()` returns only after COMMIT, so a SIGKILL of the process
loses nothing a client was told about. WAL with `synchronous=NORMAL` is durable
against a killed process (the OS keeps the WAL pages); pass `fsync=True` for
`synchronous=FULL` when power loss matters.

One connection, one lock: SQLite serialises writers anyway, and a shadow
read-modify-write must not interleave with another on the same shadow.
A deleted shadow stays as a tombstone row so its version keeps growing.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from iotbridge_local.shadow.engine import Shadow

T = TypeVar("T")
CLASSIC = ""  # the classic (unnamed) shadow's key in the table

SCHEMA = """
CREATE TABLE IF NOT EXISTS shadows (
    thing TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT NOT NULL,
    version INTEGER NOT NULL,
    exists_ INTEGER NOT NULL,
    PRIMARY KEY (thing, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY,
    thing_id TEXT NOT NULL,
    type_name TEXT,
    attributes TEXT NOT NULL,
    version INTEGER NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Thing:
    name: str
    thing_id: str
    type_name: str | None
    attributes: dict[str, str]
    version: int
    created: float


class ShadowStore:
    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if fsync else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the store for one read-modify-write; COMMIT on success, ROLLBACK on error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -------------------------------------------------------------- shadows

    @staticmethod
    def _key(name: str | None) -> str:
        return CLASSIC if name is None else name

    def load(self, thing: str, name: str | None) -> Shadow | None:
        with self._lock:
            row = self._db.execute("SELECT doc FROM shadows WHERE thing = ? AND name = ?", (thing, self._key(name))).fetchone()
        return Shadow.from_json(row[0]) if row else None

    def change(self, thing: str, name: str | None, fn: Callable[[Shadow | None], tuple[Shadow | None, T]]) -> T:
        """Run `fn(current)` -> (shadow to store or None, result) in one transaction; return result after COMMIT.

        `fn` may raise to reject the request: nothing is written then.
        """
        key = self._key(name)
        with self.transaction() as db:
            row = db.execute("SELECT doc FROM shadows WHERE thing = ? AND name = ?", (thing, key)).fetchone()
            current = Shadow.from_json(row[0]) if row else None
            new, result = fn(current)
            if new is not None:
                if current is not None and new.version < current.version:
                    raise AssertionError("shadow versions only grow")
                db.execute(
                    "INSERT INTO shadows (thing, name, doc, version, exists_) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (thing, name) DO UPDATE SET doc = excluded.doc, version = excluded.version, "
                    "exists_ = excluded.exists_",
                    (thing, key, new.to_json(), new.version, int(new.exists)),
                )
        return result

    @contextmanager
    def serial(self) -> Iterator[None]:
        """Hold the store lock across a change and whatever must follow it in order (publishing)."""
        with self._lock:
            yield

    def shadow_keys(self) -> list[tuple[str, str | None]]:
        """Every existing shadow: (thing, name, or None for the classic one)."""
        with self._lock:
            rows = self._db.execute("SELECT thing, name FROM shadows WHERE exists_ = 1").fetchall()
        return [(thing, name or None) for thing, name in rows]

    def named_shadows(self, thing: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM shadows WHERE thing = ? AND name != '' AND exists_ = 1 ORDER BY name", (thing,)
            ).fetchall()
        return [r[0] for r in rows]

    # -------------------------------------------------------------- thing registry

    def create_thing(
        self, name: str, attributes: dict[str, str] | None = None, type_name: str | None = None
    ) -> tuple[Thing, bool]:
        """Create a thing; returns (thing, created). An existing thing is returned unchanged."""
        with self.transaction() as db:
            existing = self._thing_row(db, name)
            if existing is not None:
                return existing, False
            thing = Thing(name, str(uuid.uuid4()), type_name, dict(attributes or {}), 1, time.time())
            db.execute(
                "INSERT INTO things (name, thing_id, type_name, attributes, version, created) VALUES (?, ?, ?, ?, ?, ?)",
                (name, thing.thing_id, type_name, json.dumps(thing.attributes), thing.version, thing.created),
            )
        return thing, True

    @staticmethod
    def _thing_row(db: sqlite3.Connection, name: str) -> Thing | None:
        row = db.execute(
            "SELECT name, thing_id, type_name, attributes, version, created FROM things WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        return Thing(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])

    def describe_thing(self, name: str) -> Thing | None:
        with self._lock:
            return self._thing_row(self._db, name)

    def delete_thing(self, name: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM things WHERE name = ?", (name,)).rowcount > 0

    def list_things(self, *, after: str | None = None, limit: int = 50) -> list[Thing]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name FROM things WHERE name > ? ORDER BY name LIMIT ?", (after or "", limit)
            ).fetchall()
            return [t for r in rows if (t := self._thing_row(self._db, r[0])) is not None]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            shadows = self._db.execute("SELECT count(*) FROM shadows WHERE exists_ = 1").fetchone()[0]
            things = self._db.execute("SELECT count(*) FROM things").fetchone()[0]
        return {"shadows": shadows, "things": things}
