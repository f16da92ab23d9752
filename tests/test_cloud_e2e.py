"""The cloud end to end, with real processes: Mosquitto with the dynamic security plugin, PostgreSQL,
`emsbms cloud serve`, `emsbms cloud org add`, a site made with `POST /sites` whose credentials go into
the edge's [uplink], `emsbms simulate` and `emsbms run` on demo devices (udp_multicast buses), and HTTP.

One module-scoped setup; the tests run in file order (the config tests build on each other).
Without Mosquitto or PostgreSQL the module skips, unless EMSBMS_REQUIRE_MOSQUITTO=1 or
EMSBMS_REQUIRE_POSTGRES=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.cloud.pgserver import PgServer
from emsbms.uplink.broker import BrokerUser
from tests.cloud_fixtures import pg, require_postgres  # noqa: F401
from tests.cloud_stack import ADMIN, Stack, start_stack
from tests.conftest import wait
from tests.test_uplink_mqtt import Watcher, require_mosquitto

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
E2E = Stack


@pytest.fixture(scope="module")
def e2e(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:  # noqa: F811
    require_mosquitto()
    require_postgres()
    with start_stack(pg, tmp_path_factory.mktemp("cloud-e2e")) as stack:
        assert "dynamic security (POST /sites makes edge credentials)" in stack.log.read_text()
        assert stack.login.name == "acme.plant-1"
        yield stack


def channel_ok(e2e: E2E, address: str) -> bool:
    reading = e2e.get("/sites/plant-1/channels").get(address)
    return reading is not None and reading["quality"] == "ok" and reading["value"] is not None


def command(e2e: E2E, address: str, value: float, org: str = "acme", site: str = "plant-1") -> httpx.Response:
    return e2e.http.post(f"/{org}/sites/{site}/commands", headers=e2e.auth(org),
                         json={"address": address, "value": value, "timeout_s": 10})


def test_a_command_is_acked_by_the_simulated_bms_and_one_beyond_the_limit_rejected(e2e: E2E) -> None:
    assert wait(lambda: e2e.get("/sites")["sites"][0]["online"], 60)
    assert wait(lambda: e2e.get("/sites/plant-1/channels").get("acme_hv/CommState", {}).get("value") == "OK", 60)
    r = command(e2e, "acme_hv/SetChargeCurrent", 42.5)
    assert r.status_code == 200, r.text
    ok = r.json()
    assert (ok["status"], ok["detail"]) == ("acked", "echo ACME_Status.ChargeCurrentRequestEcho = 42.5"), ok
    assert ok["round_trip_ms"] > 0
    print(f"command round_trip_ms {ok['round_trip_ms']}")
    assert wait(lambda: 42.5 in e2e.listener.seen(), 10), e2e.listener.seen()

    bad = command(e2e, "acme_hv/SetChargeCurrent", 250).json()
    assert (bad["status"], bad["detail"]) == (
        "rejected", "acme_hv/SetChargeCurrent = 250.0 A is above the maximum 200.0 A"), bad
    assert 250.0 not in e2e.listener.seen()


def config_body(e2e: E2E, pylon_version: str | None = None) -> dict[str, Any]:
    pylon: dict[str, Any] = {"name": "pylon_lv", "bus": "can4", "profile": "pylon-lv"}
    if pylon_version is not None:
        pylon["version"] = pylon_version
    return {"buses": [e2e.buses["can0"], e2e.buses["can4"]],
            "devices": [{"name": "acme_hv", "bus": "can0", "profile": "acme-hv"}, pylon]}


def applied(e2e: E2E, version: int) -> bool:
    state = e2e.get("/sites/plant-1/config")
    return bool(state["applied_version"] == version and state["status"] == "applied")


def test_a_config_that_adds_a_device_is_applied_and_its_channels_appear(e2e: E2E) -> None:
    assert "pylon_lv/Soc" not in e2e.get("/sites/plant-1/channels")
    r = e2e.http.put("/acme/sites/plant-1/config", headers=e2e.auth(), json=config_body(e2e))
    assert r.status_code == 200, r.text
    version = r.json()["version"]
    assert version == 1
    assert wait(lambda: applied(e2e, version), 30), e2e.get("/sites/plant-1/config")
    state = e2e.get("/sites/plant-1/config")
    assert (state["desired_version"], state["reason"].split(":")[0]) == (1, "version 1 applied"), state
    assert state["sync_ms"] > 0
    print(f"config sync_ms {state['sync_ms']}")
    assert wait(lambda: all(channel_ok(e2e, f"pylon_lv/{c}") for c in ("Soc", "Voltage", "CommState")), 30), \
        {k: v for k, v in e2e.get("/sites/plant-1/channels").items() if k.startswith("pylon_lv/")}
    reading = e2e.get("/sites/plant-1/channels")["pylon_lv/Soc"]
    assert (reading["unit"], reading["quality"]) == ("%", "ok")
    assert e2e.get("/sites/plant-1/channels")["pylon_lv/CommState"]["value"] == "OK"


def test_a_profile_version_switched_from_the_cloud(e2e: E2E) -> None:
    doc = json.loads((ROOT / "profiles" / "pylon-lv.json").read_text(encoding="utf-8"))
    doc["version"] = "1.2.0"
    doc["channels"]["SocHighRes"] = {"message": "PYLON_SocSoh", "signal": "SoCHighRes", "unit": "%"}
    files = {"pylon_lv.dbc": (ROOT / "dbc" / "pylon_lv.dbc").read_text(encoding="utf-8")}
    r = e2e.http.post("/acme/profiles", headers=e2e.auth(), json={"profile": doc, "files": files})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["version"]) == ("pylon-lv", "1.2.0")
    r = e2e.http.put("/acme/sites/plant-1/config", headers=e2e.auth(), json=config_body(e2e, "1.2.0"))
    assert r.status_code == 200 and r.json()["version"] == 2, r.text
    assert wait(lambda: applied(e2e, 2), 30), e2e.get("/sites/plant-1/config")

    def devices() -> list[tuple[Any, ...]]:
        with psycopg.connect(e2e.admin_db) as conn:
            return conn.execute("SELECT name, profile, version FROM devices WHERE org_id = 'acme'"
                                " ORDER BY name").fetchall()
    assert wait(lambda: devices() == [("acme_hv", "acme-hv", "1.0.0"), ("pylon_lv", "pylon-lv", "1.2.0")], 30), \
        devices()
    assert wait(lambda: channel_ok(e2e, "pylon_lv/SocHighRes"), 30)
    assert e2e.get("/sites/plant-1/channels")["pylon_lv/SocHighRes"]["unit"] == "%"


def iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + f".{us % 1_000_000:06d}Z"


def test_telemetry_in_series_equals_what_the_edge_sent(e2e: E2E) -> None:
    address = "acme_hv/Voltage"
    assert wait(lambda: len(e2e.sent(address)) >= 10, 30), e2e.sent(address)
    sent = e2e.sent(address)
    first, to_us = sent[0][0], sent[-1][0]  # the window: the edge's own sample times, from its first to its latest
    window = {"address": address, "from": iso(first), "to": iso(to_us)}

    def in_window() -> list[tuple[int, float]]:
        return [(t, v) for t, v in e2e.sent(address) if first <= t < to_us]

    def series() -> list[tuple[int, float]]:
        return [(t, v) for t, v in e2e.get("/sites/plant-1/series", **window)["points"]]
    assert wait(lambda: in_window() and series() == in_window(), 30), (series(), in_window())
    assert len(series()) >= 9


def test_tenants_are_kept_apart_in_the_api_the_broker_and_sql(e2e: E2E) -> None:
    # API: org other's token on acme's site (both ways of asking) is a 404, and nothing is commanded
    assert e2e.http.get("/acme/sites/plant-1/channels", headers=e2e.auth("other")).status_code == 404
    r = e2e.http.get("/other/sites/plant-1/channels", headers=e2e.auth("other"))
    assert (r.status_code, r.json()["field"]) == (404, "site")
    r = command(e2e, "acme_hv/SetChargeCurrent", 11.5, org="other")
    assert (r.status_code, r.json()["field"]) == (404, "site")
    assert command(e2e, "acme_hv/SetChargeCurrent", 11.5, org="acme").status_code == 200  # acme can
    assert [s["site"] for s in e2e.get("/sites", org="other")["sites"]] == ["plant-9"]

    # broker: acme.plant-1's credentials cannot subscribe to other/plant-9's topics, nor publish there
    peek = Watcher(e2e.broker, BrokerUser(e2e.login.name, e2e.login.password, ()),
                   ["ems/other/plant-9/telemetry", "ems/other/plant-9/cmd", "ems/acme/plant-1/cmd"])
    try:
        assert peek.granted == [0x80, 0x80, 1]
    finally:
        peek.close()
    spy = Watcher(e2e.broker, BrokerUser(ADMIN[0], ADMIN[1], ()), ["ems/other/#"])
    intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"intruder-{uuid.uuid4().hex[:6]}")
    intruder.username_pw_set(e2e.login.name, e2e.login.password)
    intruder.connect("127.0.0.1", e2e.broker.port)
    intruder.loop_start()
    try:
        intruder.publish("ems/other/plant-9/telemetry", b"{}", qos=1)
        marker = f"m-{uuid.uuid4().hex[:6]}".encode()
        e2e.watcher.client.publish("ems/other/plant-9/rebirth", marker, qos=1)  # the service may: it arrives
        assert wait(lambda: marker in spy.payloads("ems/other/plant-9/rebirth"), 10)
        assert spy.payloads("ems/other/plant-9/telemetry") == []
    finally:
        intruder.loop_stop()
        intruder.disconnect()
        spy.close()

    # SQL under the service role with app.org_id = other: none of acme's rows; with acme: acme's
    tables = ("sites", "telemetry", "latest", "channel_info", "devices", "events", "commands", "site_configs",
              "profiles")
    counts: dict[str, dict[str, int]] = {}
    with psycopg.connect(e2e.service_db) as conn:
        for org in ("other", "acme"):
            with conn.transaction():
                conn.execute("SELECT set_config('app.org_id', %s, true)", [org])
                counts[org] = {t: conn.execute(f"SELECT count(*) FROM {t} WHERE org_id = 'acme'").fetchone()[0]  # type: ignore[index]
                               for t in tables}
    assert counts["other"] == dict.fromkeys(tables, 0)
    assert all(n > 0 for n in counts["acme"].values()), counts["acme"]
