"""The run log's safety: one edge per database, bounded by age and size, a full disk, stale rows
dated by their transition, and strict JSON from every --json."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from typer.testing import CliRunner

from emsbms.cli import app
from emsbms.cli.common import json_text
from emsbms.demo import site_toml
from emsbms.edge import Edge
from emsbms.edge.lock import EdgeLock
from emsbms.edge.partitions import pages
from emsbms.edge.registry import Registry
from emsbms.edge.store import Retention, RunLog
from emsbms.errors import ConfigError
from emsbms.sim.runner import Simulation
from emsbms.site import load_site
from emsbms.types import ChannelInfo, ChannelKind, Quality, Reading, Sample
from tests.conftest import wait

runner = CliRunner()


def emsbms_command() -> list[str]:
    script = Path(sys.executable).with_name("emsbms")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from emsbms.cli import main; main()"]


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path, timeout=10) as conn:
        return conn.execute(sql).fetchall()


def maybe_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """`rows`, or [] while the tables are not there yet."""
    try:
        return rows(path, sql)
    except sqlite3.OperationalError:
        return []


def pylon_site(path: Path) -> Path:
    tag = uuid.uuid4().hex[:8]
    path.write_text(site_toml({
        "site": {"org": "test", "name": "lock"},
        "bus": [{"name": "can0", "interface": "virtual", "channel": f"lock-{tag}"}],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}],
    }), encoding="utf-8")
    return path


# -- one edge per database -------------------------------------------------------------------------


def test_a_second_run_on_the_same_db_is_refused_readers_work_and_sigkill_frees_it(tmp_path: Path) -> None:
    site = pylon_site(tmp_path / "site.toml")
    db = tmp_path / "edge.db"
    assert runner.invoke(app, ["--db", str(db), "site", "import", str(site)]).exit_code == 0
    holder = subprocess.Popen([*emsbms_command(), "--db", str(db), "run"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock_file = EdgeLock.path_for(db)
    try:
        assert wait(lambda: lock_file.is_file() and lock_file.read_text().startswith(f"{holder.pid} "), 30)
        assert wait(lambda: maybe_rows(db, "SELECT count(*) FROM runs") == [(1,)], 30)
        second = subprocess.run([*emsbms_command(), "--db", str(db), "run", "--duration", "1"],
                                capture_output=True, text=True, timeout=60, check=False)
        assert second.returncode == 2, second.stderr
        assert second.stderr.startswith(f"error: database {db} is in use by the edge with PID {holder.pid} (started ")
        assert second.stderr.rstrip().endswith("; stop it first")
        assert rows(db, "SELECT count(*) FROM runs") == [(1,)]  # the refused edge wrote nothing
        # readers keep working while the edge writes
        listed = runner.invoke(app, ["--db", str(db), "profiles", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        exported = runner.invoke(app, ["--db", str(db), "site", "export", str(tmp_path / "out.toml")])
        assert exported.exit_code == 0, exported.output
        assert 'profile = "pylon-lv@' in (tmp_path / "out.toml").read_text(encoding="utf-8")  # pinned by site import
        stored = load_site(tmp_path / "out.toml")
        with Simulation(stored):
            read = runner.invoke(app, ["--db", str(db), "read", "bms_0/Soc", "--json", "--timeout", "15"])
        assert read.exit_code == 0, read.output
        assert json.loads(read.stdout)["bms_0/Soc"]["quality"] == "ok"
        holder.send_signal(signal.SIGKILL)
        holder.wait(20)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=20)
    after = subprocess.run([*emsbms_command(), "--db", str(db), "run", "--duration", "1"],
                           capture_output=True, text=True, timeout=60, check=False)
    assert after.returncode == 0, after.stderr
    assert rows(db, "SELECT count(*), count(stopped_us) FROM runs") == [(2, 1)]  # the killed run never stopped


def test_a_second_run_log_in_one_process_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    with RunLog(db, site="first") as first:
        with pytest.raises(ConfigError) as refused:
            RunLog(db, site="second")
        assert str(refused.value).startswith(f"database {db} is in use by the edge with PID {os.getpid()} (started ")
        assert rows(db, "SELECT site FROM runs") == [("first",)]
        first.record("a/X", Reading(1.0, "", 1, Quality.OK))
    with RunLog(db, site="third"):  # released on close
        pass
    assert rows(db, "SELECT site FROM runs ORDER BY id") == [("first",), ("third",)]
    assert rows(db, "SELECT count(*) FROM samples") == [(1,)]



def test_edge_from_db_is_refused_while_run_holds_the_db_and_works_after_sigkill(tmp_path: Path) -> None:
    site = pylon_site(tmp_path / "site.toml")
    db = tmp_path / "edge.db"
    assert runner.invoke(app, ["--db", str(db), "site", "import", str(site)]).exit_code == 0
    holder = subprocess.Popen([*emsbms_command(), "--db", str(db), "run"],  # its edge: from_db with run's lock
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait(lambda: maybe_rows(db, "SELECT count(*) FROM runs") == [(1,)], 30)
        assert holder.poll() is None  # run did not deadlock on its own lock
        with pytest.raises(ConfigError) as refused:
            Edge.from_db(db)
        assert str(refused.value).startswith(f"database {db} is in use by the edge with PID {holder.pid} (started ")
        holder.send_signal(signal.SIGKILL)
        holder.wait(20)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.communicate(timeout=20)
    with pytest.raises(TypeError):  # an edge that cannot be built gives the lock back at once
        Edge.from_db(db, no_such_option=1)
    edge = Edge.from_db(db)
    assert [d.name for d in edge.site.devices] == ["bms_0"]
    with pytest.raises(ConfigError) as second:  # the edge holds the lock until it stops
        RunLog(db)
    assert str(second.value).startswith(f"database {db} is in use by the edge with PID {os.getpid()} (started ")
    with edge:
        pass
    with RunLog(db, site="after"):  # stop() gave it up
        pass
    assert rows(db, "SELECT site FROM runs ORDER BY id") == [("lock",), ("after",)]

# -- retention -------------------------------------------------------------------------------------


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_rows_older_than_the_age_limit_are_deleted_by_arrival(tmp_path: Path) -> None:
    db = tmp_path / "age.db"
    clock = Clock(10_000_000_000)
    log = RunLog(db, flush_s=0.05, clock=clock, retention=Retention(max_age_s=60, every_s=3600))
    for i in range(100):  # device timestamps far in the future: the age goes by arrival, not by them
        log.record("a/Old", Reading(float(i), "", 99_000_000_000_000 + i, Quality.OK))
    assert wait(lambda: log.written == 100)
    log.prune()
    clock.now += 30_000_000
    for i in range(50):
        log.record("a/New", Reading(float(i), "", i, Quality.OK))  # and far in the past
    assert wait(lambda: log.written == 150)
    log.prune()
    clock.now += 31_000_000  # the first rows arrived 61 s ago, the others 31 s ago
    log.prune()
    log.close()
    assert rows(db, "SELECT address, count(*), min(value), max(value) FROM samples GROUP BY address") == [
        ("a/New", 50, 0.0, 49.0)]
    assert log.pruned == 100


def test_the_size_limit_deletes_the_oldest_rows_and_gives_the_space_back(tmp_path: Path) -> None:
    db = tmp_path / "size.db"
    log = RunLog(db, flush_s=0.05, retention=Retention(max_bytes=1 << 20, every_s=3600))
    for i in range(4000):  # about 4 MB
        log.record("a/Blob", Reading(f"{i:06d}" + "x" * 1000, "", i, Quality.OK))
    assert wait(lambda: log.written == 4000)
    log.prune()
    conn = sqlite3.connect(db)
    p = pages(conn)
    assert p.used_bytes <= 1 << 20
    assert p.count * p.size <= (1 << 20) + (1 << 20) // 4  # free pages went back to the file system
    lo, hi, n = conn.execute("SELECT min(timestamp_us), max(timestamp_us), count(*) FROM samples").fetchone()
    # the newest ones, contiguous; whole partitions (about 45 of these rows each) go, so fewer than
    # the 1 MiB could hold remain, but never less than a quarter of it
    assert hi == 3999 and lo == 4000 - n and 250 < n < 1000
    conn.close()
    log.close()



def partitions(db: Path) -> list[tuple[str, int, int, int]]:
    """Every partition table: name, rows, smallest and largest timestamp."""
    names = [r[0] for r in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'samples_%'"
                                " ORDER BY name")]
    return [(n, *rows(db, f"SELECT count(*), min(timestamp_us), max(timestamp_us) FROM {n}")[0]) for n in names]


def write_step(log: RunLog, first: int, n: int, text: str = "") -> int:
    for i in range(first, first + n):
        log.record("a/X", Reading(text or float(i), "", i, Quality.OK))
    assert wait(lambda: log.written == first + n)
    return first + n


def test_retention_drops_whole_partitions_by_arrival(tmp_path: Path) -> None:
    db = tmp_path / "parts.db"
    clock = Clock(10_000_000_000)
    log = RunLog(db, flush_s=0.05, clock=clock, retention=Retention(max_age_s=60, part_s=20, every_s=3600))
    n = 0
    for _ in range(8):  # 100 rows every 10 s: a partition takes two steps
        n = write_step(log, n, 100)
        log.prune()
        clock.now += 10_000_000
    assert [p[:2] for p in partitions(db)] == [("samples_000001", 200), ("samples_000002", 200),
                                               ("samples_000003", 200), ("samples_000004", 200)]
    log.prune()  # 80 s: the first partition's last rows arrived 70 s ago
    log.close()
    assert partitions(db) == [("samples_000002", 200, 200, 399), ("samples_000003", 200, 400, 599),
                              ("samples_000004", 200, 600, 799)]
    assert log.pruned == 200
    assert rows(db, "SELECT id, first_us - 10000000000, last_us - 10000000000, rows FROM log_parts") == [
        (2, 20_000_000, 30_000_000, 200), (3, 40_000_000, 50_000_000, 200), (4, 60_000_000, 70_000_000, 200)]
    assert rows(db, "SELECT count(*), min(timestamp_us), max(timestamp_us) FROM samples") == [(600, 200, 799)]


def test_at_the_size_limit_whole_partitions_go_and_the_file_stops_growing(tmp_path: Path) -> None:
    db = tmp_path / "limit.db"
    clock = Clock(10_000_000_000)
    log = RunLog(db, flush_s=0.05, clock=clock, retention=Retention(max_bytes=1 << 20, part_s=1, every_s=3600))
    n = 0
    file_pages: list[int] = []
    for _ in range(60):  # 3 MB through a 1 MiB log: 100 rows of 500 bytes a second, a partition each
        n = write_step(log, n, 100, "x" * 500)
        clock.now += 1_000_000
        log.prune()
        with sqlite3.connect(db) as conn:
            file_pages.append(pages(conn).count)
    log.close()
    assert max(file_pages) * 4096 <= (1 << 20) + (1 << 16)
    assert len(set(file_pages[-20:])) == 1  # at the limit: the dropped pages are reused, the file stays
    kept = partitions(db)
    assert all(count == 100 and hi - lo == 99 and lo % 100 == 0 for _, count, lo, hi in kept)  # whole ones
    assert kept[-1][3] == 5_999 and kept[0][2] == 6_000 - 100 * len(kept) and 10 < len(kept) < 20
    assert log.pruned == 6_000 - 100 * len(kept)


def test_an_older_single_table_log_becomes_the_oldest_partition(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.executescript("""
            CREATE TABLE samples (address TEXT NOT NULL, value, unit TEXT, timestamp_us INTEGER NOT NULL, quality TEXT);
            CREATE INDEX samples_address_time ON samples (address, timestamp_us);
            CREATE TABLE log_marks (last_rowid INTEGER PRIMARY KEY, at_us INTEGER NOT NULL);
            INSERT INTO samples VALUES ('a/X', 1.0, 'V', 1, 'ok'), ('a/X', 2.0, 'V', 2, 'ok');
            INSERT INTO log_marks VALUES (2, 5000000);
        """)
    with RunLog(db, clock=lambda: 9_000_000) as log:
        log.record("a/X", Reading(3.0, "V", 3, Quality.OK))
    assert partitions(db) == [("samples_000001", 2, 1, 2), ("samples_000002", 1, 3, 3)]
    assert rows(db, "SELECT id, first_us, last_us, rows FROM log_parts") == [(1, 5_000_000, 9_000_000, 2),
                                                                             (2, 9_000_000, 9_000_000, 1)]
    assert rows(db, "SELECT value FROM samples") == [(1.0,), (2.0,), (3.0,)]
    assert rows(db, "SELECT name FROM sqlite_master WHERE name IN ('log_marks', 'samples_address_time')") == []
    assert rows(db, "SELECT type FROM sqlite_master WHERE name = 'samples'") == [("view",)]

# -- a full disk -------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a real file system that fills up."""
    folder = tmp_path / "small"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def settled(log: RunLog, n: int) -> bool:
    """The writer has written or lost `n` rows."""
    return log.written + log.lost >= n


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    os.close(fd)
    return filler


