"""`emsbms cloud demo`: the whole path on loopback, in a temporary folder, until Ctrl-C or SIGTERM.

It starts a throwaway PostgreSQL cluster (`PgServer`), Mosquitto with dynamic security (`Broker`),
`emsbms cloud serve` as a child process, the organisation `demo` with its token, the site `demo-1` made
by `POST /sites` (its broker credentials go into the edge's [uplink]), and the edge demo's simulated BMS
units (`emsbms simulate`) behind an edge with its uplink (`emsbms run`), both child processes on
udp_multicast buses. Everything it started is stopped and the folder removed when it ends.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from emsbms.cloud import database as cloud_db
from emsbms.cloud.demo_site import demo_tables, emsbms_command, missing, missing_message, site_toml
from emsbms.cloud.pgserver import PgServer
from emsbms.cloud.service import parse_listen
from emsbms.errors import ConfigError, EmsbmsError
from emsbms.uplink.broker import Broker

ORG = "demo"
SITE = "demo-1"
ADMIN = "admin"
UP_TIMEOUT_S = 60.0  # for the service to answer and the site to come online


class DemoError(EmsbmsError):
    """A part of the demo did not start."""


def say(text: str) -> None:
    print(f"cloud demo: {text}", file=sys.stderr, flush=True)


def check_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT, refused (ConfigError) when it is malformed or taken."""
    host, port = parse_listen(listen)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ConfigError(f"--listen: expected a free address, found {listen} in use or not bindable ({e})"
                              ) from None
    return host, port


