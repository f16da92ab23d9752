"""The run log's partitions: one samples table per period, a view over them, and page counts.

Plain functions on a SQLite connection; the `RunLog` writer (emsbms.edge.store) decides when.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

COLUMNS = "address, value, unit, timestamp_us, quality"
"""The columns of every partition and of the `samples` view."""


@dataclass(frozen=True)
class Pages:
    """The file's pages: how many, how many free, how large."""

    count: int
    free: int
    size: int

    @property
    def used(self) -> int:
        return self.count - self.free

    @property
    def used_bytes(self) -> int:
        return self.used * self.size

    @property
    def free_bytes(self) -> int:
        return self.free * self.size


def pages(conn: sqlite3.Connection) -> Pages:
    count, free, size = (int(conn.execute(f"PRAGMA {p}").fetchone()[0])
                         for p in ("page_count", "freelist_count", "page_size"))
    return Pages(count, free, size)


# -- the tables ------------------------------------------------------------------------------------


def part_name(part_id: int) -> str:
    """The table of partition `part_id`: samples_000001, …"""
    return f"samples_{part_id:06d}"


@dataclass
class Part:
    """The partition rows go to: its id, when its first and last rows arrived, its rows and the
    used pages of the file when it started (what it grew since is its size)."""

    id: int
    first_us: int
    last_us: int
    rows: int
    start_pages: int

    def size(self, p: Pages) -> int:
        return max(0, p.used - self.start_pages) * p.size


def part_ids(conn: sqlite3.Connection) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT id FROM log_parts ORDER BY id")]


def make_view(conn: sqlite3.Connection) -> None:
    """(Re)create the ``samples`` view over every partition, oldest first."""
    ids = part_ids(conn)
    body = " UNION ALL ".join(f"SELECT {COLUMNS} FROM {part_name(i)}" for i in ids)
    conn.execute("DROP VIEW IF EXISTS samples")
    conn.execute(f"CREATE VIEW samples ({COLUMNS}) AS {body or 'SELECT NULL, NULL, NULL, NULL, NULL WHERE 0'}")


def migrate(conn: sqlite3.Connection, now: int) -> bool:
    """A file from an older emsbms: its ``samples`` table becomes the oldest partition (its rows
    kept, dated as arrived by `now`), its index and ``log_marks`` go. True if it did."""
    found = conn.execute("SELECT type FROM sqlite_master WHERE name = 'samples'").fetchone()
    if found is None or found[0] != "table":
        return False
    (first,) = conn.execute("SELECT coalesce(min(id), 1) FROM log_parts").fetchone()
    part_id = int(first) - 1 if part_ids(conn) else 1
    lo, hi = conn.execute("SELECT min(rowid), max(rowid) FROM samples").fetchone()
    marked = conn.execute("SELECT min(at_us) FROM log_marks").fetchone() if has_table(conn, "log_marks") else (None,)
    conn.execute("DROP INDEX IF EXISTS samples_address_time")
    conn.execute(f"ALTER TABLE samples RENAME TO {part_name(part_id)}")
    conn.execute("INSERT INTO log_parts (id, first_us, last_us, rows) VALUES (?, ?, ?, ?)",
                 [part_id, marked[0] if marked[0] is not None else now, now, 0 if lo is None else hi - lo + 1])
    conn.execute("DROP TABLE IF EXISTS log_marks")
    return True


def has_table(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [name]).fetchone() is not None


def incremental(conn: sqlite3.Connection) -> bool:
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2


def is_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def has_view(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = ?", [name]).fetchone() is not None
