"""The cloud HTTP API through real HTTP (uvicorn on a thread, httpx), a real PostgreSQL and a real Mosquitto.

A fake edge (a paho client with the site's credentials) answers `cmd` with `cmd/result`. Sites and their
`online` flag are written in SQL under the organisation (ingest's part elsewhere).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql

from emsbms.cloud.api import openapi_text
from emsbms.cloud.database import Database, add_org, ensure_partitions
from emsbms.cloud.pgserver import PgServer
from emsbms.cloud.service import CloudService, HttpServer
from emsbms.db import EdgeDb
from emsbms.db.profiles import content_hash
from emsbms.resources import data_dir
from emsbms.site import Site
from emsbms.uplink.broker import Broker, BrokerUser, free_port
from emsbms.uplink.config import desired
from tests.cloud_fixtures import cloud_db, pg  # noqa: F401
from tests.conftest import wait
from tests.test_uplink_mqtt import Watcher, require_mosquitto

CLOUD = BrokerUser("cloud", "cloud-pw", ("ems/#",))
EDGE = BrokerUser("acme.plant-1", "edge-pw", ("ems/acme/plant-1/#",))
ROOT = Path(__file__).resolve().parent.parent
BUS = {"name": "can0", "interface": "virtual", "channel": "cloud-api-can0"}


@dataclass
class Cloud:
    http: httpx.Client
    db: Database
    broker: Broker
    tokens: dict[str, str]

    def auth(self, org: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[org]}"}

    def sql(self, org: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.db.org(org) as conn:
            cur = conn.execute(query, list(args))
            return list(cur.fetchall()) if cur.description else []


@pytest.fixture
def cloud(cloud_db: str, tmp_path: Path) -> Iterator[Cloud]:  # noqa: F811
    require_mosquitto()
    broker = Broker(tmp_path / "broker", [CLOUD, EDGE])
    broker.start()
    db = Database(cloud_db)
    tokens = {org: add_org(db, org) for org in ("acme", "other")}
    for org, site in (("acme", "plant-1"), ("other", "plant-9")):
        with db.org(org) as conn:
            conn.execute("INSERT INTO sites (org_id, site, username) VALUES (%s, %s, %s)", [org, site, f"{org}.{site}"])
    service = CloudService(db, f"mqtt://{CLOUD.name}:{CLOUD.password}@127.0.0.1:{broker.port}")
    service.start()
    server = HttpServer(service, "127.0.0.1", free_port())
    server.start()
    try:
        with httpx.Client(base_url=server.url + "/api/v1/orgs", timeout=60) as http:
            yield Cloud(http, db, broker, tokens)
    finally:
        server.stop()
        service.stop()
        db.close()
        broker.stop(signal.SIGKILL)


def hv_profile(version: str = "2.0.0") -> tuple[dict[str, Any], str]:
    doc = json.loads((data_dir("profiles") / "acme-hv.json").read_text(encoding="utf-8"))
    doc["version"] = version
    return doc, (data_dir("dbc") / "acme_hv.dbc").read_text(encoding="utf-8")


class FakeEdge:
    """The site's edge, answering every `cmd` with an `acked` `cmd/result` and keeping what it received."""

    def __init__(self, broker: Broker, user: BrokerUser = EDGE) -> None:
        self.received: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(user.name, user.password)
        self.client.on_connect = lambda c, *a: c.subscribe("ems/acme/plant-1/cmd", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        cmd = json.loads(message.payload)
        self.received.append({**cmd, "received_us": time.time_ns() // 1000})
        result = {"id": cmd["id"], "status": "acked", "detail": f"echo {cmd['value']}", "took_us": 1200,
                  "address": cmd["address"], "value": cmd["value"]}
        client.publish("ems/acme/plant-1/cmd/result", json.dumps(result), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_tokens_and_another_orgs_site(cloud: Cloud) -> None:
    assert cloud.http.get("/acme/sites").status_code == 401
    r = cloud.http.get("/acme/sites", headers=cloud.auth())
    assert r.status_code == 200
    assert r.json() == {"sites": [{"site": "plant-1", "online": False, "last_seen_us": None,
                                   "desired_version": None, "applied_version": None}]}
    wrong = cloud.http.get("/acme/sites", headers={"Authorization": "Bearer nope"})
    unknown = cloud.http.get("/nosuch/sites", headers=cloud.auth())
    foreign = cloud.http.get("/other/sites", headers=cloud.auth())  # acme's token on other's org
    assert (wrong.status_code, unknown.status_code, foreign.status_code) == (404, 404, 404)
    assert wrong.json()["field"] == unknown.json()["field"] == "org"
    # other's token sees no acme site, and acme's site under other's org is a 404
    assert cloud.http.get("/other/sites", headers=cloud.auth("other")).json()["sites"][0]["site"] == "plant-9"
    r = cloud.http.get("/other/sites/plant-1/config", headers=cloud.auth("other"))
    assert (r.status_code, r.json()["field"]) == (404, "site")
    r = cloud.http.post("/other/sites/plant-1/commands", headers=cloud.auth("other"),
                        json={"address": "bms_0/SetChargeCurrent", "value": 1})
    assert r.status_code == 404
    assert cloud.sql("other", "SELECT count(*) FROM commands") == [(0,)]


def test_post_profile_good_and_bad(cloud: Cloud) -> None:
    doc, dbc = hv_profile()
    r = cloud.http.post("/acme/profiles", headers=cloud.auth(), json={"profile": doc, "files": {"acme_hv.dbc": dbc}})
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "acme-hv" and r.json()["version"] == "2.0.0"
    stored = cloud.sql("acme", "SELECT hash, document, source FROM profiles WHERE org_id = 'acme'")
    assert len(stored) == 1 and r.json()["hash"] == stored[0][0] == content_hash(stored[0][1], dbc)
    assert cloud.sql("other", "SELECT count(*) FROM profiles") == [(0,)]

    r = cloud.http.post("/acme/profiles", headers=cloud.auth(), json={"profile": doc, "files": {}})
    assert r.status_code == 422 and r.json()["field"] == "files" and "'acme_hv.dbc'" in r.json()["error"]
    bad = json.loads(json.dumps(doc))
    bad["version"] = "2.1.0"
    bad["commands"]["SetChargeCurrent"]["max"] = "lots"
    r = cloud.http.post("/acme/profiles", headers=cloud.auth(), json={"profile": bad, "files": {"acme_hv.dbc": dbc}})
    assert r.status_code == 422 and r.json()["field"] == "profile"
    assert "commands.SetChargeCurrent.max" in r.json()["error"] and "'lots'" in r.json()["error"]
    shipped, _ = hv_profile("1.0.0")
    r = cloud.http.post("/acme/profiles", headers=cloud.auth(),
                        json={"profile": shipped, "files": {"acme_hv.dbc": dbc}})
    assert r.status_code == 409 and "shipped" in r.json()["error"]
    assert cloud.sql("acme", "SELECT version FROM profiles") == [("2.0.0",)]


def test_put_config_published_retained_and_bad_config_stores_nothing(cloud: Cloud, tmp_path: Path) -> None:
    device = {"name": "bms_0", "bus": "can0", "profile": "acme-hv"}
    bad = cloud.http.put("/acme/sites/plant-1/config", headers=cloud.auth(),
                         json={"buses": [BUS], "devices": [{**device, "profile": "nope"}]})
    assert bad.status_code == 422 and bad.json()["field"] == "devices[0].profile" and "'nope'" in bad.json()["error"]
    twins = cloud.http.put("/acme/sites/plant-1/config", headers=cloud.auth(),
                           json={"buses": [BUS], "devices": [device, {**device, "name": "bms_1"}]})
    assert twins.status_code == 422 and twins.json()["field"] == "devices" and "bms_0" in twins.json()["error"]
    assert cloud.sql("acme", "SELECT count(*) FROM site_configs") == [(0,)]

    good = cloud.http.put("/acme/sites/plant-1/config", headers=cloud.auth(),
                          json={"buses": [BUS], "devices": [device], "rules": []})
    assert good.status_code == 200 and good.json() == {"version": 1}
    watcher = Watcher(cloud.broker, EDGE, ["ems/acme/plant-1/config"])  # subscribes after: sees the retained one
    try:
        assert wait(lambda: watcher.messages)
        _, payload, retained = watcher.messages[0]  # the first is version 1: nothing was published before
        sent = json.loads(payload)
        assert retained and sent["version"] == "1"
        assert sent["site"] == {"bus": [BUS], "device": [{**device, "profile": "acme-hv@1.0.0"}]}
        assert [p["document"]["name"] for p in sent["profiles"]] == ["acme-hv"]
        assert sent["profiles"][0]["source"].startswith("VERSION")
        with EdgeDb(tmp_path / "edge.db") as edge_db:  # the edge's own parser takes it as it is
            want = desired(payload, Site(org="acme", name="plant-1", buses=[], devices=[]), edge_db)
        assert want.version == "1" and want.profiles["bms_0"].version == "1.0.0"
        assert [d.profile for d in want.site.devices] == ["acme-hv@1.0.0"]
    finally:
        watcher.close()
    r = cloud.http.get("/acme/sites/plant-1/config", headers=cloud.auth())
    assert r.json() == {"desired_version": 1, "applied_version": None, "status": "pending", "reason": None,
                        "sync_ms": None}


def test_command_to_an_offline_site_is_offline_at_once(cloud: Cloud) -> None:
    watcher = Watcher(cloud.broker, EDGE, ["ems/acme/plant-1/cmd"])
    try:
        r = cloud.http.post("/acme/sites/plant-1/commands", headers=cloud.auth(),
                            json={"address": "bms_0/SetChargeCurrent", "value": 20, "timeout_s": 600})
        assert r.status_code == 200 and r.json()["status"] == "offline" and r.json()["round_trip_ms"] is None
        assert cloud.sql("acme", "SELECT status FROM commands") == [("offline",)]
        cloud.sql("acme", "UPDATE sites SET online = true")
        r = cloud.http.post("/acme/sites/plant-1/commands", headers=cloud.auth(),
                            json={"address": "bms_0/SetChargeCurrent", "value": 21, "timeout_s": 0.2})
        assert r.json()["status"] == "timeout"
        assert wait(lambda: watcher.payloads("ems/acme/plant-1/cmd"))
        assert [json.loads(p)["value"] for p in watcher.payloads("ems/acme/plant-1/cmd")] == [21]  # never 20
    finally:
        watcher.close()


def test_command_acked_by_the_edge_and_timeout(cloud: Cloud) -> None:
    cloud.sql("acme", "UPDATE sites SET online = true")
    edge = FakeEdge(cloud.broker)
    try:
        before = time.time_ns() // 1000
        r = cloud.http.post("/acme/sites/plant-1/commands", headers=cloud.auth(),
                            json={"address": "bms_0/SetChargeCurrent", "value": 42.5, "timeout_s": 30})
        body = r.json()
        assert r.status_code == 200 and body["status"] == "acked" and body["detail"] == "echo 42.5"
        assert isinstance(body["round_trip_ms"], float) and body["round_trip_ms"] > 0
        cmd = edge.received[0]
        assert cmd["id"] == body["id"] and cmd["address"] == "bms_0/SetChargeCurrent"
        assert before + 30_000_000 <= cmd["deadline_us"] <= cmd["received_us"] + 30_000_000
        assert cloud.sql("acme", "SELECT status, round_trip_ms FROM commands WHERE id = %s", body["id"]) == [
            ("acked", body["round_trip_ms"])]
    finally:
        edge.close()
    r = cloud.http.post("/acme/sites/plant-1/commands", headers=cloud.auth(),
                        json={"address": "bms_0/SetChargeCurrent", "value": 1, "timeout_s": 0.3})
    assert r.json()["status"] == "timeout" and "0.3 s" in r.json()["detail"]
    assert cloud.sql("acme", "SELECT status FROM commands WHERE id = %s", r.json()["id"]) == [("timeout",)]


def test_command_outside_the_desired_profiles_limits_is_rejected_by_the_cloud(cloud: Cloud) -> None:
    cloud.sql("acme", "UPDATE sites SET online = true")
    device = {"name": "bms_0", "bus": "can0", "profile": "acme-hv"}
    assert cloud.http.put("/acme/sites/plant-1/config", headers=cloud.auth(),
                          json={"buses": [BUS], "devices": [device]}).status_code == 200
    r = cloud.http.post("/acme/sites/plant-1/commands", headers=cloud.auth(),
                        json={"address": "bms_0/SetChargeCurrent", "value": 500, "timeout_s": 5})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert "expected 0..200" in r.json()["detail"] and "found 500" in r.json()["detail"]
    r = cloud.http.post("/acme/sites/plant-1/commands", headers=cloud.auth(),
                        json={"address": "bms_0/Soc", "value": 5, "timeout_s": 5})
    assert r.json()["status"] == "rejected" and "found 'Soc'" in r.json()["detail"]


def test_malformed_bodies_name_the_field(cloud: Cloud) -> None:
    url = "/acme/sites/plant-1/commands"
    r = cloud.http.post(url, headers={**cloud.auth(), "Content-Type": "application/json"}, content=b"{not json")
    assert r.status_code == 422 and r.json()["field"] == "body" and "not JSON" in r.json()["error"]
    r = cloud.http.post(url, headers=cloud.auth(), json={"address": "bms_0/SetChargeCurrent", "value": "20"})
    assert r.status_code == 422 and r.json()["errors"] == [{"field": "value", "expected": "a valid number",
                                                            "found": "'20'"}]
    r = cloud.http.post(url, headers=cloud.auth(), json={"address": "bms_0/SetChargeCurrent", "value": True})
    assert r.status_code == 422 and r.json()["field"] == "value" and "found True" in r.json()["error"]
    r = cloud.http.post(url, headers=cloud.auth(), json={"value": 20})
    assert r.status_code == 422 and r.json()["errors"] == [{"field": "address", "expected": "this field",
                                                            "found": "nothing"}]
    r = cloud.http.post(url, headers=cloud.auth(), json={"address": "bms_0/X", "value": 1, "timout_s": 3})
    assert r.status_code == 422 and r.json()["field"] == "timout_s"
    r = cloud.http.put("/acme/sites/plant-1/config", headers=cloud.auth(), json={"buses": {}, "devices": []})
    assert r.status_code == 422 and r.json()["field"] == "buses" and "found {}" in r.json()["error"]
    r = cloud.http.get("/acme/sites/plant-1/series", headers=cloud.auth(),
                       params={"address": "bms_0/Soc", "from": "yesterday", "to": "2026-11-26T00:00:00Z"})
    assert r.status_code == 422 and r.json()["field"] == "from" and "'yesterday'" in r.json()["error"]
    assert cloud.sql("acme", "SELECT count(*) FROM commands") == [(0,)]


CONTRACT = {
    ("post", "/sites"), ("get", "/sites"), ("get", "/sites/{site}/channels"), ("get", "/sites/{site}/series"),
    ("post", "/sites/{site}/commands"), ("post", "/profiles"), ("put", "/sites/{site}/config"),
    ("get", "/sites/{site}/config"), ("get", "/sites/{site}/events"),
    ("get", "/sites/{site}/alarms"), ("post", "/sites/{site}/alarms/{alarm_id}/ack"), ("post", "/webhooks"),
    ("get", "/webhooks"), ("delete", "/webhooks/{webhook_id}"),
    ("get", "/sites/{site}/live"), ("get", "/sites/{site}/devices"),
    ("get", "/sites/{site}/overrides"), ("delete", "/sites/{site}/overrides/{address}"),
}


def test_openapi_lists_every_contract_path(cloud: Cloud) -> None:
    served = cloud.http.get(str(cloud.http.base_url).rsplit("/api/", 1)[0] + "/openapi.json").json()
    listed = {(m, p.removeprefix("/api/v1/orgs/{org}")) for p, ops in served["paths"].items() for m in ops}
    assert listed == CONTRACT
    assert json.loads((ROOT / "docs" / "openapi.json").read_text(encoding="utf-8")) == json.loads(openapi_text()), (
        "docs/openapi.json is stale: .venv/bin/python -m emsbms.cloud.api > docs/openapi.json")


def test_cloud_serve_process_adds_a_site_sees_it_online_and_gets_its_command_acked(cloud_db: str,  # noqa: F811
                                                                                    tmp_path: Path) -> None:
    require_mosquitto()
    broker = Broker(tmp_path / "broker", dynsec_admin=("admin", "admin-pw"))
    broker.start()
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    script = Path(sys.executable).with_name("emsbms")
    command = [str(script)] if script.is_file() else [sys.executable, "-c", "from emsbms.cli import main; main()"]
    serve = subprocess.Popen([*command, "cloud", "serve", "--broker",
                              f"mqtt://admin:admin-pw@127.0.0.1:{broker.port}", "--listen", f"127.0.0.1:{port}"],
                             env={**os.environ, "EMSBMS_CLOUD_DATABASE": cloud_db}, stdout=log, stderr=log)
    db = Database(cloud_db)
    edge: FakeEdge | None = None
    try:
        token = add_org(db, "acme")
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/orgs/acme", timeout=60) as http:
            def up() -> bool:
                try:
                    return http.get("/sites", headers=auth).status_code == 200
                except httpx.TransportError:
                    return serve.poll() is not None
            assert wait(up, 60) and serve.poll() is None, (tmp_path / "serve.log").read_text()
            r = http.post("/sites", headers=auth, json={"site": "plant-1"})
            assert r.status_code == 200, r.text
            login = r.json()
            assert login["username"] == "acme.plant-1" and len(login["password"]) >= 16
            offline = http.post("/sites/plant-1/commands", headers=auth,
                                json={"address": "bms_0/SetChargeCurrent", "value": 5, "timeout_s": 10})
            assert offline.json()["status"] == "offline"
            edge = FakeEdge(broker, BrokerUser(login["username"], login["password"], ()))
            state = {"state": "online", "bdSeq": 0, "timestamp_us": time.time_ns() // 1000}
            edge.client.publish("ems/acme/plant-1/state", json.dumps(state), qos=1, retain=True)
            assert wait(lambda: http.get("/sites", headers=auth).json()["sites"][0]["online"], 30)
            r = http.post("/sites/plant-1/commands", headers=auth,
                          json={"address": "bms_0/SetChargeCurrent", "value": 7.5, "timeout_s": 30})
            assert r.json()["status"] == "acked" and r.json()["detail"] == "echo 7.5", r.text
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        if edge is not None:
            edge.close()
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        log.close()
        db.close()
        broker.stop(signal.SIGKILL)


def test_channels_series_and_events_read_this_orgs_rows(cloud: Cloud) -> None:
    t0 = 1_764_158_400_000_000  # 2025-11-26T12:00:00Z
    points = [(t0, 1.0), (t0 + 30_000_000, 3.0), (t0 + 70_000_000, 10.0)]
    for org, site, scale in (("acme", "plant-1", 1.0), ("other", "plant-9", 100.0)):
        with cloud.db.org(org) as conn:
            ensure_partitions(conn, t0, t0 + 70_000_000)
            for seq, (ts, value) in enumerate(points):
                conn.execute("INSERT INTO telemetry (org_id, site, address, ts, timestamp_us, value, quality,"
                             " historical, session, seq) VALUES (%s, %s, 'bms_0/Soc', to_timestamp(%s / 1e6), %s,"
                             " %s, 'ok', false, 1, %s)", [org, site, ts, ts, value * scale, seq])
            conn.execute("INSERT INTO latest (org_id, site, address, value, quality, timestamp_us)"
                         " VALUES (%s, %s, 'bms_0/Soc', %s, 'ok', %s)", [org, site, 10.0 * scale, t0 + 70_000_000])
            conn.execute("INSERT INTO channel_info (org_id, site, address, unit, kind) VALUES (%s, %s, 'bms_0/Soc',"
                         " '%%', 'measurement')", [org, site])
            for i, kind in enumerate(("online", "data_loss")):
                conn.execute("INSERT INTO events (org_id, site, timestamp_us, kind, detail) VALUES (%s, %s, %s, %s,"
                             " '{}')", [org, site, t0 + i, kind])
    window = {"address": "bms_0/Soc", "from": "2025-11-26T12:00:00Z", "to": "2025-11-26T12:05:00+00:00"}
    raw = cloud.http.get("/acme/sites/plant-1/series", headers=cloud.auth(), params=window).json()
    assert raw == {"address": "bms_0/Soc", "points": [[t, v] for t, v in points]}
    bucketed = cloud.http.get("/acme/sites/plant-1/series", headers=cloud.auth(), params={**window, "bucket": "1m"})
    assert bucketed.json()["points"] == [[t0, 2.0], [t0 + 60_000_000, 10.0]]
    bad = cloud.http.get("/acme/sites/plant-1/series", headers=cloud.auth(), params={**window, "bucket": "1 min"})
    assert bad.status_code == 422 and bad.json()["field"] == "bucket"
    channels = cloud.http.get("/acme/sites/plant-1/channels", headers=cloud.auth()).json()
    assert channels == {"bms_0/Soc": {"value": 10.0, "unit": "%", "timestamp_us": t0 + 70_000_000, "quality": "ok"}}
    events = cloud.http.get("/acme/sites/plant-1/events", headers=cloud.auth()).json()["events"]
    assert [e["kind"] for e in events] == ["data_loss", "online"]
    assert cloud.http.get("/acme/sites/plant-9/events", headers=cloud.auth()).status_code == 404


def test_a_database_outage_is_a_503_naming_the_database(cloud: Cloud, pg: PgServer) -> None:  # noqa: F811
    name = cloud.db.url.rsplit("/", 1)[1]
    with psycopg.connect(pg.admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name])
        try:
            r = cloud.http.get("/acme/sites", headers=cloud.auth())
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(name)))
    assert r.status_code == 503 and r.json()["error"].startswith("the database is unavailable")


def test_post_sites_on_a_broker_without_dynsec_is_a_503_and_stores_nothing(cloud: Cloud) -> None:
    r = cloud.http.post("/acme/sites", headers=cloud.auth(), json={"site": "plant-2"})
    assert r.status_code == 503 and "dynamic security" in r.json()["error"]
    assert cloud.sql("acme", "SELECT site FROM sites ORDER BY site") == [("plant-1",)]
    r = cloud.http.post("/acme/sites", headers=cloud.auth(), json={"site": "plant-1"})
    assert r.status_code == 409 and r.json()["field"] == "site"
    r = cloud.http.post("/acme/sites", headers=cloud.auth(), json={"site": "a/b"})
    assert r.status_code == 422 and r.json()["field"] == "site" and "'a/b'" in r.json()["error"]
