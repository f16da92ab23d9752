"""Alarms in the cloud: the pure notification rules (fake clock), the `alarms` payload's checks, then a real
PostgreSQL, a real Mosquitto, ingest, the API over real HTTP and a real webhook receiver (http.server):
history and active alarms, dedupe, signed notifications with retries and grouping, acknowledgement
through `cmd`, and tenancy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.cloud.database import Database, add_org
from emsbms.cloud.ingest import Ingest, subscriptions
from emsbms.cloud.ingest_parse import Batch, Kind, PayloadError, parse_message
from emsbms.cloud.ingest_records import AlarmRow
from emsbms.cloud.notify import after_failure, backoff_s, group_arrivals, notify_event, signature
from emsbms.cloud.service import CloudService, HttpServer
from emsbms.uplink.broker import Broker, free_port
from tests.cloud_fixtures import cloud_db, pg  # noqa: F401
from tests.conftest import wait
from tests.test_cloud_api import CLOUD, EDGE, FakeEdge
from tests.test_uplink_mqtt import require_mosquitto

NOW = 1_764_164_000_000_000
SESSION = 1_764_163_990_000_000
TOPIC = "ems/acme/plant-1/alarms"
SECRET = "0123456789abcdef-secret"


def entry(state: str, previous: str, rule: str = "hot", device: str = "bms_0", value: float | None = 3.71,
          ts: int = NOW, severity: str = "FAULT", acked: bool = False) -> dict[str, Any]:
    return {"id": f"{rule}/{device}", "rule": rule, "device": device, "state": state, "previous": previous,
            "severity": severity, "acked": acked, "value": value, "timestamp_us": ts, "text": f"{rule} {state}"}


def payload(seq: int, *alarms: dict[str, Any]) -> bytes:
    return json.dumps({"historical": False, "session": SESSION, "seq": seq, "timestamp_us": NOW + seq,
                       "alarms": list(alarms)}).encode()


# ---- pure ------------------------------------------------------------------------------------------

def test_only_raises_and_clears_notify() -> None:
    assert notify_event("pending", "active") == "raise"
    assert notify_event("ok", "active") == "raise"
    assert notify_event("active", "ok") == notify_event("clearing", "ok") == notify_event("latched", "ok") == "clear"
    assert notify_event("active", "active") is None  # an acknowledgement
    assert notify_event("ok", "pending") is None and notify_event("pending", "ok") is None
    assert notify_event("no_data", "ok") is None and notify_event("active", "latched") is None


def test_backoff_doubles_up_to_its_cap_then_fails() -> None:
    assert [backoff_s(n, 1.0, 10.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert after_failure(1, NOW, 3) == ("pending", NOW + 1_000_000)
    assert after_failure(2, NOW, 3) == ("pending", NOW + 2_000_000)
    assert after_failure(3, NOW, 3) == ("failed", NOW)


def test_a_storm_within_the_window_is_one_notification_with_a_fake_clock() -> None:
    storm = [NOW + i * 50_000 for i in range(30)]  # 30 raises over 1.45 s
    assert group_arrivals(storm, 2_000_000) == [storm]
    later = NOW + 2_000_000  # exactly at the window's end: a new notification
    assert group_arrivals([NOW, NOW + 1_999_999, later], 2_000_000) == [[NOW, NOW + 1_999_999], [later]]


def test_signature_is_hmac_sha256_hex_of_the_body() -> None:
    assert signature("key", b"The quick brown fox jumps over the lazy dog") == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")


def test_parse_alarms_payload() -> None:
    record = parse_message(TOPIC, payload(4, entry("active", "pending", value=None)), NOW)
    assert record == Batch("acme", "plant-1", Kind.ALARMS, SESSION, 4, NOW + 4, False, alarms=(
        AlarmRow("hot", "bms_0", "active", "pending", "FAULT", False, None, NOW, "hot active"),))
    assert f"$share/g/{TOPIC.replace('acme/plant-1', '+/+')}" in subscriptions("g")


@pytest.mark.parametrize(("change", "message"), [
    ({"state": "on"}, "key 'alarms[0].state': expected one of active, clearing, inhibited, latched, no_data, ok,"
                      " pending, found string \"on\""),
    ({"severity": "fault"}, "key 'alarms[0].severity': expected one of FAULT, INFO, WARNING, found string \"fault\""),
    ({"value": "3.7"}, "key 'alarms[0].value': expected a finite number or null, found string \"3.7\""),
    ({"value": 10 ** 400}, "key 'alarms[0].value': expected a finite number or null"),
    ({"id": "hot/bms_1"}, "key 'alarms[0].id': expected 'hot/bms_0' (rule/device), found string \"hot/bms_1\""),
    ({"rule": "a b", "id": "a b/bms_0"}, "key 'alarms[0].rule': expected a rule name"),
    ({"timestamp_us": 5}, "key 'alarms[0].timestamp_us': expected an integer 946684800000000.."),
    ({"acked": 1}, "key 'alarms[0].acked': expected true or false, found integer 1"),
])
def test_parse_alarm_refusals_name_the_key(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError) as err:
        parse_message(TOPIC, payload(0, {**entry("active", "pending"), **change}), NOW)
    assert message in str(err.value)


def test_an_alarm_without_value_is_refused() -> None:
    bad = entry("active", "pending")
    del bad["value"]
    with pytest.raises(PayloadError, match=r"key 'alarms\[0\].value': expected a finite number or null, found nothing"):
        parse_message(TOPIC, payload(0, bad), NOW)


# ---- with PostgreSQL, Mosquitto, ingest, the API and a webhook receiver ------------------------------

@dataclass
class Receiver:
    """A webhook receiver (http.server on a thread): what it got, and how many first posts it refuses."""

    fail_first: int = 0
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    refused: int = 0

    def start(self) -> str:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if owner.refused < owner.fail_first:
                    owner.refused += 1
                    self.send_response(503)
                else:
                    owner.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def transitions(self) -> list[dict[str, Any]]:
        return [a for _, body in self.posts for a in json.loads(body)["alarms"]]


@dataclass
class Stack:
    http: httpx.Client
    db: Database
    broker: Broker
    ingest: Ingest
    tokens: dict[str, str]
    edge: mqtt.Client

    def auth(self, org: str = "acme") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[org]}"}

    def sql(self, query: str, *args: Any, org: str = "acme") -> list[tuple[Any, ...]]:
        with self.db.org(org) as conn:
            cur = conn.execute(query, list(args))
            return list(cur.fetchall()) if cur.description else []

    def send(self, data: bytes) -> None:
        self.edge.publish(TOPIC, data, qos=1).wait_for_publish(30)

    def hook(self, receiver: Receiver, org: str = "acme") -> int:
        r = self.http.post(f"/{org}/webhooks", headers=self.auth(org), json={"url": receiver.start(), "secret": SECRET})
        assert r.status_code == 200, r.text
        return int(r.json()["id"])


@pytest.fixture
def stack(cloud_db: str, tmp_path: Path) -> Iterator[Stack]:  # noqa: F811
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
    ingest = Ingest(db, broker.url, CLOUD.name, CLOUD.password, client_id=f"ingest-{uuid.uuid4().hex[:6]}")
    ingest.start()
    server = HttpServer(service, "127.0.0.1", free_port())
    server.start()
    edge = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv311)
    edge.username_pw_set(EDGE.name, EDGE.password)
    edge.connect("127.0.0.1", broker.port)
    edge.loop_start()
    try:
        assert ingest.subscribed.wait(20)
        with httpx.Client(base_url=server.url + "/api/v1/orgs", timeout=60) as http:
            yield Stack(http, db, broker, ingest, tokens, edge)
    finally:
        edge.disconnect()
        edge.loop_stop()
        server.stop()
        ingest.stop()
        service.stop()
        db.close()
        broker.stop(signal.SIGKILL)


def test_raise_and_clear_reach_the_api_once_and_a_signed_webhook_once_each(stack: Stack) -> None:
    receiver = Receiver()
    stack.hook(receiver)
    stack.send(payload(0, entry("pending", "ok", ts=NOW), entry("active", "pending", ts=NOW + 10)))
    url = "/acme/sites/plant-1/alarms"
    assert wait(lambda: stack.http.get(url, headers=stack.auth()).json()["active"], 30)
    got = stack.http.get(url, headers=stack.auth()).json()
    assert got["active"] == [{"id": "hot/bms_0", "rule": "hot", "device": "bms_0", "state": "active",
                              "severity": "FAULT", "acked": False, "value": 3.71, "text": "hot active",
                              "raised_us": NOW + 10, "changed_us": NOW + 10}]
    stack.send(payload(1, entry("ok", "active", value=3.5, ts=NOW + 20)))
    stack.send(payload(1, entry("ok", "active", value=3.5, ts=NOW + 20)))  # a redelivery of seq 1
    assert wait(lambda: stack.ingest.duplicates == 1, 30)
    got = stack.http.get(url, headers=stack.auth()).json()
    assert got["active"] == []
    assert [(h["state"], h["previous"], h["value"], h["timestamp_us"]) for h in got["history"]] == [
        ("ok", "active", 3.5, NOW + 20), ("active", "pending", 3.71, NOW + 10), ("pending", "ok", 3.71, NOW)]
    assert stack.http.get(url + "?limit=1", headers=stack.auth()).json()["history"][0]["state"] == "ok"
    assert stack.sql("SELECT count(*) FROM alarm_history") == [(3,)]
    assert stack.sql("SELECT state, raised_us, changed_us FROM alarms") == [("ok", NOW + 10, NOW + 20)]

    assert wait(lambda: len(receiver.transitions()) >= 2, 30)
    assert wait(lambda: stack.sql("SELECT count(*) FROM notifications WHERE state = 'pending'") == [(0,)], 30)
    assert [(t["event"], t["state"], t["previous"], t["value"]) for t in receiver.transitions()] == [
        ("raise", "active", "pending", 3.71), ("clear", "ok", "active", 3.5)]
    for headers, body in receiver.posts:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-emsbms-signature"] == expected
        assert json.loads(body)["org"] == "acme" and json.loads(body)["site"] == "plant-1"


def test_a_receiver_failing_twice_gets_it_on_the_third_attempt(stack: Stack) -> None:
    receiver = Receiver(fail_first=2)
    stack.hook(receiver)
    stack.send(payload(0, entry("active", "pending")))
    assert wait(lambda: receiver.posts, 60)
    assert receiver.refused == 2 and [t["event"] for t in receiver.transitions()] == ["raise"]
    assert wait(lambda: stack.sql("SELECT state FROM notifications") == [("delivered",)], 30)
    assert stack.sql("SELECT state, attempts, last_error IS NULL FROM notifications") == [("delivered", 3, True)]


def test_a_storm_of_30_raises_is_a_few_posts_holding_all_30(stack: Stack) -> None:
    receiver = Receiver()
    stack.hook(receiver)
    for i in range(30):
        stack.send(payload(i, entry("active", "pending", rule=f"r{i}", ts=NOW + i)))
    assert wait(lambda: len(receiver.transitions()) == 30, 60), len(receiver.transitions())
    assert 1 <= len(receiver.posts) <= 3
    assert sorted(t["rule"] for t in receiver.transitions()) == sorted(f"r{i}" for i in range(30))
    assert stack.sql("SELECT count(*) FROM alarms WHERE state = 'active'") == [(30,)]


def test_ack_through_the_api_sends_the_cmd_and_answers_the_edges_result(stack: Stack) -> None:
    stack.send(payload(0, entry("active", "pending")))
    assert wait(lambda: stack.sql("SELECT count(*) FROM alarms") == [(1,)], 30)
    ack = "/acme/sites/plant-1/alarms/hot%2Fbms_0/ack"
    r = stack.http.post(ack, headers=stack.auth())
    assert r.status_code == 200 and r.json()["status"] == "offline" and "'plant-1' is offline" in r.json()["detail"]
    stack.sql("UPDATE sites SET online = true WHERE site = 'plant-1'")
    edge = FakeEdge(stack.broker)
    try:
        r = stack.http.post(ack, headers=stack.auth())
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "acked" and r.json()["detail"] == "echo 1"
        assert isinstance(r.json()["round_trip_ms"], float)
        assert [(c["id"], c["address"], c["value"]) for c in edge.received] == [
            (r.json()["id"], "alarms/hot/bms_0/Ack", 1)]
    finally:
        edge.close()
    assert stack.sql("SELECT address, status FROM commands WHERE id = %s", r.json()["id"]) == [
        ("alarms/hot/bms_0/Ack", "acked")]
    r = stack.http.post("/acme/sites/plant-1/alarms/cold%2Fbms_0/ack", headers=stack.auth())
    assert (r.status_code, r.json()["field"]) == (404, "id") and "'cold/bms_0'" in r.json()["error"]


def test_webhooks_validated_listed_without_secrets_and_kept_per_org(stack: Stack) -> None:
    r = stack.http.post("/acme/webhooks", headers=stack.auth(), json={"url": "ftp://x/y", "secret": SECRET})
    assert r.status_code == 422 and r.json()["field"] == "url" and "'ftp://x/y'" in r.json()["error"]
    r = stack.http.post("/acme/webhooks", headers=stack.auth(), json={"url": "https://x/y", "secret": "short"})
    assert r.status_code == 422 and r.json()["field"] == "secret" and "16 characters" in r.json()["error"]
    hook = stack.hook(Receiver())
    listed = stack.http.get("/acme/webhooks", headers=stack.auth()).json()["webhooks"]
    assert [(w["id"], w["url"].endswith("/hook")) for w in listed] == [(hook, True)]
    assert SECRET not in json.dumps(listed) and "secret" not in listed[0]
    assert stack.http.get("/other/webhooks", headers=stack.auth("other")).json() == {"webhooks": []}
    r = stack.http.delete(f"/other/webhooks/{hook}", headers=stack.auth("other"))
    assert (r.status_code, r.json()["field"]) == (404, "webhook_id")
    stack.send(payload(0, entry("active", "pending")))
    assert wait(lambda: stack.sql("SELECT count(*) FROM alarms") == [(1,)], 30)
    r = stack.http.get("/other/sites/plant-1/alarms", headers=stack.auth("other"))
    assert (r.status_code, r.json()["field"]) == (404, "site")
    assert stack.sql("SELECT count(*) FROM alarms", org="other") == [(0,)]
    assert stack.http.delete(f"/acme/webhooks/{hook}", headers=stack.auth()).json() == {"deleted": hook}
    assert stack.http.get("/acme/webhooks", headers=stack.auth()).json() == {"webhooks": []}
