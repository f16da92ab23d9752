"""The store-and-forward outbox: every uplink message is committed to SQLite before it is published,
and deleted only after the broker's PUBACK.

    box = Outbox(outbox_path(db_path), quota_bytes=64 << 20)
    box.put(topic, payload, "telemetry", now_us)         # committed when it returns
    rows = box.pending(100, now_us)                      # live first, then backlog, interleaved
    ... publish each row (QoS 1) ...
    box.done([row.id])                                   # on its PUBACK
    box.release([row.id])                                # only if the client refused to take it

**Handed out once per process** (in-flight marks live in memory, until `done`). A dropped link
releases nothing: paho re-sends its QoS 1 session on the reconnect; `client.py` releases a row only
when paho refused to queue it (``MQTT_ERR_QUEUE_SIZE``). A new process hands out every row again.

The outbox is its own SQLite file beside the edge database (`outbox_path`: ``<db>.outbox``), in WAL
mode, so that its many small commits never wait for the run log, and its quota counts the outbox
alone. A put is one committed transaction: a SIGKILL after `put` returned loses nothing (WAL with
``synchronous=NORMAL``; pass ``synchronous="FULL"`` to survive a power cut as well).

**Order.** A row is *live* while it is at most `live_s` seconds old (default 10 s), and *backlog*
after that. `pending` hands out rows not yet handed out: live and backlog rows alternate, live
first (L B L B ...), each kind oldest first (ascending id); when one kind runs out the other fills
the rest. So the live rate is never held behind a backlog, and the backlog drains in order with the
capacity left. A backlog row is *historical*: the flag is stored, so it stays historical if it has to
be sent again, and its JSON payload's ``"historical":false`` is handed out as ``true``
(`messages.as_historical`).

**Quota.** The outbox counts each row as ``len(topic) + len(payload) + ROW_OVERHEAD`` bytes. When a
put takes the total above `quota_bytes`, the oldest rows are deleted until it fits again (never the
row just put: a single row larger than the quota stays alone), and counted in `dropped`.

**Counters** (kept in the file, so they survive a restart): `queued` (rows in the outbox),
`published` (rows deleted by `done`), `dropped` (rows deleted by the quota); `oldest_age_s(now_us)`.

The outbox is thread-safe: one connection behind a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from emsbms.errors import ConfigError
from emsbms.uplink.messages import as_historical

ROW_OVERHEAD = 64
"""Bytes counted per row on top of its topic and payload (id, kind, time, flags, SQLite's record)."""

DEFAULT_QUOTA = 256 << 20
DEFAULT_LIVE_S = 10.0


class Row(NamedTuple):
    """One queued message, as `pending` hands it out."""

    id: int
    topic: str
    payload: bytes
    kind: str
    created_us: int
    historical: bool


def outbox_path(db_path: str | Path) -> Path:
    """The outbox file of an edge database: ``<db>.outbox`` beside it."""
    p = Path(db_path)
    return p.with_name(p.name + ".outbox")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    kind TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    historical INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_us);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO counters VALUES ('published', 0), ('dropped', 0);
