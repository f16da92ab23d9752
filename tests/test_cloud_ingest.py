"""Ingest: parsing and gap rules (pure), then a real Mosquitto and a real PostgreSQL: telemetry stored
exactly, redeliveries once, gaps as data_loss events, state/birth/config status, two real processes
sharing the subscription, a SIGKILLed ingest and a stopped PostgreSQL losing nothing.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.cloud.database import Database, add_org, migrate
from emsbms.cloud.ingest import Ingest
from emsbms.cloud.ingest_gaps import Gap, Run, runs_of, settle
from emsbms.cloud.ingest_parse import Batch, Kind, PayloadError, SampleRow, parse_message
from emsbms.cloud.pgserver import PgServer
from emsbms.uplink.broker import Broker, BrokerUser
from tests.cloud_fixtures import cloud_db, pg, require_postgres  # noqa: F401
from tests.conftest import wait
from tests.test_uplink_mqtt import require_mosquitto

NOW = 1_764_164_000_000_000
SESSION = 1_764_163_990_000_000
INGEST = BrokerUser("ingest", "ingest-secret", ("ems/#",))
EDGE = BrokerUser("acme.plant-1", "edge-secret", ("ems/acme/plant-1/#",))
ROOT = Path(__file__).resolve().parent.parent


def telemetry(seq: int, samples: list[dict[str, Any]] | None = None, historical: bool = False,
              session: int = SESSION) -> bytes:
    samples = samples if samples is not None else [
        {"address": "bms_0/Soc", "value": 50.0 + seq / 4, "timestamp_us": NOW + seq * 1000 + 7, "quality": "ok"}]
    return json.dumps({"historical": historical, "session": session, "seq": seq, "timestamp_us": NOW + seq * 1000,
                       "refresh": False, "samples": samples}).encode()


# ---- pure ------------------------------------------------------------------------------------------

def test_parse_telemetry_maps_every_value_kind() -> None:
    payload = telemetry(3, [
        {"address": "bms_0/Soc", "value": 87.5, "timestamp_us": NOW + 1, "quality": "ok"},
        {"address": "bms_0/Count", "value": 12, "timestamp_us": NOW + 2, "quality": "stale"},
        {"address": "bms_0/Alarm/Over", "value": True, "timestamp_us": NOW + 3, "quality": "ok"},
        {"address": "can0/State", "value": "ERROR_ACTIVE", "timestamp_us": NOW + 4, "quality": "ok"},
        {"address": "bms_0/Temp", "value": None, "timestamp_us": NOW + 5, "quality": "invalid"}])
    record = parse_message("ems/acme/plant-1/health", payload, NOW)
    assert isinstance(record, Batch)
    assert (record.org, record.site, record.stream, record.session, record.seq) == \
        ("acme", "plant-1", Kind.HEALTH, SESSION, 3)
    assert record.samples == (
        SampleRow("bms_0/Soc", NOW + 1, 87.5, None, "ok"), SampleRow("bms_0/Count", NOW + 2, 12.0, None, "stale"),
        SampleRow("bms_0/Alarm/Over", NOW + 3, 1.0, "true", "ok"),
        SampleRow("can0/State", NOW + 4, None, "ERROR_ACTIVE", "ok"),
        SampleRow("bms_0/Temp", NOW + 5, None, None, "invalid"))


@pytest.mark.parametrize(("topic", "payload", "message"), [
    ("ems/acme/plant-1/telemetry", b'{"historical":false,"session":1,"seq":0,"timestamp_us":1764164000000000,'
     b'"refresh":false,"samples":[{"address":"a/b","value":NaN,"timestamp_us":1764164000000000,"quality":"ok"}]}',
     "expected a JSON object, found text that is not JSON (NaN is not JSON"),
    ("ems/acme/plant-1/telemetry", telemetry(0, [{"address": "a/b", "value": 10**400,
                                                   "timestamp_us": NOW, "quality": "ok"}]),
     "key 'samples[0].value': expected a finite number or null, found integer"),
    ("ems/acme/plant-1/telemetry", telemetry(0).replace(b'"seq": 0', b'"seq": -1'),
     "key 'seq': expected an integer 0..9223372036854775807, found integer -1"),
    ("ems/acme/plant-1/telemetry", telemetry(0).replace(b'"seq": 0', b'"seq": true'),
     "key 'seq': expected an integer 0..9223372036854775807, found bool true"),
    ("ems/acme/plant-1/telemetry", telemetry(0, [{"address": "a/b", "value": 1, "timestamp_us": 5, "quality": "ok"}]),
     "key 'samples[0].timestamp_us': expected an integer 946684800000000..1764250400000000, found integer 5"),
    ("ems/acme/plant-1/telemetry", telemetry(0, [{"address": "a/b", "value": 1, "timestamp_us": NOW,
                                                   "quality": "good"}]),
     "key 'samples[0].quality': expected one of invalid, not available, ok, stale, found string \"good\""),
    ("ems/acme/plant-1/telemetry", telemetry(0, [{"address": "a\x00b", "value": 1, "timestamp_us": NOW,
                                                   "quality": "ok"}]),
     "key 'samples[0].address': expected a string of at most 4096 characters without NUL"),
    ("ems/acme/plant-1/state", b'{"state":"offline","timestamp_us":1764164000000000}',
     "key 'bdSeq': expected an integer 0..255, found nothing"),
    ("ems/acme/plant-1/state", b'[1]', "key '(payload)': expected an object, found array"),
    ("ems/acme/plant-1/rebirth", b'{}', "ems/acme/plant-1/rebirth: expected a topic ems/ORG/SITE/KIND"),
])
def test_parse_refusals_name_the_key(topic: str, payload: bytes, message: str) -> None:
    with pytest.raises(PayloadError) as caught:
        parse_message(topic, payload, NOW)
    assert message in str(caught.value)
    assert str(caught.value).startswith(topic)


def test_gaps_are_reported_once_after_the_grace_and_not_while_the_backlog_drains() -> None:
    runs = runs_of([(0, 10), (1, 11), (2, 12), (5, 20), (6, 21), (9, 30)])
    assert runs == [Run(0, 2, 10), Run(5, 6, 20), Run(9, 9, 30)]
    assert settle(-1, runs, None, 25, 10) == ([], 2)  # hole 3..4 visible since 20: not yet
    assert settle(-1, runs, None, 30, 10) == ([Gap(3, 4)], 6)  # 7..8 visible since 30: not yet
    assert settle(6, runs[2:], None, 40, 10) == ([Gap(7, 8)], 9)
    assert settle(6, runs[2:], 35, 40, 10) == ([], 6)  # a historical message 5 µs ago: the backlog drains
    # a late arrival in a reported hole: the mark is past it, so nothing is reported again
    assert settle(9, runs_of([(3, 50), (9, 30)]), None, 100, 10) == ([], 9)
    # a run that starts before the mark continues it
    assert settle(4, [Run(3, 8, 5)], None, 6, 10) == ([], 8)


# ---- with Mosquitto and PostgreSQL ---------------------------------------------------------------------

@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    require_mosquitto()
    b = Broker(tmp_path / "broker", [INGEST, EDGE])
    b.start()
    try:
        yield b
    finally:
        b.stop(signal.SIGKILL)


def add_site(url: str, org: str = "acme", site: str = "plant-1") -> None:
    with Database(url, max_size=1) as db:
        add_org(db, org)
        with db.org(org) as conn:
            conn.execute("INSERT INTO sites (org_id, site, username) VALUES (%s, %s, %s)", [org, site, f"{org}.{site}"])


class Edge:
    """A test publisher with the edge's login; waits for each PUBACK."""

    def __init__(self, broker: Broker, user: BrokerUser = EDGE) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(user.name, user.password)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def send(self, kind: str, payload: bytes, topic: str = "ems/acme/plant-1/") -> None:
        self.client.publish(topic + kind, payload, qos=1).wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def rows(url: str, query: str, args: list[Any] | None = None, org: str = "acme") -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.org_id', %s, true)", [org])
        return conn.execute(query, args).fetchall()