def test_the_log_stops_growing_on_a_small_disk_keeping_the_newest_rows(small_disk: Path) -> None:
    log = RunLog(small_disk / "e.db", flush_s=0.05, retention=Retention(min_free_bytes=4 << 20, every_s=3600))
    n = 0
    for _ in range(40):  # 20 MB of rows onto a 16 MiB disk, half a megabyte between checks
        for _ in range(1000):
            log.record("a/X", Reading("x" * 500, "", n, Quality.OK))
            n += 1
        assert wait(functools.partial(settled, log, n))
        log.prune()
    log.close()
    assert (log.written, log.lost) == (40_000, 0)
    (lo, hi, count), = rows(small_disk / "e.db", "SELECT min(timestamp_us), max(timestamp_us), count(*) FROM samples")
    assert hi == 39_999 and lo == 40_000 - count and count > 5_000


def test_a_full_disk_gives_one_warning_and_counts_the_lost_rows(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = small_disk / "e.db"
    log = RunLog(db, flush_s=0.05, retention=Retention(every_s=3600))
    filler = fill(small_disk)  # something else took the disk: the log has no rows to give up
    caplog.set_level(logging.INFO, logger="emsbms.edge.store")
    for i in range(20):
        log.record("a/X", Reading("y" * 200_000, "", i, Quality.OK))
        assert wait(functools.partial(settled, log, i + 1))
    assert log.lost >= 15
    full = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in full] == [
        f"run log {db}: the disk is full; samples are dropped and counted (runs.lost) until it can write again"]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback
    filler.unlink()
    log.record("a/X", Reading("after", "", 100, Quality.OK))
    assert wait(lambda: log.written + log.lost == 21)
    lost = log.lost
    log.close()
    assert rows(db, "SELECT value FROM samples WHERE timestamp_us = 100") == [("after",)]
    assert rows(db, "SELECT lost FROM runs") == [(lost,)]
    assert f"run log {db}: writing again; {lost} samples were lost" in [r.getMessage() for r in caplog.records]


