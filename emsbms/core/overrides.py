"""The running edge's overrides in its database, for other processes (`emsbms overrides`).

There is no IPC into a running edge: like the profile watcher's activation, the edge and a CLI
meet in the edge database. The edge rewrites `core_overrides` when its overrides change and polls
`core_cancel_requests`; a CLI reads the first and inserts into the second, then waits for the
row's `done_us`.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from emsbms.core.arbiter import Override
from emsbms.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS core_overrides (
    address TEXT PRIMARY KEY, value REAL NOT NULL, expires_us INTEGER NOT NULL, source TEXT NOT NULL,
    written_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS core_cancel_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT, address TEXT NOT NULL, requested_us INTEGER NOT NULL,
    done_us INTEGER, result TEXT
);
"""


def _now_us() -> int:
    return time.time_ns() // 1000


def connect(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
    db.executescript(SCHEMA)
    return db


@dataclass(frozen=True)
class Cancelled:
    """The outcome of a cancel request: whether an override was cancelled, in words."""

    address: str
    found: bool
    text: str


class OverrideTable:
    """The edge's side: `publish` the active overrides, `take_requests` the cancels asked for."""

    def __init__(self, path: str | Path) -> None:
        self.db = connect(path)
        self._last: list[Override] | None = None
        self.db.execute("DELETE FROM core_overrides")

    def publish(self, overrides: list[Override]) -> None:
        """Rewrite the table if the overrides changed since the last call."""
        if overrides == self._last:
            return
        now = _now_us()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM core_overrides")
            self.db.executemany("INSERT INTO core_overrides VALUES (?, ?, ?, ?, ?)",
                                [(o.address, o.value, o.expires_us, o.source_text, now) for o in overrides])
        self._last = list(overrides)

    def take_requests(self) -> list[tuple[int, str]]:
        """The cancel requests not yet done: (id, address)."""
        rows = self.db.execute("SELECT id, address FROM core_cancel_requests WHERE done_us IS NULL ORDER BY id")
        return [(int(i), str(a)) for i, a in rows]

    def finish(self, request_id: int, result: str) -> None:
        self.db.execute("UPDATE core_cancel_requests SET done_us = ?, result = ? WHERE id = ?",
                        (_now_us(), result, request_id))

    def close(self) -> None:
        self.db.execute("DELETE FROM core_overrides")
        self.db.close()


def read_overrides(path: str | Path, now_us: int | None = None) -> list[Override]:
    """The overrides the running edge last wrote, without those expired at `now_us`."""
    now = _now_us() if now_us is None else now_us
    db = connect(path)
    try:
        rows = db.execute("SELECT address, value, expires_us, source FROM core_overrides ORDER BY address").fetchall()
    finally:
        db.close()
    return [Override(str(a), float(v), int(e), str(s)) for a, v, e, s in rows if now < int(e)]


def request_cancel(path: str | Path, address: str, timeout: float = 5.0) -> str:
    """Ask the running edge to cancel the override of `address`; its answer, or ConfigError on no answer."""
    db = connect(path)
    try:
        request_id = db.execute("INSERT INTO core_cancel_requests (address, requested_us) VALUES (?, ?)",
                                (address, _now_us())).lastrowid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = db.execute("SELECT result FROM core_cancel_requests WHERE id = ? AND done_us IS NOT NULL",
                             (request_id,)).fetchone()
            if row is not None:
                return str(row[0])
            time.sleep(0.05)
        db.execute("DELETE FROM core_cancel_requests WHERE id = ? AND done_us IS NULL", (request_id,))
    finally:
        db.close()
    raise ConfigError(f"database {path}: no running edge answered the cancel of {address} within {timeout:g} s"
                      " (is `emsbms run` running on this database with [[controller]] tables?)")
