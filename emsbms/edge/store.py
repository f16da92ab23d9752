"""The run log: channel updates written to SQLite by a writer thread, bounded by age and size.

Tables (in the edge database, beside the profile store):

- ``samples_000001``, ``samples_000002``, …: the partitions. One table per period (an hour by
  default, see `Retention.part_s`) or per sixteenth of the size limit, whichever comes first;
  ``address, value, unit, timestamp_us, quality``, one row per channel update in the order they
  arrived, no index (an index keyed by address is written all over at every commit).
- ``samples``: a view, the UNION ALL of the partitions oldest first, recreated with them; query it
  as the table it used to be.
- ``log_parts(id, first_us, last_us, rows, bytes)``: one row per partition: when its first and
  last rows arrived (by the log's clock, not the rows' timestamps), how many rows, how many bytes
  of pages (refreshed at every retention check).
- ``channels(address, device, unit, kind, description, minimum, maximum)``: channel metadata.
- ``runs(id, site, started_us, stopped_us, samples, dropped, lost)``: one row per run, its counters
  refreshed while it runs.

A file from an older emsbms (one ``samples`` table, ``log_marks``) is migrated when opened: its
table is renamed to the first partition, so its rows are kept as the oldest.

One edge per database: `RunLog` holds `EdgeLock` (an ``flock`` on ``<db>.lock``, released by the
kernel when the process dies, even by SIGKILL). A second one on the same file is refused with the
holder's PID.

Writes: WAL journal with ``synchronous=NORMAL``, one transaction per flush interval (1 s). Every
`Retention.every_s` the writer drops whole partitions: those whose last row arrived more than
``max_age_s`` ago, then the oldest until the pages take at most ``max_bytes`` (down to 90 % of
it). ``DROP TABLE`` puts a partition's pages on the free list without writing them, and the newest
partition reuses them, so at the limit the log writes no more than while it grows (deleting rows
from the front of one table rebalanced its B-tree: 3.1–3.6 bytes written per byte of samples,
now 2.0; see docs/performance.md, "Run log").
A file created with ``auto_vacuum=INCREMENTAL`` is also shrunk step by step when more than a
quarter of ``max_bytes`` is free (after a lower limit).

`RunLog.record` is a registry callback: it only puts the update on a bounded queue (dropping
and counting when the queue is full), so the receive thread never waits for the disk. A write the
disk refuses (full, or another database error) is counted in ``lost`` with one warning, not a
traceback per flush; on a full disk the oldest partition is dropped (the oldest rows deleted when
only one is left) to make room for the newest.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from emsbms.edge.lock import EdgeLock
from emsbms.edge.partitions import (
    COLUMNS,
    Part,
    has_view,
    incremental,
    is_full,
    make_view,
    migrate,
    pages,
    part_ids,
    part_name,
)
from emsbms.errors import ConfigError
from emsbms.types import ChannelInfo, Quality, Reading, Value

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_parts (
    id INTEGER PRIMARY KEY,
    first_us INTEGER NOT NULL,
    last_us INTEGER NOT NULL,
    rows INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS channels (
    address TEXT PRIMARY KEY,
    device TEXT,
    unit TEXT,
    kind TEXT,
    description TEXT,
    minimum REAL,
    maximum REAL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    site TEXT,
    started_us INTEGER,
    stopped_us INTEGER,
    samples INTEGER,
    dropped INTEGER,
    lost INTEGER NOT NULL DEFAULT 0
);
"""

