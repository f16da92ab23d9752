"""Alarm instances kept in the edge database (table ``alarm_state``), so a restart keeps latched
faults, acknowledgements and running on-delays.

Use: ``engine.restore(store.load())`` at start; after every `evaluate` or `ack` that returned
transitions, ``store.save(engine.snapshot(t.id for t in transitions))`` (one transaction).
Instances back in ``ok`` with nothing held are deleted: the table holds only what a restart needs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from emsbms.alarms.engine import AlarmState, AlarmStatus
from emsbms.alarms.rules import Severity

_SCHEMA = """CREATE TABLE IF NOT EXISTS alarm_state (
    id TEXT PRIMARY KEY, rule TEXT NOT NULL, device TEXT NOT NULL, state TEXT NOT NULL,
    held TEXT NOT NULL, severity TEXT NOT NULL, acked INTEGER NOT NULL, since_us INTEGER NOT NULL, value REAL
)"""


class AlarmStore:
    """The ``alarm_state`` table of one SQLite file (created if missing); safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 30000")
        self._db.execute(_SCHEMA)

    def load(self) -> list[AlarmStatus]:
        """Every stored instance, by id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT rule, device, state, held, severity, acked, since_us, value FROM alarm_state ORDER BY id"
            ).fetchall()
        return [AlarmStatus(rule, device, AlarmState(state), Severity[severity], bool(acked), since_us,
                            AlarmState(held), value)
                for rule, device, state, held, severity, acked, since_us, value in rows]

    def save(self, statuses: Iterable[AlarmStatus]) -> None:
        """Write these instances in one transaction (all or nothing)."""
        rows = list(statuses)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for s in rows:
                    if s.state is AlarmState.OK:
                        self._db.execute("DELETE FROM alarm_state WHERE id = ?", (s.id,))
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO alarm_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (s.id, s.rule, s.device, s.state.value, s.held.value, s.severity.name,
                             int(s.acked), s.since_us, s.value))
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
