"""The cloud database against a real PostgreSQL 15: migrations, row-level security binding the
service role, daily telemetry partitions and retention, organisations and tokens, `emsbms cloud`."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import errors
from typer.testing import CliRunner

from emsbms.cli import app
from emsbms.cloud.database import (
    Database,
    add_org,
    check_token,
    drop_partitions_before,
    ensure_partitions,
    migrate,
    migrations,
)
from emsbms.cloud.pgserver import PgServer
from emsbms.errors import ConfigError

pytest_plugins = ["tests.cloud_fixtures"]  # the fixtures pg and cloud_db
pytestmark = pytest.mark.slow

TENANT_TABLES = ["batches", "channel_info", "commands", "devices", "events", "latest", "orgs", "profiles",
                 "site_configs", "sites", "telemetry"]
DAY_US = 86_400_000_000
NOV_20 = int(datetime(2026, 11, 20, tzinfo=UTC).timestamp()) * 1_000_000


def admin(server: PgServer, url: str) -> psycopg.Connection[tuple[object, ...]]:
    """The superuser on the database of `url` (sees every row)."""
    return psycopg.connect(server.admin_url_for(url.rsplit("/", 1)[1]), autocommit=True)


def test_migrations_apply_once_and_record_their_versions(pg: PgServer) -> None:
    name = f"m_{uuid.uuid4().hex[:10]}"
    url = pg.create_database(name)
    try:
        assert migrate(url) == [v for v, _, _ in migrations()]
        assert migrate(url) == []
        with admin(pg, url) as conn:
            recorded = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
        assert recorded[0] == (1, "schema")
        assert recorded == [(v, n) for v, n, _ in migrations()]
    finally:
        pg.drop_database(name)


def test_two_processes_migrating_at_once_apply_each_version_once(pg: PgServer) -> None:
    name = f"m_{uuid.uuid4().hex[:10]}"
    url = pg.create_database(name)
    code = "import sys; from emsbms.cloud.database import migrate; print(migrate(sys.argv[1]))"
    try:
        procs = [subprocess.Popen([sys.executable, "-c", code, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outputs = [ast.literal_eval(p.communicate(timeout=120)[0].strip()) for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        # each version applied by exactly one of them (which one is the race's: each takes the lock per
        # migration), and every version applied once
        assert sorted(outputs[0] + outputs[1]) == [v for v, _, _ in migrations()], outputs
        with admin(pg, url) as conn:
            assert [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] \
                == [v for v, _, _ in migrations()]
    finally:
        pg.drop_database(name)


def test_the_service_role_owns_its_tables_but_is_bound_by_forced_rls(pg: PgServer, cloud_db: str) -> None:
    with admin(pg, cloud_db) as conn:
        assert conn.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'emsbms'").fetchone() \
            == (False, False)
        rows = conn.execute("SELECT relname, pg_get_userbyid(relowner), relrowsecurity, relforcerowsecurity"
                            " FROM pg_class WHERE relname = ANY(%s) ORDER BY relname", (TENANT_TABLES,)).fetchall()
    assert rows == [(t, "emsbms", True, True) for t in TENANT_TABLES]


def test_rls_keeps_organisations_apart(pg: PgServer, cloud_db: str) -> None:
    with Database(cloud_db) as db:
        for org in ("acme", "globex"):
            with db.org(org) as conn:
                conn.execute("INSERT INTO sites (org_id, site, username) VALUES (%s, 'plant-1', %s)",
                             (org, f"{org}.plant-1"))
        with db.org("globex") as conn:
            assert conn.execute("SELECT org_id, site FROM sites").fetchall() == [("globex", "plant-1")]
            assert conn.execute("SELECT count(*) FROM sites WHERE org_id = 'acme'").fetchone() == (0,)
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"), db.org("acme") as conn:
            conn.execute("INSERT INTO sites (org_id, site) VALUES ('globex', 'plant-9')")
        # an update cannot move a row to another organisation either
        with pytest.raises(errors.InsufficientPrivilege, match="row-level security"), db.org("acme") as conn:
            conn.execute("UPDATE sites SET org_id = 'globex' WHERE site = 'plant-1'")
    with psycopg.connect(cloud_db) as conn:  # the service role without app.org_id: nothing
        assert conn.execute("SELECT count(*) FROM sites").fetchone() == (0,)
    with admin(pg, cloud_db) as conn:
        assert conn.execute("SELECT org_id, site FROM sites ORDER BY org_id").fetchall() == [
            ("acme", "plant-1"), ("globex", "plant-1")]


def test_shipped_profiles_are_read_by_every_organisation_and_written_by_none(pg: PgServer, cloud_db: str) -> None:
    with admin(pg, cloud_db) as conn:
        conn.execute("INSERT INTO profiles (org_id, name, version, hash, document) VALUES"
                     " (NULL, 'pylon-lv', '1.0.0', 'h0', '{}'), ('acme', 'mine', '1.0.0', 'h1', '{}')")
    with Database(cloud_db) as db:
        with db.org("acme") as conn:
            assert conn.execute("SELECT name FROM profiles ORDER BY name").fetchall() == [("mine",), ("pylon-lv",)]
            assert conn.execute("UPDATE profiles SET hash = 'x' WHERE name = 'pylon-lv'").rowcount == 0
            assert conn.execute("DELETE FROM profiles WHERE name = 'pylon-lv'").rowcount == 0
        with db.org("globex") as conn:
            assert conn.execute("SELECT name FROM profiles").fetchall() == [("pylon-lv",)]
        with pytest.raises(errors.InsufficientPrivilege), db.org("globex") as conn:
            conn.execute("INSERT INTO profiles (org_id, name, version, hash, document)"
                         " VALUES (NULL, 'pylon-lv', '9.0.0', 'h', '{}')")


def insert_sample(conn: psycopg.Connection[tuple[object, ...]], org: str, timestamp_us: int) -> None:
    conn.execute("INSERT INTO telemetry (org_id, site, address, ts, timestamp_us, value, quality, historical,"
                 " session, seq) VALUES (%s, 'plant-1', 'bms_0/Soc', to_timestamp(%s / 1e6), %s, 55.5, 'good',"
                 " false, 1, 0)", (org, timestamp_us, timestamp_us))


def test_partitions_are_made_ahead_and_a_sample_lands_in_its_day(pg: PgServer, cloud_db: str) -> None:
    with Database(cloud_db) as db:
        with db.org("acme") as conn:
            assert ensure_partitions(conn, NOV_20 + 1, NOV_20 + 2 * DAY_US + 5) == [
                "telemetry_20261120", "telemetry_20261121", "telemetry_20261122"]
            assert ensure_partitions(conn, NOV_20, NOV_20 + 2 * DAY_US) == []
            insert_sample(conn, "acme", NOV_20 + DAY_US + 3_600_000_000)  # Nov 21, 01:00 UTC
            assert conn.execute("SELECT tableoid::regclass::text, timestamp_us FROM telemetry").fetchall() == [
                ("telemetry_20261121", NOV_20 + DAY_US + 3_600_000_000)]
        with db.org("globex") as conn:  # the partition itself carries the policy
            assert conn.execute("SELECT count(*) FROM telemetry_20261121").fetchone() == (0,)
            with pytest.raises(errors.CheckViolation, match="no partition"):
                insert_sample(conn, "globex", NOV_20 + 3 * DAY_US)
    with admin(pg, cloud_db) as conn:
        assert conn.execute("SELECT count(*) FROM telemetry_20261121").fetchone() == (1,)
        assert conn.execute("SELECT relforcerowsecurity FROM pg_class WHERE relname = 'telemetry_20261121'"
                            ).fetchone() == (True,)


def test_retention_drops_exactly_the_partitions_before_the_cutoff(pg: PgServer, cloud_db: str) -> None:
    with Database(cloud_db) as db, db.org("acme") as conn:
        ensure_partitions(conn, NOV_20, NOV_20 + 4 * DAY_US)
        insert_sample(conn, "acme", NOV_20 + 2 * DAY_US + 1)
        assert drop_partitions_before(conn, NOV_20 + 2 * DAY_US + 12 * 3_600_000_000) == [
            "telemetry_20261120", "telemetry_20261121"]
        assert drop_partitions_before(conn, NOV_20 + 2 * DAY_US) == []
        left = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                            " WHERE i.inhparent = 'telemetry'::regclass ORDER BY 1").fetchall()
        assert left == [("telemetry_20261122",), ("telemetry_20261123",), ("telemetry_20261124",)]
        assert conn.execute("SELECT count(*) FROM telemetry").fetchone() == (1,)
        assert ensure_partitions(conn, NOV_20, NOV_20) == ["telemetry_20261120"]  # dropped ones are forgotten


def test_organisations_and_their_tokens(pg: PgServer, cloud_db: str) -> None:
    with Database(cloud_db) as db:
        token = add_org(db, "acme")
        assert check_token(db, "acme", token) is True
        assert check_token(db, "acme", token + "x") is False
        assert check_token(db, "globex", token) is False
        assert check_token(db, "ACME/#", token) is False
        with pytest.raises(ConfigError, match="organisation 'acme' exists already"):
            add_org(db, "acme")
        for bad in ("", "a/b", "a+", "a#", "Acme", "x" * 65):
            with pytest.raises(ConfigError, match=r"organisation name: expected 1 to 64 characters .* found"):
                add_org(db, bad)
    with admin(pg, cloud_db) as conn:
        assert conn.execute("SELECT org_id, token_hash FROM orgs").fetchall() == [
            ("acme", hashlib.sha256(token.encode()).hexdigest())]


def test_cloud_org_add_through_the_cli(cloud_db: str) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["cloud", "org", "add", "acme", "--json"], env={"EMSBMS_CLOUD_DATABASE": cloud_db})
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["org"] == "acme"
    with Database(cloud_db) as db:
        assert check_token(db, "acme", doc["token"]) is True
    r = runner.invoke(app, ["cloud", "org", "add", "acme", "--database", cloud_db])
    assert r.exit_code == 2
    assert r.stderr == "error: organisation 'acme' exists already: choose another name\n"
    r = runner.invoke(app, ["cloud", "org", "add", "Bad/Name", "--database", cloud_db])
    assert r.exit_code == 2
    assert "expected 1 to 64 characters" in r.stderr and "found 'Bad/Name'" in r.stderr
    r = runner.invoke(app, ["cloud", "migrate", "--database", cloud_db])
    assert (r.exit_code, r.stdout) == (0, "the schema is up to date\n")


def test_cloud_without_the_extra_says_how_to_install_it() -> None:
    code = ("import sys; sys.modules['psycopg'] = None; sys.argv = ['emsbms', 'cloud', 'migrate', '--database', 'x'];"
            " from emsbms.cli import main; main()")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "error: emsbms cloud needs the cloud extra: pip install 'emsbms[cloud]'\n"


def test_a_killed_server_starts_again_with_its_committed_rows(pg: PgServer, tmp_path: Path) -> None:
    # a server of its own (pg only skips without PostgreSQL): a commit survives a SIGKILL, as ingest relies on
    with PgServer(tmp_path / "pg") as server:
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE kept (n int)")
            conn.execute("INSERT INTO kept VALUES (7)")
        pid = server.postmaster_pid()
        server.kill()
        assert pid is not None and not Path(f"/proc/{pid}").exists()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(server.url, connect_timeout=5)
        server.start()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT n FROM kept").fetchall() == [(7,)]
            assert conn.execute("SELECT current_user, current_setting('fsync')").fetchone() == ("emsbms", "off")