# -- stale rows ----------------------------------------------------------------------------------------


def test_a_stale_row_is_dated_by_the_transition_not_by_the_last_frame(tmp_path: Path) -> None:
    db = tmp_path / "stale.db"
    registry = Registry()
    registry.declare([ChannelInfo("bms_0/Soc", "%", ChannelKind.MEASUREMENT)])
    clock = Clock(5_000_000)
    with RunLog(db, clock=clock) as log, registry.subscribe("*", log.record):
        registry.apply([Sample("bms_0/Soc", 80.0, 1_000_000, Quality.OK)])
        clock.now = 3_600_000_000  # the supervisor marks it stale an hour later
        registry.apply([], stale=["bms_0/Soc"])
    assert rows(db, "SELECT value, timestamp_us, quality FROM samples ORDER BY rowid") == [
        (80.0, 1_000_000, "ok"), (80.0, 3_600_000_000, "stale")]


def test_a_silent_device_is_logged_stale_after_its_last_frame(tmp_path: Path) -> None:
    site = load_site(pylon_site(tmp_path / "site.toml"))
    db = tmp_path / "silent.db"
    with Simulation(site) as sim, Edge(site) as edge, RunLog(db) as log, edge.subscribe("bms_0/Soc", log.record):
        assert edge.wait_until(lambda s: s.value("bms_0/Soc") is not None, 15)
        sim.inject("bms_0", "silent")
        assert edge.wait_until(lambda s: s["bms_0/Soc"].quality is Quality.STALE, 15)
    (last_ok,), = rows(db, "SELECT max(timestamp_us) FROM samples WHERE quality = 'ok'")
    (stale,), = rows(db, "SELECT timestamp_us FROM samples WHERE quality = 'stale'")
    period_us = 1_000_000  # PYLON_SocSoh: 1 s; stale after 2.5 periods without it
    assert stale - last_ok >= 2 * period_us