class Demo:
    """The running parts, stopped in reverse order by `stop()`; `stop_event` ends `run()`."""

    def __init__(self, folder: Path, listen: str) -> None:
        self.folder = folder
        self.listen = listen
        self.stop_event = threading.Event()
        self.stack = ExitStack()
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.pids: dict[str, int] = {}
        self.url = f"http://{listen}/"
        self.token = ""

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise DemoError("stopped by a signal while starting")

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """`emsbms ARGS` in its own session (a Ctrl-C in the terminal reaches only the demo, which stops it)."""
        log = (self.folder / f"{name}.log").open("wb")
        proc = subprocess.Popen([*emsbms_command(), *args], stdout=log, stderr=log, cwd=self.folder,
                                start_new_session=True, env=env)
        log.close()
        self.children[name] = proc
        self.pids[name] = proc.pid
        self.stack.callback(self._end, name, proc)
        return proc

    def _end(self, name: str, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                say(f"{name} (pid {proc.pid}) did not stop within 60 s of SIGTERM: killed")
                proc.kill()
                proc.wait()
        say(f"stopped {name} (pid {proc.pid})")

    def log_tail(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace")[-2000:] if path.exists() else ""

    def wait_for(self, what: str, predicate: Callable[[], bool], watch: str) -> None:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while not predicate():
            self.check_stop()
            proc = self.children[watch]
            if proc.poll() is not None:
                raise DemoError(f"{watch} exited with {proc.returncode} before {what}: {self.log_tail(watch)}")
            if time.monotonic() > deadline:
                raise DemoError(f"{what}: not within {UP_TIMEOUT_S:g} s; {watch}'s log: {self.log_tail(watch)}")
            time.sleep(0.1)

    def start(self) -> None:
        pg = PgServer(self.folder / "postgres")
        self.stack.callback(self._remove_pg, pg)
        pg.start()
        self.pids["postgres"] = pg.postmaster_pid() or 0
        say(f"PostgreSQL on 127.0.0.1:{pg.port} (pid {self.pids['postgres']}, database emsbms)")
        self.check_stop()

        admin_pw = secrets.token_hex(12)
        broker = Broker(self.folder / "mosquitto", dynsec_admin=(ADMIN, admin_pw))
        self.stack.callback(self._stop_broker, broker)
        broker.start()
        assert broker.process is not None
        self.pids["mosquitto"] = broker.process.pid
        say(f"Mosquitto on {broker.url} (pid {broker.process.pid}, dynamic security, admin {ADMIN!r})")
        self.check_stop()

        serve = self.spawn("serve", ["cloud", "serve", "--broker", f"mqtt://{ADMIN}:{admin_pw}@127.0.0.1:{broker.port}",
                                     "--listen", self.listen],
                           env={**os.environ, "EMSBMS_CLOUD_DATABASE": pg.url})
        api = httpx.Client(base_url=f"http://{self.listen}/api/v1/orgs", timeout=30)
        self.stack.callback(api.close)
        self.wait_for("the API answered", lambda: _status(api, "/nobody/sites") == 401, "serve")
        say(f"emsbms cloud serve on http://{self.listen}/ (pid {serve.pid}, log {self.folder / 'serve.log'})")

        with cloud_db.Database(pg.url, min_size=1, max_size=1) as db:
            self.token = cloud_db.add_org(db, ORG)
        auth = {"Authorization": f"Bearer {self.token}"}
        r = api.post(f"/{ORG}/sites", headers=auth, json={"site": SITE})
        if r.status_code != 200:
            raise DemoError(f"POST /api/v1/orgs/{ORG}/sites answered {r.status_code}: {r.text}")
        login = r.json()
        say(f"organisation {ORG!r} and site {SITE!r} (edge login {login['username']!r})")
        self.check_stop()

        self.start_edge(broker, login)
        self.wait_for(f"site {SITE} online", lambda: _online(api, auth), "run")
        say(f"site {SITE} online")

    def start_edge(self, broker: Broker, login: dict[str, Any]) -> None:
        tables = demo_tables(self.folder, ORG, SITE)
        (self.folder / "sim.toml").write_text(site_toml(tables), encoding="utf-8")
        (self.folder / "uplink.secret").write_text(login["password"] + "\n", encoding="utf-8")
        tables["uplink"] = {"url": broker.url, "username": login["username"], "password_file": "uplink.secret"}
        (self.folder / "site.toml").write_text(site_toml(tables), encoding="utf-8")
        sim = self.spawn("simulate", ["--site", str(self.folder / "sim.toml"), "simulate"])
        say(f"emsbms simulate: {len(tables['device'])} simulated BMS units on {len(tables['bus'])} udp_multicast"
            f" buses (pid {sim.pid})")
        edge = self.spawn("run", ["--site", str(self.folder / "site.toml"), "run", "--db",
                                  str(self.folder / "edge.db")])
        say(f"emsbms run: the edge with its uplink to {broker.url} as {login['username']!r} (pid {edge.pid})")

    def _remove_pg(self, pg: PgServer) -> None:
        pg.remove()
        say("stopped PostgreSQL and removed its cluster")

    def _stop_broker(self, broker: Broker) -> None:
        if broker.process is not None:
            broker.stop()
            say("stopped Mosquitto")

    def run(self) -> str | None:
        """Block until a signal (None) or until a child exits by itself (what happened)."""
        while not self.stop_event.wait(0.5):
            for name, proc in self.children.items():
                if proc.poll() is not None:
                    return f"{name} exited with {proc.returncode}: {self.log_tail(name)}"
        return None

    def stop(self) -> None:
        try:
            self.stack.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            say(f"removed {self.folder}")


def _status(api: httpx.Client, path: str) -> int:
    try:
        return api.get(path).status_code
    except httpx.TransportError:
        return 0


def _online(api: httpx.Client, auth: dict[str, str]) -> bool:
    try:
        r = api.get(f"/{ORG}/sites", headers=auth)
    except httpx.TransportError:
        return False
    return r.status_code == 200 and any(s["site"] == SITE and s["online"] for s in r.json()["sites"])


def run_demo(listen: str, as_json: bool) -> int:
    """The whole demo: 0 after a signal, 2 when something is missing (nothing started), 1 on a failure."""
    lacking = missing()
    if lacking:
        print(f"error: {missing_message(lacking)}", file=sys.stderr)
        return 2
    check_listen(listen)
    demo = Demo(Path(tempfile.mkdtemp(prefix="emsbms-cloud-demo-")), listen)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        demo.stop_event.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        say(f"working in {demo.folder}")
        try:
            demo.start()
        except DemoError as e:
            if demo.stop_event.is_set():
                return 0
            print(f"error: {e}", file=sys.stderr)
            return 1
        if as_json:
            print(json.dumps({"url": demo.url, "token": demo.token, "org": ORG, "site": SITE,
                              "folder": str(demo.folder), "pids": demo.pids}), flush=True)
        else:
            print(f"dashboard: {demo.url}\norganisation: {ORG}\ntoken: {demo.token}\n"
                  "Sign in with the organisation and the token. Ctrl-C stops everything.", flush=True)
        failure = demo.run()
        if failure is not None:
            print(f"error: {failure}", file=sys.stderr)
            return 1
        return 0
    finally:
        say("stopping")
        demo.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
