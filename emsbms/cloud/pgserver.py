"""A real PostgreSQL in a temporary folder, for tests and demos.

`PgServer` runs `initdb` and `pg_ctl` as the `postgres` user when we are root (initdb refuses root),
with its data and socket folders in a temporary folder that user owns, listening on 127.0.0.1 on a
free port. It is tuned for tests: fsync and full_page_writes are off, so a crash of the machine
may lose data; a killed PostgreSQL loses no commit (synchronous_commit stays on). It creates the service role `emsbms`
(LOGIN NOSUPERUSER NOBYPASSRLS, with a password) owning the database `emsbms`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from emsbms.errors import EmsbmsError
from emsbms.uplink.broker import free_port

ROLE = "emsbms"


class PgServerError(EmsbmsError):
    """PostgreSQL is missing, or did not start or stop."""


def postgres_path() -> Path | None:
    """The folder of PostgreSQL's binaries: $EMSBMS_POSTGRES_BIN when set, else the newest
    /usr/lib/postgresql/*/bin; None without initdb there."""
    if override := os.environ.get("EMSBMS_POSTGRES_BIN"):
        return Path(override) if (Path(override) / "initdb").is_file() else None
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text(encoding="utf-8").rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


class PgServer:
    """A PostgreSQL cluster on 127.0.0.1:`port`; `folder` gets a `runtime` link to its files."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.password = secrets.token_hex(12)  # the emsbms role's
        self.admin_password = secrets.token_hex(12)  # the postgres superuser's
        self.runtime: Path | None = None
        self.as_postgres = os.geteuid() == 0

    @property
    def data(self) -> Path:
        assert self.runtime is not None, "PgServer.start() first"
        return self.runtime / "data"

    @property
    def url(self) -> str:
        return self.url_for(ROLE)

    @property
    def admin_url(self) -> str:
        return self.admin_url_for("postgres")

    def url_for(self, database: str) -> str:
        """The service role's URL for `database`."""
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    def admin_url_for(self, database: str) -> str:
        """The superuser's URL for `database` (tests' checks only)."""
        return f"postgresql://postgres:{self.admin_password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = ["runuser", "-u", "postgres", "--", *args] if self.as_postgres else list(args)
        done = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if done.returncode != 0:
            raise PgServerError(f"{Path(args[0]).name} exited with {done.returncode}: {done.stderr.strip()[-2000:]}"
                                f"{self.log_tail()}")

    def log_tail(self) -> str:
        log = self.runtime / "postgresql.log" if self.runtime else None
        if log is None or not log.exists():
            return ""
        return "\n" + log.read_text(encoding="utf-8", errors="replace")[-2000:]

    def _init(self, bin_dir: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.runtime = Path(tempfile.mkdtemp(prefix="emsbms-pg-"))
        (self.runtime / "sock").mkdir()
        pwfile = self.runtime / "pwfile"
        pwfile.write_text(self.admin_password + "\n", encoding="utf-8")
        if self.as_postgres:
            for path in (self.runtime, self.runtime / "sock", pwfile):
                shutil.chown(path, "postgres", "postgres")
        link = self.folder / "runtime"
        link.unlink(missing_ok=True)
        link.symlink_to(self.runtime)
        self._run(str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", f"--pwfile={pwfile}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "-N")
        pwfile.unlink()

    def start(self) -> None:
        """Start the cluster (initialising it and creating the emsbms role and database the first time)
        and wait until it accepts connections."""
        bin_dir = postgres_path()
        if bin_dir is None:
            raise PgServerError("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin/initdb (Debian"
                                " package postgresql-15)")
        first = self.runtime is None
        if first:
            self._init(bin_dir)
        assert self.runtime is not None
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={self.runtime}/sock",
            # tests only: an OS crash may lose data; a killed server does not (commits are written, not synced)
            "-c fsync=off", "-c full_page_writes=off",
            "-c shared_buffers=64MB", "-c max_connections=200",
        ])
        self._run(str(bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.runtime / "postgresql.log"),
                  "-o", options, "-w", "-t", "60", "start")
        if first:
            self._create_role()

    def _create_role(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(self.password)))
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(ROLE), sql.Identifier(ROLE)))

    def create_database(self, name: str) -> str:
        """A new empty database `name` owned by the emsbms role; its service URL."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def postmaster_pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid" if self.runtime else None
        if pidfile is None or not pidfile.exists():
            return None
        return int(pidfile.read_text(encoding="utf-8").split("\n", 1)[0])

    def stop(self) -> None:
        """A clean stop (`pg_ctl stop -m fast`); the data stays, so start() starts it again."""
        bin_dir = postgres_path()
        if self.runtime is None or bin_dir is None or self.postmaster_pid() is None:
            return
        self._run(str(bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def kill(self, timeout: float = 60.0) -> None:
        """SIGKILL the postmaster and its backends (a crash) and wait until they are gone; start()
        recovers."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        victims = [pid, *_children(pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{p}").exists() for p in victims):
            if time.monotonic() > deadline:
                raise PgServerError(f"PostgreSQL processes {victims} still exist {timeout:g} s after SIGKILL")
            time.sleep(0.02)

    def remove(self) -> None:
        """Stop and delete every file of the cluster."""
        try:
            self.stop()
        finally:
            if self.runtime is not None:
                shutil.rmtree(self.runtime, ignore_errors=True)
                (self.folder / "runtime").unlink(missing_ok=True)
                self.runtime = None

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