# -- strict JSON ------------------------------------------------------------------------------------------

FLOAT_DBC = """VERSION ""

NS_ :

BS_:

BU_: BMS EMS

BO_ 256 F_Pack: 8 BMS
 SG_ Voltage : 0|32@1- (1,0) [0|0] "V" EMS
 SG_ Current : 32|32@1- (1,0) [0|0] "A" EMS

SIG_VALTYPE_ 256 Voltage : 1;
SIG_VALTYPE_ 256 Current : 1;
"""


def test_json_text_maps_nan_and_infinity_to_null() -> None:
    doc = {"a": float("nan"), "b": [1.5, float("inf"), (float("-inf"),)], "c": {"d": "NaN"}}
    assert json_text(doc) == '{"a": null, "b": [1.5, null, [null]], "c": {"d": "NaN"}}'


def test_read_json_of_a_nan_channel_prints_null(tmp_path: Path) -> None:
    (tmp_path / "float.dbc").write_text(FLOAT_DBC, encoding="utf-8")
    (tmp_path / "float-bms.json").write_text(json.dumps({
        "name": "float-bms", "version": "1.0.0", "protocol": "dbc", "source": {"dbc": "float.dbc"},
        "timeout_ms": 1000, "messages": {"F_Pack": {"period_ms": 100}},
        "channels": {"Voltage": {"message": "F_Pack", "signal": "Voltage", "unit": "V"},
                     "Current": {"message": "F_Pack", "signal": "Current", "unit": "A"}}}), encoding="utf-8")
    channel = f"nan-{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site.toml"
    site.write_text(site_toml({
        "site": {"org": "test", "name": "nan"},
        "bus": [{"name": "can0", "interface": "virtual", "channel": channel}],
        "device": [{"name": "f_0", "bus": "can0", "profile": str(tmp_path / "float-bms.json")}],
    }), encoding="utf-8")
    stop = threading.Event()

    def send() -> None:
        with can.Bus(interface="virtual", channel=channel) as bus:
            while not stop.is_set():
                bus.send(can.Message(arbitration_id=256, is_extended_id=False,
                                     data=struct.pack("<ff", float("nan"), float("inf"))))
                stop.wait(0.05)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        r = runner.invoke(app, ["--site", str(site), "read", "f_0/Voltage", "f_0/Current", "--json", "--timeout", "15"])
    finally:
        stop.set()
        sender.join()
    assert r.exit_code == 0, r.output
    assert "NaN" not in r.stdout and "Infinity" not in r.stdout
    doc = json.loads(r.stdout, parse_constant=lambda name: pytest.fail(f"--json printed {name}"))
    assert (doc["f_0/Voltage"]["value"], doc["f_0/Voltage"]["unit"]) == (None, "V")
    assert (doc["f_0/Current"]["value"], doc["f_0/Current"]["unit"]) == (None, "A")