@pytest.fixture
def running(cloud_db: str, broker: Broker) -> Iterator[tuple[Ingest, Edge, str]]:  # noqa: F811
    add_site(cloud_db)
    db = Database(cloud_db)
    ingest = Ingest(db, broker.url, INGEST.name, INGEST.password, client_id="ingest-test", gap_grace_s=0.3)
    ingest.start()
    edge = Edge(broker)
    try:
        assert ingest.subscribed.wait(20), "the ingest's subscriptions were not granted"
        yield ingest, edge, cloud_db
    finally:
        edge.close()
        ingest.stop()
        db.close()


def test_telemetry_lands_exactly_and_a_repeated_seq_is_stored_once(running: tuple[Ingest, Edge, str]) -> None:
    ingest, edge, url = running
    edge.send("telemetry", telemetry(0, [
        {"address": "bms_0/Soc", "value": 87.5, "timestamp_us": NOW + 12_345, "quality": "ok"},
        {"address": "bms_0/Mode", "value": "charge", "timestamp_us": NOW + 12_346, "quality": "stale"}]))
    edge.send("telemetry", telemetry(1, [
        {"address": "bms_0/Soc", "value": 87.25, "timestamp_us": NOW + 22_345, "quality": "ok"}], historical=True))
    edge.send("telemetry", telemetry(0, [  # the same (session, seq): a redelivery, whatever it holds
        {"address": "bms_0/Soc", "value": 1.0, "timestamp_us": NOW + 99_999, "quality": "ok"}]))
    assert wait(lambda: ingest.duplicates == 1, 60), (ingest.duplicates, ingest.written_samples)
    assert ingest.written_samples == 3 and ingest.rejected == 0
    assert rows(url, "SELECT address, timestamp_us, extract(epoch FROM ts)::numeric * 1000000, value, text_value,"
                     " quality, historical, session, seq FROM telemetry ORDER BY timestamp_us") == [
        ("bms_0/Soc", NOW + 12_345, NOW + 12_345, 87.5, None, "ok", False, SESSION, 0),
        ("bms_0/Mode", NOW + 12_346, NOW + 12_346, None, "charge", "stale", False, SESSION, 0),
        ("bms_0/Soc", NOW + 22_345, NOW + 22_345, 87.25, None, "ok", True, SESSION, 1)]
    assert rows(url, "SELECT address, value, text_value, quality, timestamp_us FROM latest ORDER BY address") == [
        ("bms_0/Mode", None, "charge", "stale", NOW + 12_346), ("bms_0/Soc", 87.25, None, "ok", NOW + 22_345)]
    assert rows(url, "SELECT count(*) FROM telemetry", org="other") == [(0,)]  # row-level security holds