"""


class Outbox:
    """A SQLite outbox file; see the module docstring for order, quota and counters."""

    def __init__(self, path: str | Path, quota_bytes: int = DEFAULT_QUOTA, live_s: float = DEFAULT_LIVE_S,
                 synchronous: str = "NORMAL") -> None:
        if quota_bytes <= 0:
            raise ConfigError(f"outbox {path}: quota_bytes expected a positive number of bytes, found {quota_bytes}")
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise ConfigError(f"outbox {path}: synchronous expected NORMAL or FULL, found {synchronous!r}")
        self.path = Path(path)
        self.quota_bytes = quota_bytes
        self.live_us = int(live_s * 1_000_000)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"outbox {self.path}: cannot open it as an SQLite outbox: {e}") from e
        count, size = self._db.execute("SELECT count(*), coalesce(sum(size), 0) FROM outbox").fetchone()
        self._queued: int = count
        self._bytes: int = size
        self._inflight: set[int] = set()

    # -- writing ---------------------------------------------------------------------------

    def put(self, topic: str, payload: bytes, kind: str, now_us: int) -> int:
        """Queue one message; it is committed when this returns. Returns its id."""
        return self.put_many([(topic, payload, kind)], now_us)[0]

    def put_many(self, messages: Iterable[tuple[str, bytes, str]], now_us: int) -> list[int]:
        """Queue several messages in one transaction (committed when this returns); their ids."""
        rows = [(t, p, k, now_us, len(t.encode()) + len(p) + ROW_OVERHEAD) for t, p, k in messages]
        if not rows:
            return []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                ids = [db.execute("INSERT INTO outbox (topic, payload, kind, created_us, size) VALUES (?,?,?,?,?)",
                                  r).lastrowid or 0 for r in rows]
                added = sum(r[4] for r in rows)
                dropped, freed = self._enforce_quota(self._bytes + added, keep_from=ids[-1])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._queued += len(ids) - dropped
            self._bytes += added - freed
            return ids

    def _enforce_quota(self, total: int, keep_from: int) -> tuple[int, int]:
        """Delete the oldest rows (ids below `keep_from`) until `total` fits the quota; (rows, bytes)."""
        if total <= self.quota_bytes:
            return 0, 0
        victims: list[int] = []
        freed = 0
        cur = self._db.execute("SELECT id, size FROM outbox WHERE id < ? ORDER BY id", (keep_from,))
        for row_id, size in cur:
            if total - freed <= self.quota_bytes:
                break
            victims.append(row_id)
            freed += size
        cur.close()
        self._delete(victims)
        self._db.execute("UPDATE counters SET value = value + ? WHERE name = 'dropped'", (len(victims),))
        self._inflight.difference_update(victims)
        return len(victims), freed

    def _delete(self, ids: Sequence[int]) -> int:
        deleted = 0
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            cur = self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            deleted += cur.rowcount
        return deleted

    # -- reading and acknowledging -----------------------------------------------------------

    def pending(self, limit: int, now_us: int) -> list[Row]:
        """Up to `limit` rows not yet handed out, in the order to publish them: live and backlog
        rows alternate (live first), each oldest first. Backlog rows come out historical (stored,
        and their payload's flag set). The rows count as in flight until `done` or `release`, in
        this process only: a new `Outbox` on the file hands every row out again."""
        if limit <= 0:
            return []
        cutoff = now_us - self.live_us
        with self._lock:
            skip = self._inflight
            live = self._select("INDEXED BY outbox_created WHERE created_us >= ? ORDER BY id", (cutoff,), limit, skip)
            backlog = self._select("NOT INDEXED WHERE created_us < ? ORDER BY id", (cutoff,), limit, skip)
            out: list[Row] = []
            li = bi = 0
            while len(out) < limit and (li < len(live) or bi < len(backlog)):
                if li < len(live) and (len(out) % 2 == 0 or bi >= len(backlog)):
                    out.append(live[li])
                    li += 1
                else:
                    out.append(backlog[bi])
                    bi += 1
            newly = [r.id for r in out if r.created_us < cutoff and not r.historical]
            if newly:
                self._db.execute("BEGIN")
                self._db.executemany("UPDATE outbox SET historical = 1 WHERE id = ?", [(i,) for i in newly])
                self._db.execute("COMMIT")
            self._inflight.update(r.id for r in out)
        return [r._replace(historical=True, payload=as_historical(r.payload)) if r.created_us < cutoff or r.historical
                else r for r in out]

    def _select(self, where: str, args: tuple[int], limit: int, skip: set[int]) -> list[Row]:
        out: list[Row] = []
        sql = f"SELECT id, topic, payload, kind, created_us, historical FROM outbox {where}"
        cur = self._db.execute(sql, args)
        for row in cur:
            if row[0] in skip:
                continue
            out.append(Row(row[0], row[1], bytes(row[2]), row[3], row[4], bool(row[5])))
            if len(out) >= limit:
                break
        cur.close()
        return out

    def done(self, ids: Iterable[int]) -> int:
        """Delete rows the broker acknowledged; returns how many were still there (ids the quota
        dropped meanwhile, or acknowledged twice, count nothing)."""
        ids = list(ids)
        if not ids:
            return 0
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                sizes = 0
                for i in range(0, len(ids), 500):
                    chunk = ids[i:i + 500]
                    q = f"SELECT coalesce(sum(size), 0) FROM outbox WHERE id IN ({','.join('?' * len(chunk))})"
                    sizes += db.execute(q, chunk).fetchone()[0]
                deleted = self._delete(ids)
                db.execute("UPDATE counters SET value = value + ? WHERE name = 'published'", (deleted,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._inflight.difference_update(ids)
            self._queued -= deleted
            self._bytes -= sizes
            return deleted

    def release(self, ids: Iterable[int] | None = None) -> None:
        """Hand rows out again (all in-flight rows by default). The transport calls it for a row
        paho refused to queue; rows in flight when the link drops stay in paho's session (re-sent on
        the reconnect), so they are not released."""
        with self._lock:
            if ids is None:
                self._inflight.clear()
            else:
                self._inflight.difference_update(ids)

    # -- counters ---------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Rows in the outbox (in flight included)."""
        return self._queued

    @property
    def size_bytes(self) -> int:
        """The rows' counted size (what the quota limits)."""
        return self._bytes

    @property
    def in_flight(self) -> int:
        """Rows handed out by `pending` and not yet done or released."""
        return len(self._inflight)

    def _counter(self, name: str) -> int:
        with self._lock:
            value: int = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]
            return value

    @property
    def published(self) -> int:
        """Rows the broker acknowledged, since the outbox file was made."""
        return self._counter("published")

    @property
    def dropped(self) -> int:
        """Rows the quota deleted before they were acknowledged, since the outbox file was made."""
        return self._counter("dropped")

    def oldest_age_s(self, now_us: int) -> float:
        """Seconds since the oldest queued row was put; 0.0 when the outbox is empty."""
        with self._lock:
            oldest = self._db.execute("SELECT created_us FROM outbox ORDER BY id LIMIT 1").fetchone()
        return 0.0 if oldest is None else max(0.0, (now_us - oldest[0]) / 1e6)

    def ids(self) -> list[int]:
        """Every queued id, oldest first (tests and diagnostics)."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM outbox ORDER BY id")]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
