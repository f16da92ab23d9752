"""The cloud database: numbered migrations, a connection pool whose transactions carry the
organisation (row-level security), telemetry partitions and retention, organisations and tokens.

The schema is in migrations/NNNN_name.sql and docs/cloud.md ("Database").
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from emsbms.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x656D73626D73  # 'emsbms': one migrating process at a time
PARTITION_LOCK = 0x656D7370617274  # 'emspart': one process creating partitions at a time
ORG_NAME = re.compile(r"[a-z0-9_.-]{1,64}")
DAY_US = 86_400_000_000
_known_partitions: set[tuple[str, str]] = set()  # (database, partition) seen existing


def migrations() -> list[tuple[int, str, Path]]:
    """(version, name, file) of every migration, in order."""
    found = []
    for path in sorted(MIGRATIONS.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        number, name = path.stem.split("_", 1)
        found.append((int(number), name, path))
    return found


def migrate(url: str) -> list[int]:
    """Apply every migration not yet recorded in schema_migrations, each in one transaction under an
    advisory lock (two processes migrating at once apply each version once). The versions applied now."""
    applied_now = []
    with psycopg.connect(url, autocommit=True) as conn:
        for version, name, path in migrations():
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version int PRIMARY KEY,"
                             " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
                if conn.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (version,)).fetchone():
                    continue
                conn.execute(path.read_text(encoding="utf-8").encode())
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                applied_now.append(version)
    return applied_now


class Database:
    """A pool of connections to the cloud database (as the service role)."""

    def __init__(self, url: str, min_size: int = 1, max_size: int = 8) -> None:
        self.url = url
        self.pool: ConnectionPool[psycopg.Connection[tuple[object, ...]]] = ConnectionPool(
            url, min_size=min_size, max_size=max_size, kwargs={"autocommit": True}, open=True,
            name="emsbms-cloud")

    @contextmanager
    def org(self, org_id: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A connection inside a transaction that sees and writes only `org_id`'s rows (committed at the
        end, rolled back on an exception)."""
        with self.pool.connection() as conn, conn.transaction():
            conn.execute("SELECT set_config('app.org_id', %s, true)", (org_id,))
            yield conn

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def partition_name(day: date) -> str:
    return f"telemetry_{day:%Y%m%d}"


def _day(timestamp_us: int) -> date:
    return datetime.fromtimestamp(timestamp_us // DAY_US * 86_400, UTC).date()


def _is_partitioned(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    """Native partitions (False: a TimescaleDB hypertable)."""
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'telemetry'::regclass").fetchone()
    return row is not None and row[0] == "p"


def ensure_partitions(conn: psycopg.Connection[tuple[object, ...]], from_us: int, to_us: int) -> list[str]:
    """Make the daily telemetry partitions covering [from_us, to_us] (UTC days), each with the table's
    row-level security; those that exist are left alone. The partitions created now.

    Partitions seen existing are remembered, so a later call for them asks nothing; ones created here
    are not, since the caller's transaction may still roll back. Under TimescaleDB this does nothing.
    """
    database = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    days = [_day(from_us) + timedelta(days=i) for i in range((_day(to_us) - _day(from_us)).days + 1)]
    wanted = [d for d in days if (database, partition_name(d)) not in _known_partitions]
    if not wanted or not _is_partitioned(conn):
        return []
    created = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        for day in wanted:
            name = partition_name(day)
            if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,):
                _known_partitions.add((database, name))
                continue
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            table = sql.Identifier(name)
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF telemetry FOR VALUES FROM ({}) TO ({})").format(
                table, sql.Literal(start), sql.Literal(start + timedelta(days=1))))
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(table))
            conn.execute(sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(table))
            conn.execute(sql.SQL("CREATE POLICY org_only ON {} USING (org_id = current_setting('app.org_id', true))"
                                 " WITH CHECK (org_id = current_setting('app.org_id', true))").format(table))
            created.append(name)
    return created


def drop_partitions_before(conn: psycopg.Connection[tuple[object, ...]], cutoff_us: int) -> list[str]:
    """Retention: drop every telemetry partition whose whole day ends at or before `cutoff_us`. The
    partitions dropped (under TimescaleDB, drop_chunks older than the cutoff, and [])."""
    cutoff = datetime.fromtimestamp(cutoff_us / 1e6, UTC)
    if not _is_partitioned(conn):
        conn.execute("SELECT drop_chunks('telemetry', older_than => %s)", (cutoff,))
        return []
    database = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname}"
    rows = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                        " WHERE i.inhparent = 'telemetry'::regclass ORDER BY c.relname").fetchall()
    dropped = []
    with conn.transaction():
        for (name,) in rows:
            if not re.fullmatch(r"telemetry_\d{8}", str(name)):
                continue
            day = datetime.strptime(str(name)[10:], "%Y%m%d").replace(tzinfo=UTC)
            if day + timedelta(days=1) <= cutoff:
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(str(name))))
                _known_partitions.discard((database, str(name)))
                dropped.append(str(name))
    return dropped


def check_org_name(org: str) -> None:
    """ConfigError unless `org` can be an MQTT topic level of ours: 1 to 64 of a-z 0-9 - _ ."""
    if not ORG_NAME.fullmatch(org):
        raise ConfigError(f"organisation name: expected 1 to 64 characters of a-z, 0-9, '-', '_' and '.'"
                          f" (it is a topic level under ems/), found {org!r}")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def add_org(db: Database, org: str) -> str:
    """Create organisation `org`; its API token (only its sha256 is stored). ConfigError for a bad name
    or an organisation that exists."""
    check_org_name(org)
    token = secrets.token_urlsafe(32)
    with db.org(org) as conn:
        row = conn.execute("INSERT INTO orgs (org_id, token_hash, created_us) VALUES (%s, %s, %s)"
                           " ON CONFLICT (org_id) DO NOTHING RETURNING org_id",
                           (org, token_hash(token), time.time_ns() // 1000)).fetchone()
    if row is None:
        raise ConfigError(f"organisation {org!r} exists already: choose another name")
    return token


def check_token(db: Database, org: str, token: str) -> bool:
    """Whether `token` is `org`'s (a constant-time comparison of the hashes; False for unknown orgs)."""
    stored = None
    if ORG_NAME.fullmatch(org):
        with db.org(org) as conn:
            row = conn.execute("SELECT token_hash FROM orgs WHERE org_id = %s", (org,)).fetchone()
        stored = str(row[0]) if row else None
    return hmac.compare_digest(token_hash(token), stored or "0" * 64) and stored is not None
