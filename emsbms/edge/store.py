"""The run log: channel updates written to SQLite by a writer thread, bounded by age and size.

Tables (in the edge database, beside the profile store):

- ``samples(address, value, unit, timestamp_us, quality)``: one row per channel update, in the order
  they arrived (rowid). No secondary index: an index keyed by address is written all over at every
  commit (the old ``samples_address_time`` cost 36 bytes of disk writes per byte of samples), so it
  is dropped when an older file is opened. Query by address with a scan, or copy the file and index it.
- ``channels(address, device, unit, kind, description, minimum, maximum)``: channel metadata.
- ``runs(id, site, started_us, stopped_us, samples, dropped, lost)``: one row per run, its counters
  refreshed while it runs.
- ``log_marks(last_rowid, at_us)``: the last row that had arrived at each retention check; the age
  limit deletes by these marks, not by the rows' own timestamps.

One edge per database: `RunLog` holds `EdgeLock` (an ``flock`` on ``<db>.lock``, released by the
kernel when the process dies, even by SIGKILL). A second one on the same file is refused with the
holder's PID.

Writes: WAL journal with ``synchronous=NORMAL``, one transaction per flush interval (1 s). Every
`Retention.every_s` the writer deletes the oldest rows in batches: those that arrived more than
``max_age_s`` ago, then more until its pages take at most ``max_bytes`` (down to 90 % of it, so it does not prune at
every flush); SQLite reuses the freed pages, so the file stops growing at about ``max_bytes``.
A file created with ``auto_vacuum=INCREMENTAL`` is also shrunk step by step when more than a
quarter of ``max_bytes`` is free (after a lower limit).

`RunLog.record` is a registry callback: it only puts the update on a bounded queue (dropping
and counting when the queue is full), so the receive thread never waits for the disk. A write the
disk refuses (full, or another database error) is counted in ``lost`` with one warning, not a
traceback per flush; on a full disk the oldest rows are deleted to make room for the newest.
"""

from __future__ import annotations

import fcntl
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
from typing import Any

