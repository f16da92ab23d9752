"""The real cloud stack for end-to-end tests: Mosquitto with the dynamic security plugin, a PostgreSQL database,
`emsbms cloud serve`, two organisations (acme with site plant-1, other with plant-9) made with `emsbms cloud org
add` and `POST /sites`, and `emsbms simulate` plus `emsbms run` on demo devices (udp_multicast buses): the edge
runs acme_hv on can0 with its uplink; the simulator also runs pylon_lv on can4 for a config to add.

`start_stack(pg, tmp)` is a context manager yielding a `Stack`; tests/test_cloud_e2e.py and tests/test_web.py use it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import httpx

from emsbms.cloud.pgserver import PgServer
from emsbms.demo import MULTICAST_GROUP, available_profiles, demo_tables, site_toml
from emsbms.uplink.broker import Broker, BrokerUser, free_port
from tests.conftest import wait
from tests.test_uplink_e2e import BusListener
from tests.test_uplink_mqtt import Watcher, emsbms_command, stop_process

ADMIN = ("admin", "admin-pw")


@dataclass
class Login:
    name: str
    password: str


@dataclass
class Stack:
    http: httpx.Client
    tokens: dict[str, str]
    login: Login
    other_login: Login
    buses: dict[str, dict[str, Any]]
    broker: Broker
    admin_db: str
    service_db: str
    watcher: Watcher
    listener: BusListener
    url: str  # the service's root, like http://127.0.0.1:PORT
    log: Path  # serve's stdout and stderr

    def auth(self, org: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[org]}"}

    def get(self, path: str, org: str = "acme", **params: str) -> Any:
        r = self.http.get(f"/{org}{path}", headers=self.auth(org), params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def sent(self, address: str) -> list[tuple[int, float]]:
        """(timestamp_us, value) of every telemetry sample of `address` the edge published, once per (session, seq)."""
        seen: set[tuple[int, int]] = set()
        out: list[tuple[int, float]] = []
        for payload in self.watcher.payloads("ems/acme/plant-1/telemetry"):
            doc = json.loads(payload)
            if (doc["session"], doc["seq"]) in seen:
                continue
            seen.add((doc["session"], doc["seq"]))
            out += [(s["timestamp_us"], s["value"]) for s in doc["samples"] if s["address"] == address]
        return sorted(out)


def cli(*args: str) -> str:
    done = subprocess.run([*emsbms_command(), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def start_stack(pg: PgServer, tmp: Path) -> Iterator[Stack]:
    """Everything up, the edge started (not yet waited for); everything stopped and the database dropped after."""
    name = f"e2e_{uuid.uuid4().hex[:12]}"
    service_db = pg.create_database(name)
    broker = Broker(tmp / "broker", dynsec_admin=ADMIN)
    broker.start()
    port = free_port()
    log = (tmp / "serve.log").open("wb")
    serve = subprocess.Popen([*emsbms_command(), "cloud", "serve", "--broker",
                              f"mqtt://{ADMIN[0]}:{ADMIN[1]}@127.0.0.1:{broker.port}", "--listen", f"127.0.0.1:{port}"],
                             env={**os.environ, "EMSBMS_CLOUD_DATABASE": service_db}, stdout=log, stderr=log)
    procs: list[subprocess.Popen[str]] = []
    watcher: Watcher | None = None
    bus: can.BusABC | None = None
    notifier: can.Notifier | None = None
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/orgs", timeout=60)

        def up() -> bool:
            try:
                return http.get("/nobody/sites").status_code == 401
            except httpx.TransportError:
                return serve.poll() is not None
        assert wait(up, 60) and serve.poll() is None, (tmp / "serve.log").read_text()
        assert wait(lambda: f"cloud: API on http://127.0.0.1:{port}/api/v1" in (tmp / "serve.log").read_text())
        tokens = {org: json.loads(cli("cloud", "org", "add", org, "--database", service_db, "--json"))["token"]
                  for org in ("acme", "other")}
        logins = []
        for org, site in (("acme", "plant-1"), ("other", "plant-9")):
            r = http.post(f"/{org}/sites", headers={"Authorization": f"Bearer {tokens[org]}"}, json={"site": site})
            assert r.status_code == 200, r.text
            logins.append(Login(r.json()["username"], r.json()["password"]))
        # the service role on the broker (given to the admin by `serve`) sees what the edge publishes
        watcher = Watcher(broker, BrokerUser(ADMIN[0], ADMIN[1], ()), ["ems/acme/plant-1/#"])
        assert watcher.granted == [1], watcher.granted

        base_port = random.Random(os.getpid() ^ time.time_ns()).randrange(43000, 47900)
        tables = demo_tables(available_profiles(), "udp_multicast", base_port=base_port)
        buses = {b["name"]: b for b in tables["bus"]}
        wanted = {"acme_hv", "pylon_lv"}
        sim_tables = {"site": {"org": "acme", "name": "plant-1"},
                      "bus": [b for b in tables["bus"] if b["name"] in ("can0", "can4")],
                      "device": [d for d in tables["device"] if d["name"] in wanted]}
        (tmp / "sim.toml").write_text(site_toml(sim_tables), encoding="utf-8")
        edge_tables = {"site": sim_tables["site"], "bus": [buses["can0"]],
                       "device": [d for d in tables["device"] if d["name"] == "acme_hv"]}
        (tmp / "uplink.secret").write_text(logins[0].password + "\n", encoding="utf-8")
        (tmp / "site.toml").write_text(site_toml(edge_tables) + f'\n[uplink]\nurl = "{broker.url}"\n'
                                       f'username = "{logins[0].name}"\npassword_file = "uplink.secret"\n',
                                       encoding="utf-8")
        listener = BusListener()
        bus = can.Bus(interface="udp_multicast", channel=MULTICAST_GROUP, port=buses["can0"]["port"])
        notifier = can.Notifier(bus, [listener])
        for args in (["--site", str(tmp / "sim.toml"), "simulate", "--duration", "600"],
                     ["--site", str(tmp / "site.toml"), "run", "--db", str(tmp / "edge.db")]):
            procs.append(subprocess.Popen([*emsbms_command(), *args], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        yield Stack(http, tokens, logins[0], logins[1], buses, broker, pg.admin_url_for(name), service_db,
                    watcher, listener, f"http://127.0.0.1:{port}", tmp / "serve.log")
        http.close()
    finally:
        for p in reversed(procs):
            stop_process(p)
        if watcher is not None:
            watcher.close()
        if notifier is not None:
            notifier.stop()
        if bus is not None:
            bus.shutdown()
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()
        broker.stop(signal.SIGKILL)
        pg.drop_database(name)
