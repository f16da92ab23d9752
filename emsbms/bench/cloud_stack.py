"""What the cloud scenarios share: a real PostgreSQL, Mosquitto and `emsbms cloud serve`, and light edges.

`stack(folder)` starts a `PgServer`, a `Broker` with the dynamic security plugin and `emsbms cloud serve`
as a process, adds the organisation `bench` and yields a `Stack` (its HTTP client, token and URLs).
`LightEdge` speaks the uplink contract (docs/uplink.md) without an edge behind it: retained `state`
online, `birth`, telemetry with seqs; it answers `cmd` with `acked` and a `config` with `applied` and a
sample of each device the configuration names.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.bench import BenchError
from emsbms.cloud.database import Database, add_org, migrate
from emsbms.cloud.pgserver import PgServer, postgres_path
from emsbms.uplink.broker import Broker, free_port, mosquitto_path

ORG = "bench"
ADMIN = ("admin", "bench-admin-secret")
UP_S = 60.0


def now_us() -> int:
    return time.time_ns() // 1000


def require_cloud() -> None:
    if mosquitto_path() is None or postgres_path() is None:
        raise BenchError("the cloud scenarios need Mosquitto and PostgreSQL (Debian packages mosquitto,"
                         " mosquitto-clients and postgresql-15)")


def cli() -> list[str]:
    script = Path(sys.executable).with_name("emsbms")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from emsbms.cli import main; main()"]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Stack:
    pg: PgServer
    broker: Broker
    serve: subprocess.Popen[bytes]
    http: httpx.Client
    token: str
    database: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def add_site(self, site: str) -> tuple[str, str]:
        r = self.http.post("/sites", headers=self.auth, json={"site": site})
        if r.status_code != 200:
            raise BenchError(f"POST /sites {site}: {r.status_code} {r.text}")
        return str(r.json()["username"]), str(r.json()["password"])

    def count(self, query: str, args: list[Any] | None = None) -> int:
        with psycopg.connect(self.database) as conn, conn.transaction():
            conn.execute("SELECT set_config('app.org_id', %s, true)", [ORG])
            row = conn.execute(query, args).fetchone()
        return int(row[0]) if row else 0


@contextmanager
def stack(folder: Path) -> Iterator[Stack]:
    require_cloud()
    pg = PgServer(folder / "pg")
    pg.start()
    broker = Broker(folder / "broker", dynsec_admin=ADMIN, persistence=False)
    serve: subprocess.Popen[bytes] | None = None
    try:
        url = pg.create_database("bench")
        migrate(url)
        with Database(url, max_size=1) as db:
            token = add_org(db, ORG)
        broker.start()
        port = free_port()
        with (folder / "serve.log").open("wb") as log:
            serve = subprocess.Popen([*cli(), "cloud", "serve", "--broker",
                                      f"mqtt://{ADMIN[0]}:{ADMIN[1]}@127.0.0.1:{broker.port}",
                                      "--listen", f"127.0.0.1:{port}"],
                                     env={**os.environ, "EMSBMS_CLOUD_DATABASE": url}, stdout=log, stderr=log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/orgs/{ORG}", timeout=60) as http:
            s = Stack(pg, broker, serve, http, token, url)
            deadline = time.monotonic() + UP_S
            while True:
                try:
                    if http.get("/sites", headers=s.auth).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if serve.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("emsbms cloud serve did not answer: "
                                     + (folder / "serve.log").read_text(errors="replace")[-1500:])
                time.sleep(0.1)
            yield s
    finally:
        if serve is not None and serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(30)
            except subprocess.TimeoutExpired:
                serve.kill()
                serve.wait()
        broker.stop(signal.SIGKILL)
        pg.remove()


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class LightEdge:
    """One site's edge as the cloud sees it: a paho client with the site's login, no CAN behind it."""

    def __init__(self, port: int, org: str, site: str, login: tuple[str, str], inflight: int = 20) -> None:
        self.prefix = f"ems/{org}/{site}/"
        self.session, self.seq = now_us(), 0
        self.commands = self.configs = 0
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"light-{site}-{uuid.uuid4().hex[:6]}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(*login)
        self.client.max_inflight_messages_set(inflight)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = lambda c, *a: c.subscribe([(self.prefix + "cmd", 1), (self.prefix + "config", 1)])
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.ready.wait(UP_S):
            raise BenchError(f"light edge {site}: not subscribed within {UP_S:g} s")
        self.pub("state", {"state": "online", "bdSeq": 0, "timestamp_us": now_us()}, retain=True)
        self.pub("birth", {"timestamp_us": now_us(), "bdSeq": 0, "session": self.session, "edge_version": "bench",
                           "devices": [], "channels": []})

    def pub(self, kind: str, body: dict[str, Any], retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(self.prefix + kind, json.dumps(body), qos=1, retain=retain)

    def telemetry(self, samples: list[dict[str, Any]]) -> mqtt.MQTTMessageInfo:
        """One telemetry message (the next seq)."""
        info = self.pub("telemetry", {"historical": False, "session": self.session, "seq": self.seq,
                                      "timestamp_us": now_us(), "refresh": False, "samples": samples})
        self.seq += 1
        return info

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        if message.topic.endswith("/cmd"):
            self.commands += 1
            self.pub("cmd/result", {"id": body["id"], "status": "acked", "detail": f"echo {body['value']}",
                                    "took_us": 0, "address": body["address"], "value": body["value"]})
            return
        self.configs += 1
        self.pub("config/status", {"version": body.get("version"), "status": "applied", "detail": "",
                                   "switched": []})
        at = now_us()
        self.telemetry([{"address": f"{d['name']}/Soc", "value": 50.0, "timestamp_us": at, "quality": "ok"}
                        for d in body.get("site", {}).get("device", [])])

    def close(self) -> None:
        self.pub("state", {"state": "offline", "bdSeq": 0, "timestamp_us": now_us()}, retain=True).wait_for_publish(10)
        self.client.disconnect()
        self.client.loop_stop()