from emsbms.errors import ConfigError
from emsbms.types import ChannelInfo, Quality, Reading, Value

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    address TEXT NOT NULL,
    value,
    unit TEXT,
    timestamp_us INTEGER NOT NULL,
    quality TEXT
);
DROP INDEX IF EXISTS samples_address_time;
CREATE TABLE IF NOT EXISTS log_marks (
    last_rowid INTEGER PRIMARY KEY,
    at_us INTEGER NOT NULL
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
_INSERT = "INSERT INTO samples (address, value, unit, timestamp_us, quality) VALUES (?, ?, ?, ?, ?)"
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


# -- one edge per database -------------------------------------------------------------------------


class EdgeLock:
    """The lock that makes one edge the only one on a database file.

    An exclusive ``flock`` on ``<db>.lock``, which holds the holder's PID and start time. The
    kernel releases it when the holder's file is closed or its process dies (SIGKILL included),
    so a crash never leaves a stale lock. Readers of the database do not take it.
    """

    def __init__(self, db: Path, fd: int) -> None:
        self.db = db
        self._fd: int | None = fd

    @staticmethod
    def path_for(db: str | Path) -> Path:
        db = Path(db)
        return db.with_name(db.name + ".lock")

    @classmethod
    def acquire(cls, db: str | Path) -> EdgeLock:
        """Take the lock of `db`; ConfigError naming the holder if another edge has it."""
        db = Path(db)
        path = cls.path_for(db)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"database {db}: cannot create its lock file {path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            pid = holder[0] if holder else "unknown"
            started = " ".join(holder[1:3]) if len(holder) >= 3 else "unknown"
            raise ConfigError(
                f"database {db} is in use by the edge with PID {pid} (started {started}); stop it first"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {started}\n".encode(), 0)
        return cls(db, fd)

    def release(self) -> None:
        """Give the lock up (closing its file releases the flock)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


# -- retention -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retention:
    """How much run log to keep: rows younger than `max_age_s`, pages up to `max_bytes`, and
    less when the file system has under `min_free_bytes` free (the log then stops growing: its
    oldest rows give their pages to the newest).

    Checked every `every_s` seconds by the writer; rows are deleted `batch` at a time, each batch
    in its own transaction, so inserts never wait long behind a prune.
    """

    max_age_s: float = DEFAULT_MAX_AGE_S
    max_bytes: int = DEFAULT_MAX_BYTES
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    every_s: float = 10.0
    batch: int = 20_000

    def __post_init__(self) -> None:
        if not self.max_age_s > 0:
            raise ConfigError(f"run log: the maximum age must be above 0 s, found {self.max_age_s:g} s")
        if self.max_bytes < 1 << 20:
            raise ConfigError(f"run log: the maximum size must be at least 1 MiB, found {self.max_bytes} bytes")


@dataclass(frozen=True)
class Pages:
    """The file's pages: how many, how many free, how large."""

    count: int
    free: int
    size: int

    @property
    def used_bytes(self) -> int:
        return (self.count - self.free) * self.size

    @property
    def free_bytes(self) -> int:
        return self.free * self.size


def pages(conn: sqlite3.Connection) -> Pages:
    count, free, size = (int(conn.execute(f"PRAGMA {p}").fetchone()[0])
                         for p in ("page_count", "freelist_count", "page_size"))
    return Pages(count, free, size)


def _delete_oldest(conn: sqlite3.Connection, n: int, upto_rowid: int | None = None) -> int:
    """Delete up to the `n` oldest rows (by arrival), only those up to `upto_rowid` if given."""
    where = "" if upto_rowid is None else f"WHERE rowid <= {int(upto_rowid)} "
    conn.execute("BEGIN IMMEDIATE")
    try:
        deleted = conn.execute(
            f"DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples {where}ORDER BY rowid LIMIT ?)", [n]
        ).rowcount
        # marks of rows gone (all of them once the table is empty: its rowids start again at 1)
        conn.execute("DELETE FROM log_marks WHERE last_rowid < (SELECT coalesce(min(rowid), 1 << 62) FROM samples)")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(deleted)


def mark(conn: sqlite3.Connection, now: int) -> None:
    """Note which rows had arrived by `now`: the age limit deletes by these marks, not by the rows'
    own timestamps, so a device clock far off (or a replayed log) neither keeps nor drops rows."""
    conn.execute("INSERT OR REPLACE INTO log_marks (last_rowid, at_us) SELECT max(rowid), ? FROM samples"
                 " WHERE (SELECT max(rowid) FROM samples) IS NOT NULL", [now])


def prune(conn: sqlite3.Connection, keep: Retention, now: int, room: int | None = None, max_batches: int = 50) -> int:
    """Delete the rows that arrived before the age limit, then the oldest until the size limit
    holds; returns the rows deleted. At most `max_batches` transactions per call.

    With only `room` bytes free on the file system, under `keep.min_free_bytes`, the file must not
    grow: rows are deleted until it holds the shortfall in free pages, which the next rows reuse.
    """
    deleted = 0
    batches = 0
    cutoff = now - int(keep.max_age_s * 1e6)
    (edge,) = conn.execute("SELECT max(last_rowid) FROM log_marks WHERE at_us < ?", [cutoff]).fetchone()
    while edge is not None and batches < max_batches:  # by age
        n = _delete_oldest(conn, keep.batch, int(edge))
        deleted += n
        batches += 1
        if n < keep.batch:
            break
    p = pages(conn)
    limit = keep.max_bytes
    target = keep.max_bytes * 9 // 10  # down to 90 %: not a prune at every check
    if room is not None and room < keep.min_free_bytes:  # stop growing: free pages in the file for new rows
        limit = target = min(target, p.count * p.size - (keep.min_free_bytes - room))
    over = p.used_bytes > limit
    while over and p.used_bytes > target and batches < max_batches:  # by size
        rows = _row_span(conn)
        if rows == 0:
            break
        per_row = max(1, p.used_bytes // rows)
        deleted += _delete_oldest(conn, min(keep.batch, max(1, -(-(p.used_bytes - target) // per_row))))
        batches += 1
        p = pages(conn)
    if _incremental(conn) and p.free_bytes > keep.max_bytes // 4:
        # executescript steps it to the end (execute frees one page per call)
        conn.executescript(f"PRAGMA incremental_vacuum({min(p.free, 2048)});")
    return deleted


def _row_span(conn: sqlite3.Connection) -> int:
    """About how many rows `samples` holds (rowids are given in arrival order; no full count)."""
    lo, hi = conn.execute("SELECT min(rowid), max(rowid) FROM samples").fetchone()
    return 0 if lo is None else int(hi) - int(lo) + 1


def _incremental(conn: sqlite3.Connection) -> bool:
    return int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2


def _is_full(error: sqlite3.Error) -> bool:
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


# -- the run log -----------------------------------------------------------------------------------


class RunLog:
    """Logs channel updates to a SQLite file. Use as a context manager, or call close().

    Args:
        path: the database file (created if missing; rows are appended to an existing one).
        site: the site name recorded in the ``runs`` table.
        queue_size: updates held in memory at most; beyond it updates are dropped and counted.
        batch: the largest number of rows inserted in one transaction.
        flush_s: how long the writer gathers rows before it commits them (one transaction).
        retention: how much log to keep (age and size).
        lock: the database's `EdgeLock`, if the caller holds it already (then the caller releases
            it); without one the run log takes it, and raises ConfigError if another edge has it.
        clock: µs since the epoch; stamps the rows of stale transitions.
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
            conn.executescript(_SCHEMA)
            columns = [r[1] for r in conn.execute("PRAGMA table_info(runs)")]
            if "lost" not in columns:  # a file from an older emsbms
                conn.execute("ALTER TABLE runs ADD COLUMN lost INTEGER NOT NULL DEFAULT 0")
            cur = conn.execute("INSERT INTO runs (site, started_us, samples, dropped, lost) VALUES (?, ?, 0, 0, 0)",
                               [self.site, now_us()])
            self.run_id = int(cur.lastrowid or 0)
        except sqlite3.Error as e:
            conn.close()
            raise ConfigError(f"run log {self.path}: cannot prepare its tables: {e}") from e
        return conn

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

    def _in_transaction(self, work: Callable[[], object]) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            work()
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    def _insert(self, rows: list[Row]) -> None:
        with self._db_lock:
            try:
                self._in_transaction(lambda: self.conn.executemany(_INSERT, rows))
            except sqlite3.Error as e:
                if not (_is_full(e) and self._make_room(rows)):
                    self._failed(e, len(rows))
                    return
            self.written += len(rows)
            if self._failing:
                self._failing = False
                log.warning("run log %s: writing again; %d samples were lost", self.path, self.lost)

    def _make_room(self, rows: list[Row]) -> bool:
        """The disk is full: delete the oldest rows (their pages are reused) and insert again."""
        try:
            freed = _delete_oldest(self.conn, max(len(rows) * 2, self.retention.batch))
        except sqlite3.Error:
            return False
        self.pruned += freed
        if freed == 0:
            return False
        try:
            self._in_transaction(lambda: self.conn.executemany(_INSERT, rows))
        except sqlite3.Error:
            return False
        return True

    def _failed(self, error: sqlite3.Error, n: int) -> None:
        """Count rows the database refused; warn once until a write succeeds again."""
        self.lost += n
        if not self._failing:
            self._failing = True
            reason = "the disk is full" if _is_full(error) else f"database error: {error}"
            log.warning("run log %s: %s; samples are dropped and counted (runs.lost) until it can write again",
                        self.path, reason)

    def prune(self) -> int:
        """Apply the retention now (the writer does it every `retention.every_s`); rows deleted."""
        with self._db_lock:
            try:
                now = self.clock()
                n = prune(self.conn, self.retention, now, self._room())
                self._in_transaction(lambda: self._checkpoint(now))
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

    def _checkpoint(self, now: int) -> None:
        """One small transaction per retention check: the arrival mark and the run's counters."""
        mark(self.conn, now)
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
                self.conn.execute(
                    "UPDATE runs SET stopped_us = ?, samples = ?, dropped = ?, lost = ? WHERE id = ?",
                    [now_us(), self.written, self.dropped, self.lost, self.run_id],
                )
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