def test_a_seq_gap_is_one_data_loss_event_and_a_late_fill_is_not_counted_again(
        running: tuple[Ingest, Edge, str]) -> None:
    ingest, edge, url = running
    for seq in (0, 1, 2, 5, 6):
        edge.send("telemetry", telemetry(seq))
    loss = "SELECT site, kind, detail FROM events WHERE kind = 'data_loss'"
    assert wait(lambda: len(rows(url, loss)) == 1, 60)
    assert rows(url, loss) == [("plant-1", "data_loss", {"stream": "telemetry", "session": SESSION,
                                                         "from_seq": 3, "to_seq": 4})]
    edge.send("telemetry", telemetry(3))  # late: stored, and the event stays the only one
    edge.send("telemetry", telemetry(8))
    assert wait(lambda: ingest.gaps == 2, 60)
    assert [r[2]["from_seq"] for r in rows(url, loss + " ORDER BY id")] == [3, 7]
    assert rows(url, "SELECT seq FROM telemetry ORDER BY seq") == [(s,) for s in (0, 1, 2, 3, 5, 6, 8)]


def test_state_birth_config_status_and_unknown_sites(running: tuple[Ingest, Edge, str], broker: Broker) -> None:
    ingest, edge, url = running
    statuses: list[Any] = []
    ingest.on_config_status = statuses.append
    birth = {"timestamp_us": NOW, "bdSeq": 3, "session": SESSION, "edge_version": "0.1.0",
             "devices": [{"name": "bms_0", "bus": "can0", "protocol": "dbc", "profile": "pylon-lv",
                          "version": "1.1.0", "hash": "3f9c"}],
             "channels": [{"address": "bms_0/Soc", "unit": "%", "kind": "measurement",
                           "description": "state of charge", "min": 0, "max": 100}]}
    with Database(url, max_size=1) as db, db.org("acme") as conn:
        conn.execute("UPDATE sites SET desired_version = 7, config_changed_us = %s", [NOW])
    edge.send("birth", json.dumps(birth).encode())
    edge.send("state", json.dumps({"state": "online", "bdSeq": 3, "timestamp_us": NOW + 1}).encode())
    edge.send("state", json.dumps({"state": "offline", "bdSeq": 2, "timestamp_us": NOW + 2}).encode())  # stale will
    edge.send("config/status", b'{"version":"7","status":"applied","detail":"","switched":["bms_0"]}')
    other = Edge(broker, INGEST)  # the edge's login may not publish under another site
    try:
        other.send("telemetry", telemetry(0), topic="ems/acme/plant-9/")  # no such site
    finally:
        other.close()
    edge.send("telemetry", b"{", topic="ems/acme/plant-1/")
    assert wait(lambda: len(statuses) == 1 and ingest.unknown == 1 and ingest.rejected == 1, 60)
    assert rows(url, "SELECT online, bd_seq, session, last_seen_us, applied_version, config_status FROM sites") == [
        (True, 3, SESSION, NOW + 1, 7, "applied")]  # the stale offline changed nothing
    sync_ms = rows(url, "SELECT sync_ms FROM sites")[0][0]
    assert sync_ms > 0  # arrival − change (NOW is in the past)
    assert rows(url, "SELECT address, unit, kind, min, max FROM channel_info") == [
        ("bms_0/Soc", "%", "measurement", 0.0, 100.0)]
    assert rows(url, "SELECT name, protocol, profile, version, hash FROM devices") == [
        ("bms_0", "dbc", "pylon-lv", "1.1.0", "3f9c")]
    edge.send("state", json.dumps({"state": "offline", "bdSeq": 3, "timestamp_us": NOW + 3}).encode())
    assert wait(lambda: rows(url, "SELECT online FROM sites") == [(False,)], 60)
    assert rows(url, "SELECT kind, detail FROM events ORDER BY id") == [
        ("online", {"bdSeq": 3}), ("offline", {"bdSeq": 3})]
    assert statuses[0].version == "7" and statuses[0].switched == ("bms_0",)


