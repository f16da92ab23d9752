"""Ingest's writes: one organisation's parsed records in one transaction (the caller's `Database.org`).

Batches are deduplicated by (site, stream, session, seq) with INSERT ... ON CONFLICT DO NOTHING
RETURNING; only the samples of the new ones are COPYed (binary, typed columns), through a temporary table kept per
connection and emptied at each commit (PostgreSQL refuses COPY FROM into a table with row-level
security; the INSERT ... SELECT from it passes the policy).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from emsbms.cloud.alarms_store import write_alarms
from emsbms.cloud.database import ensure_partitions
from emsbms.cloud.ingest_gaps import Gap, Run, settle
from emsbms.cloud.ingest_parse import Batch, Birth, ConfigStatus, Record, State

Conn = psycopg.Connection[Any]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
StreamKey = tuple[str, str, int]  # (site, stream, session) within one organisation
COLUMNS = "org_id, site, address, ts, timestamp_us, value, text_value, quality, historical, session, seq"
STAGE_COLUMNS = "site, address, timestamp_us, value, text_value, quality, historical, session, seq"
STAGE_TYPES = ["text", "text", "int8", "float8", "text", "text", "bool", "int8", "int8"]
# One per connection (session), emptied by every commit; org_id and ts are added by the INSERT ... SELECT.
STAGE_TABLE = ("CREATE TEMP TABLE IF NOT EXISTS ingest_stage (site text, address text, timestamp_us int8, value float8,"
               " text_value text, quality text, historical bool, session int8, seq int8) ON COMMIT DELETE ROWS")


@dataclass
class Written:
    """What one organisation's transaction did."""

    samples: int = 0
    duplicates: int = 0
    new_streams: set[StreamKey] = field(default_factory=set)


def to_ts(timestamp_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=timestamp_us)


def known_sites(conn: Conn, sites: Iterable[str]) -> set[str]:
    rows = conn.execute("SELECT site FROM sites WHERE site = ANY(%s)", [sorted(set(sites))]).fetchall()
    return {str(r[0]) for r in rows}


def write_records(conn: Conn, org: str, records: Sequence[tuple[Record, int]]) -> Written:
    """Store (record, received_us) pairs of one organisation's known sites."""
    done = Written()
    batches = [(r, at) for r, at in records if isinstance(r, Batch)]
    if batches:
        _write_batches(conn, org, batches, done)
    for record, at in records:
        if isinstance(record, State):
            _state(conn, org, record, at)
        elif isinstance(record, Birth):
            _birth(conn, org, record)
        elif isinstance(record, ConfigStatus):
            _config_status(conn, record, at)
    return done


