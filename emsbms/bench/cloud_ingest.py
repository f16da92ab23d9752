"""Cloud ingest throughput: samples/s into PostgreSQL against a bare COPY of the same rows, and 1 vs 2
`emsbms cloud ingest` processes on one shared subscription.

- *in process*: `Ingest.process` (parse, dedupe, COPY, INSERT ... SELECT under row-level security,
  latest values) on prepared messages; the baseline, in the same run and database, is a bare psycopg
  binary COPY of the same rows into an unpartitioned table without RLS, with and without the
  telemetry index (org, site, address, ts).
- *processes*: real `emsbms cloud ingest` processes behind a real Mosquitto; one publisher sends the
  messages as fast as the broker takes them; the time runs to the last row counted in PostgreSQL.
"""

from __future__ import annotations

import json
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from emsbms.bench import BenchError
from emsbms.bench.cloud_stack import ORG, LightEdge, cli, now_us, require_cloud
from emsbms.cloud.database import Database, add_org, migrate
from emsbms.cloud.ingest import Ingest, Received
from emsbms.cloud.ingest_store import to_ts
from emsbms.cloud.pgserver import PgServer
from emsbms.uplink.broker import Broker, BrokerUser

PER_MESSAGE = 100  # samples per telemetry message (the edge's batches hold up to 500)
INGEST = BrokerUser("ingest", "bench-ingest-secret", ("ems/#",))
GOAL_SPS = 100_000


def _samples(seq: int, at: int) -> list[dict[str, Any]]:
    return [{"address": f"bms_{j // 25}/Ch{j % 25}", "value": 50.0 + j + seq / 7, "timestamp_us": at + j,
             "quality": "ok"} for j in range(PER_MESSAGE)]


def _payload(seq: int, at: int) -> bytes:
    return json.dumps({"historical": False, "session": 1, "seq": seq, "timestamp_us": at, "refresh": False,
                       "samples": _samples(seq, at)}).encode()


def _add_sites(url: str, sites: list[str]) -> None:
    with Database(url, max_size=1) as db, db.org(ORG) as conn:
        for site in sites:
            conn.execute("INSERT INTO sites (org_id, site, username) VALUES (%s, %s, %s)", [ORG, site, f"{ORG}.{site}"])


def _count(url: str, site: str) -> int:
    with psycopg.connect(url) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.org_id', %s, true)", [ORG])
        row = conn.execute("SELECT count(*) FROM telemetry WHERE site = %s", [site]).fetchone()
    return int(row[0]) if row else 0


def _in_process(url: str, messages: int) -> dict[str, Any]:
    at = now_us()
    payloads = [_payload(seq, at + seq * 1000) for seq in range(messages)]
    with Database(url, max_size=2) as db:
        ingest = Ingest(db, "mqtt://127.0.0.1:1", "unused", "unused")  # never connects: process() only
        ingest.process([Received(0, 0, 0, f"ems/{ORG}/warm-up/telemetry", _payload(0, at), at)])
        items = [Received(0, i, 0, f"ems/{ORG}/plant-1/telemetry", p, at) for i, p in enumerate(payloads)]
        t0 = time.perf_counter()
        for k in range(0, len(items), 1000):  # Ingest's default batch_size
            ingest.process(items[k:k + 1000])
        ingest_s = time.perf_counter() - t0
    stored = _count(url, "plant-1")
    rows = [(ORG, "plant-1", s["address"], to_ts(s["timestamp_us"]), s["timestamp_us"], s["value"], None, "ok",
             False, 1, seq) for seq, p in enumerate(payloads) for s in json.loads(p)["samples"]]
    bare: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for name, index in (("bare_indexed", True), ("bare", False)):
            conn.execute(f"CREATE TABLE {name} (LIKE telemetry {'INCLUDING INDEXES' if index else ''})")
            t0 = time.perf_counter()
            for k in range(0, len(rows), 100_000):
                with conn.transaction(), conn.cursor() as cur, \
                        cur.copy(f"COPY {name} FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "text", "text", "timestamptz", "int8", "float8", "text", "text", "bool",
                                    "int8", "int8"])
                    for r in rows[k:k + 100_000]:
                        copy.write_row(r)
            bare[name] = len(rows) / (time.perf_counter() - t0)
    sps = stored / ingest_s
    return {"path": "in process", "processes": 1, "samples": len(rows), "stored": stored,
            "samples_per_s": round(sps), "bare_indexed_per_s": round(bare["bare_indexed"]),
            "bare_per_s": round(bare["bare"]), "ratio_vs_bare_indexed": round(sps / bare["bare_indexed"], 2),
            "ratio_vs_bare": round(sps / bare["bare"], 2), "goal_sps": GOAL_SPS}