def cli() -> list[str]:
    script = Path(sys.executable).with_name("emsbms")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from emsbms.cli import main; main()"]


class IngestProcess:
    """`emsbms cloud ingest` as a real process, its log in a file."""

    def __init__(self, folder: Path, url: str, broker: Broker, client_id: str) -> None:
        self.log = folder / f"{client_id}-{uuid.uuid4().hex[:6]}.log"
        broker_url = f"mqtt://{INGEST.name}:{INGEST.password}@127.0.0.1:{broker.port}"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen([*cli(), "cloud", "ingest", "--database", url, "--broker", broker_url,
                                             "--client-id", client_id, "--gap-grace-s", "600"],
                                            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        assert wait(lambda: "subscribed to" in self.text() or self.process.poll() is not None, 60), self.text()
        assert self.process.poll() is None, self.text()

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> int:
        """SIGTERM, wait, and the count of messages it received (from its last log line)."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)
        match = re.search(r"received (\d+), samples written (\d+)", self.text())
        assert match, self.text()
        return int(match.group(1))

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(60)


def publish_range(edge: Edge, seqs: range) -> None:
    for seq in seqs:
        edge.send("telemetry", telemetry(seq))


def count_seqs(url: str) -> tuple[int, int]:
    """(telemetry rows, distinct seqs)."""
    row = rows(url, "SELECT count(*), count(DISTINCT seq) FROM telemetry")[0]
    return int(row[0]), int(row[1])


def test_two_ingest_processes_split_the_messages_with_no_duplicate_and_no_loss(
        cloud_db: str, broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    add_site(cloud_db)
    first = IngestProcess(tmp_path, cloud_db, broker, "ingest-a")
    second = IngestProcess(tmp_path, cloud_db, broker, "ingest-b")
    edge = Edge(broker)
    try:
        publish_range(edge, range(400))
        assert wait(lambda: count_seqs(cloud_db) == (400, 400), 120), count_seqs(cloud_db)
        got = [first.stop(), second.stop()]
    finally:
        edge.close()
        first.kill()
        second.kill()
    assert sum(got) == 400 and min(got) > 0, got  # each message went to one of them, and each got some
    assert count_seqs(cloud_db) == (400, 400)


def test_a_sigkilled_ingest_restarted_loses_nothing(cloud_db: str, broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    add_site(cloud_db)
    ingest = IngestProcess(tmp_path, cloud_db, broker, "ingest-k")
    edge = Edge(broker)
    try:
        feeder = threading.Thread(target=publish_range, args=(edge, range(600)))
        feeder.start()
        assert wait(lambda: count_seqs(cloud_db)[0] > 0, 120)
        ingest.kill()  # mid-stream: what it received and did not commit is unacknowledged
        feeder.join()
        stored = count_seqs(cloud_db)[0]
        assert stored < 600, "the ingest wrote everything before the kill: nothing was tested"
        ingest = IngestProcess(tmp_path, cloud_db, broker, "ingest-k")  # the same client id: its session
        assert wait(lambda: count_seqs(cloud_db) == (600, 600), 120), count_seqs(cloud_db)
    finally:
        edge.close()
        ingest.kill()


def test_postgresql_stopped_for_a_while_loses_nothing(broker: Broker, tmp_path: Path) -> None:
    require_postgres()
    server = PgServer(tmp_path / "pg")
    server.start()
    try:
        migrate(server.url)
        add_site(server.url)
        db = Database(server.url)
        ingest = Ingest(db, broker.url, INGEST.name, INGEST.password, client_id="ingest-pg", retry_s=0.2)
        ingest.start()
        edge = Edge(broker)
        try:
            assert ingest.subscribed.wait(20)
            publish_range(edge, range(100))
            assert wait(lambda: count_seqs(server.url) == (100, 100), 120)
            server.stop()
            publish_range(edge, range(100, 200))
            assert wait(lambda: ingest.received == 200, 120), ingest.received
            assert ingest.written_samples == 100  # held, unacknowledged, while the database is away
            server.start()
            assert wait(lambda: count_seqs(server.url) == (200, 200), 180), count_seqs(server.url)
            assert ingest.written_samples == 200
        finally:
            edge.close()
            ingest.stop()
            db.close()
    finally:
        server.remove()
