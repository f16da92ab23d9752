"""The edge database schema: numbered migrations applied in order, each in its own transaction.

The database is one SQLite file per edge (``--db``, ``EMSBMS_DB``, default ``./emsbms.db``): the
same file as the run log of ``emsbms run`` (``samples``, ``channels``, ``runs``, created by
`emsbms.edge.store`). The tables here live beside those:

1. ``profile store``: ``source_files`` (DBC and EDS content by SHA-256) and ``profiles`` (every
   imported version of every profile: its JSON, content hash, where it came from, when).
2. ``devices and buses``: the commissioned ``buses`` and ``devices``.
3. ``site settings``: ``site`` (org, name, protocol-wide tables) and ``devices.found_by``.

``migrations`` records which numbers are applied. `migrate` applies the missing ones, so an
older file is brought up to date when it is opened, and a newer one is refused.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from emsbms.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    """One schema change: its number (its order), a name, and the SQL it runs."""

    number: int
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "profile store", """
        CREATE TABLE source_files (
            hash TEXT PRIMARY KEY,          -- SHA-256 of the content
            kind TEXT NOT NULL,             -- 'dbc' or 'eds'
            name TEXT NOT NULL,             -- the file name the profile refers to
            content TEXT NOT NULL
        );
        CREATE TABLE profiles (
            id INTEGER PRIMARY KEY,         -- grows with every import (the watcher polls it)
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            protocol TEXT NOT NULL,
            document TEXT NOT NULL,         -- the profile JSON (source file named by its base name)
            hash TEXT NOT NULL,             -- SHA-256 of the JSON and its source file
            source TEXT NOT NULL,           -- where it was imported from: a path, or 'shipped:NAME'
            source_file TEXT REFERENCES source_files(hash),
            imported_us INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX profiles_name_version ON profiles (name, version);
    """),
    Migration(2, "devices and buses", """
        CREATE TABLE buses (
            name TEXT PRIMARY KEY,
            interface TEXT NOT NULL,
            channel TEXT NOT NULL,
            bitrate INTEGER NOT NULL,
            options TEXT NOT NULL DEFAULT '{}'   -- JSON: passed through to python-can
        );
        CREATE TABLE devices (
            name TEXT PRIMARY KEY,
            bus TEXT NOT NULL REFERENCES buses(name),
            profile TEXT NOT NULL,               -- NAME (newest stored version) or NAME@VERSION
            id_offset INTEGER NOT NULL DEFAULT 0,
            node_id INTEGER,
            source_address INTEGER,
            j1939_name TEXT,                     -- hex: a 64-bit NAME does not fit SQLite's INTEGER
            nmt_master INTEGER NOT NULL DEFAULT 0,
            options TEXT NOT NULL DEFAULT '{}',  -- JSON
            commissioned_us INTEGER NOT NULL
        );
    """),
    Migration(3, "site settings", """
        CREATE TABLE site (
            key TEXT PRIMARY KEY,                -- 'org', 'name', or a protocol table ('j1939', 'canopen')
            value TEXT NOT NULL                  -- JSON
        );
        ALTER TABLE devices ADD COLUMN found_by TEXT NOT NULL DEFAULT '';
    """),
)

LATEST = MIGRATIONS[-1].number


def connect(path: str | Path) -> sqlite_utils.Database:
    """Open (creating) the database file in autocommit mode; transactions are explicit."""
    try:
        conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise ConfigError(f"database {path}: cannot open: {e}") from e
    db = sqlite_utils.Database(conn)
    db.execute("PRAGMA foreign_keys = ON")
    return db


def applied(db: sqlite_utils.Database) -> list[int]:
    """The migration numbers applied to `db`, in order (none for a new or run-log-only file)."""
    if not db["migrations"].exists():
        return []
    return [int(r[0]) for r in db.execute("SELECT number FROM migrations ORDER BY number").fetchall()]


def schema_version(db: sqlite_utils.Database) -> int:
    """The highest applied migration number (0: none)."""
    done = applied(db)
    return done[-1] if done else 0


def migrate(db: sqlite_utils.Database, now: Callable[[], int] = lambda: time.time_ns() // 1000) -> list[int]:
    """Apply every missing migration in order, each in one transaction; returns the numbers applied.

    Raises ConfigError if the file was written by a newer emsbms (a migration number we do not know).
    """
    db.execute("CREATE TABLE IF NOT EXISTS migrations (number INTEGER PRIMARY KEY, name TEXT, applied_us INTEGER)")
    done: list[int] = []
    for m in MIGRATIONS:
        if m.number in applied(db):
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if m.number in applied(db):  # another process got there first
                db.execute("ROLLBACK")
                continue
            for statement in _statements(m.sql):
                db.execute(statement)
            db.execute("INSERT INTO migrations (number, name, applied_us) VALUES (?, ?, ?)", [m.number, m.name, now()])
            db.execute("COMMIT")
        except Exception:
            db.execute("ROLLBACK")
            raise
        log.info("database: applied migration %d (%s)", m.number, m.name)
        done.append(m.number)
    unknown = [n for n in applied(db) if n > LATEST]
    if unknown:
        raise ConfigError(
            f"database: schema version {max(unknown)} is newer than this emsbms knows ({LATEST}); upgrade emsbms"
        )
    return done


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[None]:
    """A write transaction (BEGIN IMMEDIATE), or a savepoint inside the caller's: all or nothing."""
    if db.conn.in_transaction:
        name = f"sp{next(_savepoints)}"
        db.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            db.execute(f"ROLLBACK TO {name}")
            db.execute(f"RELEASE {name}")
            raise
        db.execute(f"RELEASE {name}")
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


_savepoints = itertools.count(1)


def _statements(sql: str) -> list[str]:
    """Split a migration's SQL into statements (none of ours holds a ';' in a literal)."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
