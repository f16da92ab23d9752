"""The run log: channel updates written to SQLite (sqlite-utils) by a writer thread.

Tables:

- ``samples(address, value, unit, timestamp_us, quality)``: one row per channel update.
- ``channels(address, device, unit, kind, description, minimum, maximum)``: channel metadata.
- ``runs(id, site, started_us, stopped_us, samples, dropped)``: one row per run.

`RunLog.record` is a registry callback: it only puts the update on a bounded queue (dropping
and counting when the queue is full), so the receive thread never waits for the disk. A writer
thread inserts in batches; `close()` flushes everything queued.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any

import sqlite_utils

from emsbms.types import ChannelInfo, Reading, Value

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    address TEXT NOT NULL,
    value,
    unit TEXT,
    timestamp_us INTEGER NOT NULL,
    quality TEXT
);
CREATE INDEX IF NOT EXISTS samples_address_time ON samples (address, timestamp_us);
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
    dropped INTEGER
);
"""

Row = tuple[str, Any, str, int, str]
_INSERT = "INSERT INTO samples (address, value, unit, timestamp_us, quality) VALUES (?, ?, ?, ?, ?)"


def sql_value(value: Value) -> Any:
    """A channel value as SQLite stores it: enums by value, booleans as 0/1."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool):
        return int(value)
    return value


class RunLog:
    """Logs channel updates to a SQLite file. Use as a context manager, or call close().

    Args:
        path: the database file (created if missing; rows are appended to an existing one).
        site: the site name recorded in the ``runs`` table.
        queue_size: updates held in memory at most; beyond it updates are dropped and counted.
        batch: the largest number of rows inserted in one transaction.
        flush_s: how long the writer waits to fill a batch before inserting what it has.
    """

    def __init__(
        self,
        path: str | Path,
        site: str = "",
        queue_size: int = 100_000,
        batch: int = 5_000,
        flush_s: float = 0.25,
    ) -> None:
        self.path = Path(path)
        self.batch = batch
        self.flush_s = flush_s
        self.queue: queue.Queue[Row | None] = queue.Queue(queue_size)
        self.dropped = 0
        self.written = 0
        self.writer_thread_name = ""
        conn = sqlite3.connect(str(self.path), check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.conn.executescript(_SCHEMA)
        runs = self.db.table("runs").insert(
            {"site": site, "started_us": time.time_ns() // 1000, "samples": 0, "dropped": 0}
        )
        self.run_id = int(runs.last_rowid or 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, name="emsbms-runlog", daemon=True)
        self._thread.start()

    # -- producers (any thread, never blocking) ---------------------------------------------

    def record(self, address: str, reading: Reading) -> None:
        """Queue one channel update (a registry callback). Drops and counts when full."""
        if self._stop.is_set():
            return
        row = (address, sql_value(reading.value), reading.unit, reading.timestamp_us, reading.quality.value)
        try:
            self.queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1

    def declare(self, infos: Iterable[ChannelInfo]) -> None:
        """Store channel metadata (call before start, from the thread that built the log)."""
        rows = [
            {
                "address": i.address, "device": i.address.split("/", 1)[0], "unit": i.unit,
                "kind": i.kind.value, "description": i.description,
                "minimum": i.minimum, "maximum": i.maximum,
            }
            for i in infos
        ]
        if rows:
            self.db.table("channels").upsert_all(rows, pk="address")

    # -- the writer thread ------------------------------------------------------------------

    def _take(self) -> tuple[list[Row], bool]:
        """Up to one batch of rows, waiting at most flush_s; True once close() was signalled."""
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
        while not ended:
            rows, ended = self._take()
            if rows:
                self._insert(rows)

    def _insert(self, rows: list[Row]) -> None:
        # executemany on sqlite-utils' connection: ~15x faster than insert_all with dicts
        try:
            with self.db.conn:
                self.db.conn.executemany(_INSERT, rows)
            self.written += len(rows)
        except sqlite3.Error:
            log.exception("run log %s: could not write %d rows", self.path, len(rows))
            self.dropped += len(rows)

    # -- lifecycle --------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything queued, record the run's totals and close the file."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.queue.put(None, timeout=timeout)  # behind every update queued so far
        except queue.Full:
            log.warning("run log %s: queue still full after %g s", self.path, timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("run log %s: writer did not finish within %g s", self.path, timeout)
            return
        self.db.table("runs").update(
            self.run_id,
            {"stopped_us": time.time_ns() // 1000, "samples": self.written, "dropped": self.dropped},
        )
        self.db.conn.close()
        log.info("run log %s: %d samples written, %d dropped", self.path, self.written, self.dropped)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