def _write_batches(conn: Conn, org: str, batches: list[tuple[Batch, int]], done: Written) -> None:
    unique: dict[tuple[str, str, int, int], tuple[Batch, int]] = {}
    for b, at in batches:
        unique.setdefault((b.site, b.stream.value, b.session, b.seq), (b, at))
    done.duplicates += len(batches) - len(unique)
    keys = list(unique)
    rows = conn.execute(
        "INSERT INTO batches (org_id, site, stream, session, seq, received_us, historical)"
        " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bool[])"
        " ON CONFLICT DO NOTHING RETURNING site, stream, session, seq",
        [org, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
         [unique[k][1] for k in keys], [unique[k][0].historical for k in keys]]).fetchall()
    new = [unique[(str(r[0]), str(r[1]), int(r[2]), int(r[3]))][0] for r in rows]
    done.duplicates += len(unique) - len(new)
    done.new_streams.update((b.site, b.stream.value, b.session) for b in new)
    samples = [(b, s) for b in new for s in b.samples]
    if samples:
        conn.execute(STAGE_TABLE)
        lo, hi = samples[0][1].timestamp_us, samples[0][1].timestamp_us
        with conn.cursor() as cur, cur.copy(f"COPY ingest_stage ({STAGE_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(STAGE_TYPES)
            write = copy.write_row
            for b, s in samples:
                stamp = s.timestamp_us
                lo, hi = min(lo, stamp), max(hi, stamp)
                write((b.site, s.address, stamp, s.value, s.text_value, s.quality, b.historical, b.session, b.seq))
        ensure_partitions(conn, lo, hi)
        conn.execute(f"INSERT INTO telemetry ({COLUMNS}) SELECT %s, site, address, timestamptz 'epoch' + timestamp_us"
                     f" * interval '1 microsecond', {STAGE_COLUMNS.split(', ', 2)[2]} FROM ingest_stage", [org])
        done.samples += len(samples)
        _latest(conn, org, samples)
    if any(b.alarms for b in new):
        write_alarms(conn, org, [b for b in new if b.alarms], max(at for _, at in batches))
    events = [(b, e) for b in new for e in b.events]
    for b, e in events:
        conn.execute("INSERT INTO events (org_id, site, timestamp_us, kind, device, detail) VALUES (%s, %s, %s, %s,"
                     " %s, %s)", [org, b.site, e.timestamp_us, e.kind, e.device,
                                  Jsonb({**e.detail, "session": b.session, "seq": b.seq,
                                         "historical": b.historical})])


def _latest(conn: Conn, org: str, samples: list[tuple[Batch, Any]]) -> None:
    newest: dict[tuple[str, str], Any] = {}
    for b, s in samples:  # the last of equal timestamps wins
        key = (b.site, s.address)
        old = newest.get(key)
        if old is None or s.timestamp_us >= old.timestamp_us:
            newest[key] = s
    keys = sorted(newest)
    conn.execute(
        "INSERT INTO latest AS l (org_id, site, address, value, text_value, quality, timestamp_us)"
        " SELECT %s, * FROM unnest(%s::text[], %s::text[], %s::float8[], %s::text[], %s::text[], %s::bigint[])"
        " ON CONFLICT (org_id, site, address) DO UPDATE SET value = excluded.value, text_value ="
        " excluded.text_value, quality = excluded.quality, timestamp_us = excluded.timestamp_us"
        " WHERE l.timestamp_us IS NULL OR excluded.timestamp_us > l.timestamp_us",
        [org, [k[0] for k in keys], [k[1] for k in keys], [newest[k].value for k in keys],
         [newest[k].text_value for k in keys], [newest[k].quality for k in keys],
         [newest[k].timestamp_us for k in keys]])


def _event(conn: Conn, org: str, site: str, at_us: int, kind: str, detail: dict[str, Any]) -> None:
    conn.execute("INSERT INTO events (org_id, site, timestamp_us, kind, device, detail) VALUES (%s, %s, %s, %s,"
                 " NULL, %s)", [org, site, at_us, kind, Jsonb(detail)])


def _state(conn: Conn, org: str, s: State, at_us: int) -> None:
    """online: the site is online with this bdSeq; offline: only if its bdSeq is the current birth's."""
    if s.online:
        row = conn.execute(
            "UPDATE sites SET online = true, bd_seq = %s, last_seen_us = greatest(last_seen_us, %s)"
            " WHERE site = %s RETURNING (SELECT online AND bd_seq = %s FROM sites WHERE site = %s)",
            [s.bd_seq, s.timestamp_us, s.site, s.bd_seq, s.site]).fetchone()
        if row is not None and not row[0]:
            _event(conn, org, s.site, s.timestamp_us, "online", {"bdSeq": s.bd_seq})
        return
    row = conn.execute(
        "UPDATE sites SET online = false, last_seen_us = greatest(last_seen_us, %s)"
        " WHERE site = %s AND (bd_seq IS NULL OR bd_seq = %s) RETURNING (SELECT online FROM sites WHERE site = %s)",
        [s.timestamp_us, s.site, s.bd_seq, s.site]).fetchone()
    if row is not None and row[0]:
        _event(conn, org, s.site, s.timestamp_us, "offline", {"bdSeq": s.bd_seq})


def _birth(conn: Conn, org: str, b: Birth) -> None:
    """The site's channels and devices as the birth says, unless a birth of a later session came first."""
    row = conn.execute("UPDATE sites SET bd_seq = %s, session = %s, last_seen_us = greatest(last_seen_us, %s)"
                       " WHERE site = %s AND (session IS NULL OR session <= %s) RETURNING site",
                       [b.bd_seq, b.session, b.timestamp_us, b.site, b.session]).fetchone()
    if row is None:
        return
    conn.execute("DELETE FROM channel_info WHERE site = %s", [b.site])
    conn.execute("DELETE FROM devices WHERE site = %s", [b.site])
    with conn.cursor() as cur:
        cur.executemany("INSERT INTO channel_info (org_id, site, address, unit, kind, description, min, max)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(org, b.site, c.address, c.unit, c.kind, c.description, c.min, c.max) for c in b.channels])
        cur.executemany("INSERT INTO devices (org_id, site, name, bus, protocol, profile, version, hash)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                        [(org, b.site, d.name, d.bus, d.protocol, d.profile, d.version, d.hash) for d in b.devices])


def _config_status(conn: Conn, c: ConfigStatus, at_us: int) -> None:
    """The site's config status; applied_version and sync_ms (arrival − change) on the first `applied` of
    the desired version."""
    version = int(c.version) if c.version is not None and c.version.isdigit() and len(c.version) < 10 else None
    applied = c.status == "applied" and version is not None
    conn.execute(
        "UPDATE sites SET config_status = %(status)s, config_reason = %(reason)s,"
        " sync_ms = CASE WHEN %(applied)s AND desired_version = %(v)s AND applied_version IS DISTINCT FROM %(v)s"
        "   AND config_changed_us IS NOT NULL THEN (%(at)s - config_changed_us) / 1000.0 ELSE sync_ms END,"
        " applied_version = CASE WHEN %(applied)s THEN %(v)s ELSE applied_version END WHERE site = %(site)s",
        {"status": c.status, "reason": c.detail or None, "applied": applied, "v": version, "at": at_us,
         "site": c.site})


def scan_gaps(conn: Conn, org: str, key: StreamKey, now_us: int, grace_us: int) -> tuple[list[Gap], bool]:
    """Settle one stream's holes (a data_loss event each); whether seqs above the settled mark remain."""
    site, stream, session = key
    conn.execute("INSERT INTO ingest_streams (org_id, site, stream, session) VALUES (%s, %s, %s, %s)"
                 " ON CONFLICT DO NOTHING", [org, site, stream, session])
    row = conn.execute("SELECT settled_seq FROM ingest_streams WHERE site = %s AND stream = %s AND session = %s"
                       " FOR UPDATE", [site, stream, session]).fetchone()
    assert row is not None
    settled = int(row[0])
    where = "site = %s AND stream = %s AND session = %s AND seq > %s"
    args = [site, stream, session, settled]
    runs = [Run(int(r[0]), int(r[1]), int(r[2])) for r in conn.execute(
        "SELECT min(seq), max(seq), min(received_us) FROM (SELECT seq, received_us, seq - row_number() OVER"
        f" (ORDER BY seq) AS grp FROM batches WHERE {where}) t GROUP BY grp ORDER BY 1", args).fetchall()]
    hist = conn.execute(f"SELECT max(received_us) FROM batches WHERE {where} AND historical", args).fetchone()
    last_historical = None if hist is None or hist[0] is None else int(hist[0])
    gaps, new_settled = settle(settled, runs, last_historical, now_us, grace_us)
    for gap in gaps:
        _event(conn, org, site, now_us, "data_loss", {"stream": stream, "session": session,
                                                      "from_seq": gap.from_seq, "to_seq": gap.to_seq})
    if new_settled != settled:
        conn.execute("UPDATE ingest_streams SET settled_seq = %s WHERE site = %s AND stream = %s AND session = %s",
                     [new_settled, site, stream, session])
    return gaps, bool(runs) and runs[-1].hi > new_settled