Row = tuple[str, Any, str, int, str]
T = TypeVar("T")
_UPSERT_CHANNEL = (
    "INSERT OR REPLACE INTO channels (address, device, unit, kind, description, minimum, maximum)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

DAY_S = 86_400.0
DEFAULT_MAX_AGE_S = 7 * DAY_S
"""Rows older than this are deleted (see docs/performance.md, "Run log", for why 7 days)."""
DEFAULT_MAX_BYTES = 1 << 30
"""The run log's pages take at most this much (1 GiB)."""
DEFAULT_MIN_FREE_BYTES = 64 << 20
"""The run log shrinks rather than leave less than this free on its file system (64 MiB)."""
DEFAULT_PART_S = 3600.0
"""A partition takes the rows of one hour at most (less with a short age limit)."""
MAX_PARTS = 400
"""Partitions at most (SQLite joins at most 500 selects in one UNION ALL): the newest one then grows."""
MIN_PART_BYTES = 64 << 10


def now_us() -> int:
    """Wall-clock time in µs since the epoch (the clock frame timestamps use)."""
    return time.time_ns() // 1000


def sql_value(value: Value) -> Any:
    """A channel value as SQLite stores it: enums by value, booleans as 0/1."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return int(value)
    return value


# -- retention -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """How much run log to keep: rows younger than `max_age_s`, pages up to `max_bytes`, and
    less when the file system has under `min_free_bytes` free (the log then stops growing: its
    oldest partitions give their pages to the newest).

    Rows go into one partition (table) per `part_s` seconds (default: an hour, or a 24th of
    `max_age_s` if that is shorter, or a 400th if that is longer), or per sixteenth of the size
    limit, whichever is reached first. Retention drops whole partitions, so a row is kept up to
    one partition's period past `max_age_s`. Checked every `every_s` seconds by the writer.
    `batch` rows at a time are deleted from the newest partition when it is the only one left and
    still too large.
    """

    max_age_s: float = DEFAULT_MAX_AGE_S
    max_bytes: int = DEFAULT_MAX_BYTES
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    every_s: float = 10.0
    batch: int = 20_000
    part_s: float | None = None

    def __post_init__(self) -> None:
        if not self.max_age_s > 0:
            raise ConfigError(f"run log: the maximum age must be above 0 s, found {self.max_age_s:g} s")
        if self.max_bytes < 1 << 20:
            raise ConfigError(f"run log: the maximum size must be at least 1 MiB, found {self.max_bytes} bytes")
        if self.part_s is not None and not self.part_s > 0:
            raise ConfigError(f"run log: the partition period must be above 0 s, found {self.part_s:g} s")

    @property
    def period_s(self) -> float:
        """How long one partition takes rows."""
        if self.part_s is not None:
            return self.part_s
        return max(min(DEFAULT_PART_S, self.max_age_s / 24), self.max_age_s / MAX_PARTS)


# -- the run log -----------------------------------------------------------------------------------


class RunLog:
    """Logs channel updates to a SQLite file. Use as a context manager, or call close().

    Args:
        path: the database file (created if missing; rows are appended to an existing one).
        site: the site name recorded in the ``runs`` table.
        queue_size: updates held in memory at most; beyond it updates are dropped and counted.
        batch: the largest number of rows inserted in one transaction.
        flush_s: how long the writer gathers rows before it commits them (one transaction).
        retention: how much log to keep (age and size) and how it is partitioned.
        lock: the database's `EdgeLock`, if the caller holds it already (then the caller releases
            it); without one the run log takes it, and raises ConfigError if another edge has it.
        clock: µs since the epoch; dates the partitions (arrival) and the rows of stale transitions.
    """

    def __init__(
        self,
        path: str | Path,
        site: str = "",
        queue_size: int = 100_000,
        batch: int = 50_000,
        flush_s: float = 1.0,
        retention: Retention | None = None,
        lock: EdgeLock | None = None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        self.path = Path(path)
        self.batch = batch
        self.flush_s = flush_s
        self.retention = retention or Retention()
        self.clock = clock
        self.queue: queue.Queue[Row | None] = queue.Queue(queue_size)
        self.dropped = 0  # the queue was full: the writer could not keep up
        self.lost = 0  # the database refused the write (disk full, I/O error)
        self.written = 0
        self.pruned = 0
        self.writer_thread_name = ""
        self.site = site
        self.part: Part | None = None  # the partition rows go to (None until the first row)
        self._part_bytes = max(MIN_PART_BYTES, self.retention.max_bytes // 16)
        self._failing = False
        self._owns_lock = lock is None
        self.lock = lock if lock is not None else EdgeLock.acquire(self.path)
        try:
            self.conn = self._open()
        except BaseException:
            if self._owns_lock:
                self.lock.release()
            raise
        self._db_lock = threading.Lock()  # declare() may run on another thread than the writer
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._write_loop, name="emsbms-runlog", daemon=True)
        self._thread.start()

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise ConfigError(f"run log {self.path}: cannot open: {e}") from e
        try:
            if int(conn.execute("PRAGMA page_count").fetchone()[0]) == 0:
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes on a new file
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if mode.lower() != "wal":
                log.warning("run log %s: journal mode %s, not wal: every commit writes more", self.path, mode)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA secure_delete = OFF")  # builds that default it on zero every deleted page
            now = self.clock()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
                if "lost" not in columns:  # a file from an older emsbms
                    conn.execute("ALTER TABLE runs ADD COLUMN lost INTEGER NOT NULL DEFAULT 0")
                migrated = migrate(conn, now)
                if migrated or not has_view(conn, "samples"):
                    make_view(conn)
                # a run that did not stop (killed, power cut) refreshed its partition's last_us only
                # at its last retention check: its rows may have arrived until now
                conn.execute("UPDATE log_parts SET last_us = max(last_us, ?) WHERE id = (SELECT max(id) FROM log_parts)"
                             " AND EXISTS (SELECT 1 FROM runs WHERE stopped_us IS NULL)", [now])
                cur = conn.execute("INSERT INTO runs (site, started_us, samples, dropped, lost) VALUES (?, ?, 0, 0, 0)",
                                   [self.site, now_us()])
                self.run_id = int(cur.lastrowid or 0)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.part = None if migrated else self._last_part(conn)  # not grown: its size is unknown
        except sqlite3.Error as e:
            conn.close()
            raise ConfigError(f"run log {self.path}: cannot prepare its tables: {e}") from e
        return conn

    @staticmethod
    def _last_part(conn: sqlite3.Connection) -> Part | None:
        """The newest partition, which this run appends to until it is due to be followed."""
        found = conn.execute("SELECT id, first_us, last_us, rows, bytes FROM log_parts ORDER BY id DESC LIMIT 1"
                             ).fetchone()
        if found is None:
            return None
        p = pages(conn)
        return Part(int(found[0]), int(found[1]), int(found[2]), int(found[3]), p.used - int(found[4]) // p.size)

    # -- producers (any thread, never blocking) ---------------------------------------------

    def record(self, address: str, reading: Reading) -> None:
        """Queue one channel update (a registry callback). Drops and counts when full.

        A stale reading keeps its last value and the timestamp of the frame that brought it; the
        row is stamped with now instead: the registry calls this as it marks the channel stale,
        so the log dates the loss, not the last frame before it.
        """
        if self._stop.is_set():
            return
        ts = self.clock() if reading.quality is Quality.STALE else reading.timestamp_us
        row = (address, sql_value(reading.value), reading.unit, ts, reading.quality.value)
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1

    def declare(self, infos: Iterable[ChannelInfo]) -> None:
        """Store channel metadata (any thread; written at once, in one transaction)."""
        rows = [
            (i.address, i.address.split("/", 1)[0], i.unit, i.kind.value, i.description, i.minimum, i.maximum)
            for i in infos
        ]
        if not rows:
            return
        with self._db_lock:
            try:
                self._in_transaction(lambda: self.conn.executemany(_UPSERT_CHANNEL, rows))
            except sqlite3.Error as e:
                log.warning("run log %s: could not store the metadata of %d channels: %s", self.path, len(rows), e)

    # -- the writer thread ------------------------------------------------------------------

    def _take(self) -> tuple[list[Row], bool]:
        """Up to one batch of rows, gathered for flush_s; True once close() was signalled."""
        rows: list[Row] = []
        deadline = time.monotonic() + self.flush_s
        while len(rows) < self.batch:
            left = deadline - time.monotonic()
            try:
                item = self.queue.get(timeout=left) if left > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:  # the end marker close() puts
                return rows, True
            rows.append(item)
        return rows, False

    def _write_loop(self) -> None:
        self.writer_thread_name = threading.current_thread().name
        ended = False
        next_prune = time.monotonic()
        while not ended:
            rows, ended = self._take()
            if rows:
                self._insert(rows)
            if time.monotonic() >= next_prune and not ended:
                next_prune = time.monotonic() + self.retention.every_s
                self.prune()

    def _in_transaction(self, work: Callable[[], T]) -> T:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            result = work()
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        return result

    def _insert(self, rows: list[Row]) -> None:
        for chunk in self._chunks(rows):
            self._insert_chunk(chunk)

    def _chunks(self, rows: list[Row]) -> list[list[Row]]:
        """`rows` in pieces of at most a quarter partition each (a burst never makes one huge
        partition, which retention could only drop whole); one piece at the usual rates."""
        part = self.part
        per_row = max(16, part.size(pages(self.conn)) // part.rows) if part is not None and part.rows else 64
        n = max(1, self._part_bytes // 4 // per_row)
        return [rows[i:i + n] for i in range(0, len(rows), n)]

    def _insert_chunk(self, rows: list[Row]) -> None:
        with self._db_lock:
            now = self.clock()
            try:
                self._append(rows, now)
            except sqlite3.Error as e:
                if not (is_full(e) and self._make_room(rows, now)):
                    self._failed(e, len(rows))
                    return
            self.written += len(rows)
            if self._failing:
                self._failing = False
                log.warning("run log %s: writing again; %d samples were lost", self.path, self.lost)

    def _due(self, part: Part | None, now: int) -> bool:
        """A new partition is due: none yet, or the newest one is a period old or full."""
        if part is None:
            return True
        if len(part_ids(self.conn)) >= MAX_PARTS:
            return False
        return (now - part.first_us >= self.retention.period_s * 1e6
                or part.size(pages(self.conn)) >= self._part_bytes)

    def _append(self, rows: list[Row], now: int) -> None:
        """Insert `rows` into the newest partition, after starting a new one if it is due: one
        transaction, and the partition in memory changes only once it committed."""
        old = self.part
        new = self._due(old, now)

        def work() -> Part:
            part = old
            if new or part is None:
                part = self._start_part(old, now)
            self.conn.executemany(f"INSERT INTO {part_name(part.id)} ({COLUMNS}) VALUES (?, ?, ?, ?, ?)", rows)
            return part

        part = self._in_transaction(work)
        part.last_us = now
        part.rows += len(rows)
        self.part = part

    def _start_part(self, old: Part | None, now: int) -> Part:
        """Close `old` (its last arrival, rows and size) and create the next partition and view."""
        p = pages(self.conn)
        if old is not None:
            self.conn.execute("UPDATE log_parts SET last_us = ?, rows = ?, bytes = ? WHERE id = ?",
                              [old.last_us, old.rows, old.size(p), old.id])
        (last,) = self.conn.execute("SELECT coalesce(max(id), 0) FROM log_parts").fetchone()
        part = Part(int(last) + 1, now, now, 0, p.used)
        self.conn.execute(f"CREATE TABLE {part_name(part.id)} (address TEXT NOT NULL, value, unit TEXT,"
                          " timestamp_us INTEGER NOT NULL, quality TEXT)")
        self.conn.execute("INSERT INTO log_parts (id, first_us, last_us) VALUES (?, ?, ?)", [part.id, now, now])
        make_view(self.conn)
        return part

    def _make_room(self, rows: list[Row], now: int) -> bool:
        """The disk is full: drop the oldest partition (its pages are reused; the oldest rows of
        the only one) and insert again."""
        try:
            freed = self._drop_oldest(max(len(rows) * 2, self.retention.batch))
        except sqlite3.Error:
            return False
        self.pruned += freed
        if freed == 0:
            return False
        try:
            self._append(rows, now)
        except sqlite3.Error:
            return False
        return True

    def _failed(self, error: sqlite3.Error, n: int) -> None:
        """Count rows the database refused; warn once until a write succeeds again."""
        self.lost += n
        if not self._failing:
            self._failing = True
            reason = "the disk is full" if is_full(error) else f"database error: {error}"
            log.warning("run log %s: %s; samples are dropped and counted (runs.lost) until it can write again",
                        self.path, reason)

    # -- retention --------------------------------------------------------------------------

    def _drop(self, part_id: int) -> int:
        """Drop one partition (one transaction); the rows it held."""
        def work() -> int:
            (rows,) = self.conn.execute("SELECT rows FROM log_parts WHERE id = ?", [part_id]).fetchone()
            self.conn.execute(f"DROP TABLE IF EXISTS {part_name(part_id)}")
            self.conn.execute("DELETE FROM log_parts WHERE id = ?", [part_id])
            make_view(self.conn)
            return int(rows)

        part = self.part
        before = pages(self.conn).used
        n = self._in_transaction(work)
        if part is not None and part.id == part_id:
            self.part = None
            return part.rows
        if part is not None:  # its size is what the file grew by since it started
            part.start_pages -= before - pages(self.conn).used
        return n

    def _drop_oldest(self, batch: int) -> int:
        """Drop the oldest partition, or delete the `batch` oldest rows of the only one; rows gone."""
        ids = part_ids(self.conn)
        if not ids:
            return 0
        part = self.part
        if len(ids) > 1 or part is None or part.id != ids[0]:
            return self._drop(ids[0])
        table = part_name(part.id)
        n = self._in_transaction(lambda: self.conn.execute(
            f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY rowid LIMIT ?)", [batch]).rowcount)
        part.rows = max(0, part.rows - int(n))
        return int(n)

    def _prune(self, now: int, room: int | None, max_batches: int = 50) -> int:
        """Drop the partitions whose rows all arrived before the age limit, then the oldest until
        the size limit holds (the oldest rows of the newest when it is the only one left); rows
        gone. With only `room` bytes free on the file system, under `min_free_bytes`, the file
        must not grow: partitions are dropped until it holds the shortfall in free pages, which
        the next rows reuse."""
        keep = self.retention
        deleted = 0
        cutoff = now - int(keep.max_age_s * 1e6)
        for (part_id,) in self.conn.execute("SELECT id FROM log_parts WHERE last_us < ? ORDER BY id",
                                            [cutoff]).fetchall():
            deleted += self._drop(int(part_id))
        p = pages(self.conn)
        limit = keep.max_bytes
        target = keep.max_bytes * 9 // 10  # down to 90 %: not a drop at every check
        if room is not None:
            budget = p.count * p.size + room - keep.min_free_bytes  # what the file may grow to
            self._part_bytes = max(MIN_PART_BYTES, min(keep.max_bytes, budget) // 16)
            if room < keep.min_free_bytes:  # stop growing: free pages in the file for new rows
                limit = target = min(target, budget)
        batches = 0
        over = p.used_bytes > limit
        while over and p.used_bytes > target and batches < max_batches:  # by size
            part = self.part
            per_row = max(1, part.size(p) // part.rows) if part is not None and part.rows else 1
            deleted += self._drop_oldest(min(keep.batch, -(-(p.used_bytes - target) // per_row)))
            batches += 1
            before, p = p, pages(self.conn)
            if p.used >= before.used:  # nothing left to give (the other tables take the room)
                break
        if incremental(self.conn) and p.free_bytes > keep.max_bytes // 4:
            # executescript steps it to the end (execute frees one page per call)
            self.conn.executescript(f"PRAGMA incremental_vacuum({min(p.free, 2048)});")
        return deleted

    def prune(self) -> int:
        """Apply the retention now (the writer does it every `retention.every_s`); rows deleted."""
        with self._db_lock:
            try:
                now = self.clock()
                self._in_transaction(self._checkpoint)
                n = self._prune(now, self._room())
            except sqlite3.Error as e:
                log.debug("run log %s: prune failed: %s", self.path, e)
                return 0
        self.pruned += n
        if n:
            log.info("run log %s: deleted %d old rows", self.path, n)
        return n

    def _room(self) -> int | None:
        """Bytes free on the run log's file system (for an unprivileged writer), None if unknown."""
        try:
            st = os.statvfs(self.path.resolve().parent)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def _checkpoint(self) -> None:
        """One small transaction per retention check: the newest partition's last arrival, rows
        and size, and the run's counters."""
        part = self.part
        if part is not None:
            self.conn.execute("UPDATE log_parts SET last_us = ?, rows = ?, bytes = ? WHERE id = ?",
                              [part.last_us, part.rows, part.size(pages(self.conn)), part.id])
        self.conn.execute("UPDATE runs SET samples = ?, dropped = ?, lost = ? WHERE id = ?",
                          [self.written, self.dropped, self.lost, self.run_id])

    # -- lifecycle --------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything queued, record the run's totals, close the file and release the lock."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        try:
            self.queue.put(None, timeout=timeout)  # behind every update queued so far
        except queue.Full:
            log.warning("run log %s: queue still full after %g s", self.path, timeout)
        self._thread.join(timeout)
        try:
            if self._thread.is_alive():
                log.warning("run log %s: writer did not finish within %g s", self.path, timeout)
                return
            try:
                self._in_transaction(self._checkpoint)
                self.conn.execute("UPDATE runs SET stopped_us = ? WHERE id = ?", [now_us(), self.run_id])
            except sqlite3.Error as e:
                log.warning("run log %s: could not record the run's totals: %s", self.path, e)
            self.conn.close()
            log.info("run log %s: %d samples written, %d dropped, %d lost", self.path, self.written,
                     self.dropped, self.lost)
        finally:
            if self._owns_lock:
                self.lock.release()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

