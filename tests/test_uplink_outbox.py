"""The store-and-forward outbox: commits before put returns (a SIGKILL loses nothing), hands out
live and backlog rows interleaved with exact ids, keeps its quota by dropping the oldest rows."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from emsbms.errors import ConfigError
from emsbms.uplink.outbox import ROW_OVERHEAD, Outbox, outbox_path

S = 1_000_000


def payload(n: int) -> bytes:
    return b'{"historical":false,"n":%d}' % n


def test_outbox_path_is_beside_the_database(tmp_path: Path) -> None:
    assert outbox_path(tmp_path / "edge.db") == tmp_path / "edge.db.outbox"


def test_put_pending_done_and_counters(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.outbox") as box:
        assert [box.put("ems/a/b/telemetry", payload(i), "telemetry", 1000 + i) for i in range(3)] == [1, 2, 3]
        assert (box.queued, box.published, box.dropped) == (3, 0, 0)
        rows = box.pending(10, 2000)
        assert [(r.id, r.topic, r.payload, r.kind, r.created_us, r.historical) for r in rows] == [
            (1, "ems/a/b/telemetry", payload(0), "telemetry", 1000, False),
            (2, "ems/a/b/telemetry", payload(1), "telemetry", 1001, False),
            (3, "ems/a/b/telemetry", payload(2), "telemetry", 1002, False),
        ]
        assert box.pending(10, 2000) == []  # all in flight
        assert box.done([1, 3]) == 2
        assert box.done([1]) == 0  # acknowledged twice counts once
        assert (box.queued, box.published, box.in_flight, box.ids()) == (1, 2, 1, [2])
        box.release()
        assert [r.id for r in box.pending(10, 2000)] == [2]
        assert box.oldest_age_s(1001 + 2_500_000) == 2.5
    with Outbox(tmp_path / "o.outbox") as box:  # counters live in the file
        assert (box.queued, box.published, box.dropped, box.ids()) == (1, 2, 0, [2])
    with Outbox(tmp_path / "empty.outbox") as empty:
        assert empty.oldest_age_s(5 * S) == 0.0


def test_live_rows_interleave_with_the_backlog(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.outbox", live_s=10) as box:
        for i in range(5):  # an outage: ids 1..5 at t = 0..4 s
            box.put("t", payload(i), "telemetry", i * S)
        for i in range(5, 8):  # live again: ids 6..8 at t = 100..102 s
            box.put("t", payload(i), "telemetry", (95 + i) * S)
        now = 103 * S  # live: created at or after 93 s
        rows = box.pending(6, now)
        assert [r.id for r in rows] == [6, 1, 7, 2, 8, 3]
        assert [r.historical for r in rows] == [False, True, False, True, False, True]
        assert rows[1].payload == b'{"historical":true,"n":0}'
        assert rows[0].payload == b'{"historical":false,"n":5}'
        assert [r.id for r in box.pending(6, now)] == [4, 5]  # live ran out: the backlog fills the rest
        box.put("t", payload(8), "telemetry", now)  # id 9 arrives while the backlog is in flight
        box.release([4, 5])
        assert [r.id for r in box.pending(2, now)] == [9, 4]
        assert [r.id for r in box.pending(1, now)] == [5]


def test_historical_is_stored_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "o.outbox"
    with Outbox(path, live_s=10) as box:
        box.put("t", payload(1), "telemetry", 0)
        assert [r.historical for r in box.pending(1, 20 * S)] == [True]
    with Outbox(path, live_s=10) as box:  # handed out again at a time when it would look live
        rows = box.pending(1, 5 * S)
        assert [(r.id, r.historical, r.payload) for r in rows] == [(1, True, b'{"historical":true,"n":1}')]


def test_quota_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    size = 100
    body = b"x" * (size - ROW_OVERHEAD - 1)  # topic "t": 1 byte
    with Outbox(tmp_path / "o.outbox", quota_bytes=350) as box:
        for t in range(3):
            box.put("t", body, "telemetry", t)
        assert (box.ids(), box.dropped, box.size_bytes) == ([1, 2, 3], 0, 300)
        assert box.put("t", body, "telemetry", 3) == 4
        assert (box.ids(), box.dropped, box.size_bytes, box.queued) == ([2, 3, 4], 1, 300, 3)
        assert box.put("t", body + b"y" * 100, "events", 4) == 5  # 200 bytes: two old rows go
        assert (box.ids(), box.dropped, box.size_bytes, box.queued) == ([4, 5], 3, 300, 2)
        assert box.done([2, 4]) == 1  # 2 was dropped: only 4 is published
        assert (box.published, box.dropped) == (1, 3)
        assert box.put("t", b"z" * 500, "events", 5) == 6  # larger than the quota: kept alone
        assert (box.ids(), box.dropped) == ([6], 4)
    with Outbox(tmp_path / "o.outbox", quota_bytes=350) as box:
        assert (box.ids(), box.dropped, box.published, box.size_bytes) == ([6], 4, 1, 1 + 500 + ROW_OVERHEAD)


def test_a_file_that_is_no_outbox_is_refused_by_name(tmp_path: Path) -> None:
    bad = tmp_path / "junk.outbox"
    bad.write_bytes(b"not a database at all, just text" * 100)
    with pytest.raises(ConfigError, match=r"junk\.outbox: cannot open it as an SQLite outbox"):
        Outbox(bad)
    with pytest.raises(ConfigError, match="quota_bytes expected a positive number of bytes, found 0"):
        Outbox(tmp_path / "o.outbox", quota_bytes=0)


WRITER = """
import sys
from emsbms.uplink.outbox import Outbox
box = Outbox(sys.argv[1])
i = 0
while True:
    row_id = box.put("ems/a/b/telemetry", b'{"historical":false,"n":%d}' % i, "telemetry", i)
    print(row_id, flush=True)
    i += 1
