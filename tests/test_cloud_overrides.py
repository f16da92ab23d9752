"""Overrides in the cloud: the edge reports them in telemetry (`core/OverrideList`, JSON text), ingest keeps
them in `latest`, `GET .../overrides` lists the active ones and `DELETE .../overrides/{address}` sends the
cancel as a `cmd` (`core/overrides/<address>/Cancel`) and answers the edge's result. A real PostgreSQL, a
real Mosquitto, ingest and the API over real HTTP; a fake edge client publishes and answers."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.cloud.overrides_api import cancel_address
from tests.cloud_fixtures import cloud_db, pg  # noqa: F401
from tests.conftest import wait
from tests.test_cloud_alarms import Stack, stack  # noqa: F401
from tests.test_cloud_api import EDGE

SESSION = 1_764_163_990_000_000


class OverrideEdge:
    """The site's edge: holds overrides, reports them in telemetry, and answers the cancel `cmd` as EdgeCore does."""

    def __init__(self, site: Stack, overrides: list[dict[str, Any]]) -> None:
        self.overrides = overrides
        self.received: list[dict[str, Any]] = []
        self.seq = 0
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(EDGE.name, EDGE.password)
        self.client.on_connect = lambda c, *a: c.subscribe("ems/acme/plant-1/cmd", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", site.broker.port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def report(self, settle: bool = True) -> None:
        now = time.time_ns() // 1000
        sample = {"address": "core/OverrideList", "value": json.dumps(self.overrides), "timestamp_us": now,
                  "quality": "ok"}
        body = {"historical": False, "session": SESSION, "seq": self.seq, "timestamp_us": now, "refresh": False,
                "samples": [sample]}
        self.seq += 1
        sent = self.client.publish("ems/acme/plant-1/telemetry", json.dumps(body), qos=1)
        if settle:  # never on paho's own thread (a callback): it would wait for itself
            sent.wait_for_publish(30)

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        cmd = json.loads(message.payload)
        self.received.append(cmd)
        target = cmd["address"].removeprefix("core/overrides/").removesuffix("/Cancel")
        held = [o for o in self.overrides if o["address"] == target]
        if held:
            self.overrides = [o for o in self.overrides if o["address"] != target]
            status, detail = "acked", f"override of {target} = {held[0]['value']:g} cancelled"
        else:
            status, detail = "rejected", f"{target} has no active override"
        client.publish("ems/acme/plant-1/cmd/result", json.dumps(
            {"id": cmd["id"], "status": status, "detail": detail, "took_us": 900, "address": cmd["address"],
             "value": cmd["value"]}), qos=1)
        self.report(settle=False)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_overrides_listed_from_telemetry_and_cancelled_through_a_cmd(stack: Stack) -> None:  # noqa: F811
    url = "/acme/sites/plant-1/overrides"
    assert stack.http.get(url, headers=stack.auth()).json() == {"overrides": [], "reported_us": None}
    now = time.time_ns() // 1000
    held = {"address": "bms_0/SetChargeCurrent", "value": 40.0, "expires_us": now + 600_000_000, "source": "cloud"}
    gone = {"address": "bms_1/SetChargeCurrent", "value": 10.0, "expires_us": now - 1, "source": "local"}
    stack.sql("UPDATE sites SET online = true WHERE site = 'plant-1'")
    edge = OverrideEdge(stack, [held, gone])
    try:
        edge.report()
        assert wait(lambda: stack.http.get(url, headers=stack.auth()).json()["reported_us"] is not None, 30)
        got = stack.http.get(url, headers=stack.auth()).json()
        assert got["overrides"] == [held]  # the expired one is left out
        assert stack.http.get("/other/sites/plant-1/overrides", headers=stack.auth("other")).status_code == 404

        r = stack.http.delete(url + "/bms_1/SetChargeCurrent", headers=stack.auth())
        assert (r.status_code, r.json()["field"]) == (404, "address")
        assert "'bms_1/SetChargeCurrent'" in r.json()["error"] and "bms_0/SetChargeCurrent" in r.json()["error"]
        r = stack.http.delete(url + "/nodevice", headers=stack.auth())
        assert (r.status_code, r.json()["field"]) == (422, "address")
        assert edge.received == []

        r = stack.http.delete(url + "/bms_0/SetChargeCurrent", headers=stack.auth())
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "acked"
        assert r.json()["detail"] == "override of bms_0/SetChargeCurrent = 40 cancelled"
        assert [(c["address"], c["value"]) for c in edge.received] == [
            (cancel_address("bms_0/SetChargeCurrent"), 1)]
        assert stack.sql("SELECT address, status FROM commands WHERE id = %s", r.json()["id"]) == [
            ("core/overrides/bms_0/SetChargeCurrent/Cancel", "acked")]
        assert wait(lambda: stack.http.get(url, headers=stack.auth()).json()["overrides"] == [], 30)
    finally:
        edge.close()


def test_cancel_of_an_offline_site_sends_nothing(stack: Stack) -> None:  # noqa: F811
    held = {"address": "bms_0/SetDischargeCurrent", "value": 5.0, "expires_us": time.time_ns() // 1000 + 600_000_000,
            "source": "cloud"}
    edge = OverrideEdge(stack, [held])
    try:
        edge.report()
        url = "/acme/sites/plant-1/overrides"
        assert wait(lambda: stack.http.get(url, headers=stack.auth()).json()["overrides"] == [held], 30)
        r = stack.http.delete(url + "/bms_0/SetDischargeCurrent", headers=stack.auth())
        assert r.status_code == 200 and r.json()["status"] == "offline", r.text
        assert edge.received == []
    finally:
        edge.close()