def _processes(folder: Path, url: str, broker: Broker, count: int, messages: int) -> dict[str, Any]:
    site = f"procs-{count}"
    _add_sites(url, [site])
    procs: list[subprocess.Popen[bytes]] = []
    logs = [folder / f"ingest-{count}-{i}.log" for i in range(count)]
    edge: LightEdge | None = None
    try:
        for i, log in enumerate(logs):
            with log.open("wb") as out:
                procs.append(subprocess.Popen(
                    [*cli(), "cloud", "ingest", "--database", url, "--client-id", f"bench-ingest-{count}-{i}",
                     "--group", f"bench-{count}",  # a stopped member's persistent session keeps its share
                     "--broker", f"mqtt://{INGEST.name}:{INGEST.password}@127.0.0.1:{broker.port}"],
                    stdout=out, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while not all("subscribed to" in log.read_text(errors="replace") for log in logs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise BenchError("cloud ingest processes did not subscribe: "
                                 + " | ".join(log.read_text(errors="replace")[-500:] for log in logs))
            time.sleep(0.1)
        edge = LightEdge(broker.port, ORG, site, (f"{ORG}.{site}", "bench-edge-secret"), inflight=1000)
        at = now_us()
        batches = [_samples(seq, at + seq * 1000) for seq in range(messages)]
        t0 = time.perf_counter()
        for samples in batches:
            edge.telemetry(samples)
        want = messages * PER_MESSAGE
        stored = 0
        while stored < want and time.perf_counter() - t0 < 120:
            time.sleep(0.05)
            stored = _count(url, site)
        took = time.perf_counter() - t0
    finally:
        if edge is not None:
            edge.close()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
    return {"path": "MQTT, shared subscription", "processes": count, "samples": want, "stored": stored,
            "samples_per_s": round(stored / took), "goal_sps": GOAL_SPS}


def run(quick: bool) -> list[dict[str, Any]]:
    """In process against the bare COPY, then 1 and 2 ingest processes (quick: tiny)."""
    require_cloud()
    with tempfile.TemporaryDirectory(prefix="emsbms-bench-cloud-") as tmp:
        folder = Path(tmp)
        pg = PgServer(folder / "pg")
        pg.start()
        try:
            url = pg.create_database("bench")
            migrate(url)
            with Database(url, max_size=1) as db:
                add_org(db, ORG)
            _add_sites(url, ["plant-1", "warm-up"])
            results = [_in_process(url, 20 if quick else 1500)]
            sites = [f"procs-{n}" for n in (1, 2)]
            users = [INGEST, *(BrokerUser(f"{ORG}.{s}", "bench-edge-secret", (f"ems/{ORG}/{s}/#",)) for s in sites)]
            with Broker(folder / "broker", users, persistence=False) as broker:
                for n in (1, 2):
                    results.append(_processes(folder, url, broker, n, 20 if quick else 1000))
            first = results[1]["samples_per_s"]
            for r in results[1:]:
                r["ratio_vs_one_process"] = round(r["samples_per_s"] / first, 2) if first else None
        finally:
            pg.remove()
    return results
