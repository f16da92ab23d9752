"""The SQLite run log: rows, metadata, value types, the writer thread, overflow and flushing."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from emsbms.can.bus import BusState
from emsbms.edge.store import RunLog, sql_value
from emsbms.types import AlarmLevel, ChannelInfo, ChannelKind, CommState, Quality, Reading


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def test_samples_and_channels_are_written(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    with RunLog(db, site="plant-1", clock=lambda: 2_000_000) as log:
        log.declare([ChannelInfo("bms_0/Soc", "%", ChannelKind.MEASUREMENT, "state of charge", 0, 100)])
        log.record("bms_0/Soc", Reading(77.5, "%", 1_000_001, Quality.OK))
        log.record("bms_0/Voltage", Reading(51.23, "V", 1_000_002, Quality.STALE))
    assert rows(db, "SELECT address, value, unit, timestamp_us, quality FROM samples ORDER BY timestamp_us") == [
        ("bms_0/Soc", 77.5, "%", 1_000_001, "ok"),
        ("bms_0/Voltage", 51.23, "V", 2_000_000, "stale"),  # a stale row is dated by the log's clock
    ]
    assert rows(db, "SELECT * FROM channels") == [("bms_0/Soc", "bms_0", "%", "measurement", "state of charge", 0, 100)]
    (run,) = rows(db, "SELECT site, samples, dropped, stopped_us >= started_us FROM runs")
    assert run == ("plant-1", 2, 0, 1)


def test_values_keep_their_sqlite_types(tmp_path: Path) -> None:
    db = tmp_path / "types.db"
    with RunLog(db) as log:
        for i, value in enumerate([True, 3, 2.5, "PYLON", CommState.LOST, AlarmLevel.WARNING, BusState.BUS_OFF]):
            log.record(f"x/C{i}", Reading(value, "", i, Quality.OK))  # type: ignore[arg-type]
    got = rows(db, "SELECT value, typeof(value) FROM samples ORDER BY timestamp_us")
    assert got == [(1, "integer"), (3, "integer"), (2.5, "real"), ("PYLON", "text"), ("LOST", "text"),
                   (1, "integer"), ("BUS_OFF", "text")]
    assert sql_value(None) is None


def test_inserts_happen_on_the_writer_thread(tmp_path: Path) -> None:
    seen: list[str] = []
    log = RunLog(tmp_path / "t.db")
    original = log._insert

    def spy(batch: list[tuple[str, object, str, int, str]]) -> None:
        seen.append(threading.current_thread().name)
        original(batch)

    log._insert = spy  # type: ignore[method-assign]
    log.record("a/X", Reading(1.0, "", 1, Quality.OK))
    log.close()
    assert seen == ["emsbms-runlog"]


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    log = RunLog(db, queue_size=10, batch=5, flush_s=0.05)
    gate = threading.Event()
    original = log._insert

    def slow(batch: list[tuple[str, object, str, int, str]]) -> None:
        gate.wait(10)
        original(batch)

    log._insert = slow  # type: ignore[method-assign]
    for i in range(500):  # the writer is held at the gate: the queue fills, then updates are dropped
        log.record("a/X", Reading(float(i), "", i, Quality.OK))
    assert log.dropped >= 500 - 10 - 5  # at most the queue and one batch got through
    assert log.queue.qsize() <= 10
    gate.set()
    log.close()
    written = rows(db, "SELECT COUNT(*) FROM samples")[0][0]
    assert written == log.written == 500 - log.dropped
    assert rows(db, "SELECT dropped FROM runs")[0][0] == log.dropped


def test_close_flushes_a_large_backlog(tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    log = RunLog(db, batch=1000)
    for i in range(20_000):
        log.record("bms_0/Current", Reading(i * 0.1, "A", i, Quality.OK))
    log.close()
    assert rows(db, "SELECT COUNT(*), MIN(timestamp_us), MAX(timestamp_us) FROM samples") == [(20_000, 0, 19_999)]


def test_runs_append_to_an_existing_file(tmp_path: Path) -> None:
    db = tmp_path / "twice.db"
    for run in range(2):
        with RunLog(db, site=f"s{run}") as log:
            log.record("a/X", Reading(run, "", run, Quality.OK))
    assert rows(db, "SELECT id, site, samples FROM runs ORDER BY id") == [(1, "s0", 1), (2, "s1", 1)]
    assert rows(db, "SELECT COUNT(*) FROM samples") == [(2,)]