"""


def test_a_sigkill_loses_no_row_whose_put_returned(tmp_path: Path) -> None:
    path = tmp_path / "edge.db.outbox"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    returned: list[int] = []
    for line in proc.stdout:
        returned.append(int(line))
        if len(returned) == 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    returned += [int(line) for line in proc.stdout.read().split()]  # puts that returned before the kill
    assert proc.returncode == -signal.SIGKILL
    assert returned[:3] == [1, 2, 3] and len(returned) >= 300
    # read the file as it was left, without the outbox's own code
    with sqlite3.connect(path) as db:
        stored = {r[0] for r in db.execute("SELECT id FROM outbox")}
    assert set(returned) <= stored
    assert set(returned) == set(range(1, len(returned) + 1))
    with Outbox(path) as box:
        assert box.queued == len(stored)


HANDER = """
import sys, time
from emsbms.uplink.outbox import Outbox
box = Outbox(sys.argv[1])
rows = box.pending(10, 100 * 1_000_000)
box.done([rows[0].id])
print(" ".join(str(r.id) for r in rows), flush=True)
time.sleep(60)
"""


def test_a_restarted_process_hands_out_every_row_again(tmp_path: Path) -> None:
    path = tmp_path / "edge.db.outbox"
    with Outbox(path) as box:  # 1-3 a backlog (100 s old), 4-5 live
        for i in range(5):
            box.put("ems/a/b/telemetry", payload(i), "telemetry", (i * 50 if i < 3 else 99_000) * 1000)
    proc = subprocess.Popen([sys.executable, "-c", HANDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    os.kill(proc.pid, signal.SIGKILL)  # row 4 acknowledged; 1, 5, 2, 3 handed out, never acknowledged
    proc.wait()
    assert first == ["4", "1", "5", "2", "3"]
    with Outbox(path) as box:  # the edge restarted: nothing is in flight, every row left goes again
        rows = box.pending(10, 100 * S)
        assert [(r.id, r.historical) for r in rows] == [(5, False), (1, True), (2, True), (3, True)]
        assert rows[1].payload == b'{"historical":true,"n":0}'
        assert box.pending(10, 100 * S) == []  # and once only, until a PUBACK or another restart
