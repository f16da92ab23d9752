"""An alarm end to end, with real processes: Mosquitto (dynamic security), PostgreSQL, `emsbms cloud serve`,
`emsbms simulate` (acme_hv on a udp_multicast bus; restarted with `--fault acme_hv:overtemp` to heat the pack to
56 °C, then without it to cool back to ~25 °C), `emsbms run` with a `[[rule]]` on the pack temperature, and a
webhook receiver run by the test: the alarm raises at the edge after its on-delay, reaches the cloud's API and
the signed webhook, is acknowledged through the API (the ack reaches the edge's runner), and clears below the
clear threshold (hysteresis) to ok, not latched, because it was acknowledged.

Skips without Mosquitto or PostgreSQL unless EMSBMS_REQUIRE_MOSQUITTO=1 / EMSBMS_REQUIRE_POSTGRES=1.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from emsbms.cloud.pgserver import PgServer
from emsbms.demo import available_profiles, demo_tables, site_toml
from emsbms.uplink.broker import Broker, free_port
from tests.cloud_fixtures import pg, require_postgres  # noqa: F401
from tests.conftest import wait
from tests.test_cloud_alarms import Receiver
from tests.test_uplink_mqtt import emsbms_command, require_mosquitto, stop_process

pytestmark = pytest.mark.slow

ADMIN = ("admin", "admin-pw")
SECRET = "alarms-e2e-webhook-secret"
RULE = """
[[rule]]
name = "hot"
expression = "*/Temperature > 50"
clear_expression = "*/Temperature < 40"
for = "1s"
off_delay = "1s"
severity = "FAULT"
latch = true
"""


@dataclass
class Rig:
    http: httpx.Client
    token: str
    tmp: Path
    sim: subprocess.Popen[str] | None = None

    def get(self, path: str) -> Any:
        r = self.http.get(f"/acme{path}", headers={"Authorization": f"Bearer {self.token}"})
        assert r.status_code == 200, r.text
        return r.json()

    def simulate(self, *faults: str) -> None:
        """Start a simulator (with these faults), then stop the one before: no gap in the frames."""
        old = self.sim
        args = [a for f in faults for a in ("--fault", f)]
        self.sim = subprocess.Popen([*emsbms_command(), "--site", str(self.tmp / "sim.toml"), "simulate",
                                     "--duration", "600", *args], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
        if old is not None:
            stop_process(old)

    def alarm(self) -> dict[str, Any] | None:
        return next((a for a in self.get("/sites/plant-1/alarms")["active"] if a["id"] == "hot/acme_hv"), None)


def cli(*args: str) -> str:
    done = subprocess.run([*emsbms_command(), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def rig(pg: PgServer, tmp_path: Path) -> Iterator[Rig]:  # noqa: F811
    require_mosquitto()
    require_postgres()
    name = f"alarms_{uuid.uuid4().hex[:12]}"
    service_db = pg.create_database(name)
    broker = Broker(tmp_path / "broker", dynsec_admin=ADMIN)
    broker.start()
    port = free_port()
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen([*emsbms_command(), "cloud", "serve", "--broker",
                              f"mqtt://{ADMIN[0]}:{ADMIN[1]}@127.0.0.1:{broker.port}", "--listen", f"127.0.0.1:{port}"],
                             env={**os.environ, "EMSBMS_CLOUD_DATABASE": service_db}, stdout=log, stderr=log)
    edge: subprocess.Popen[str] | None = None
    r: Rig | None = None
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}/api/v1/orgs", timeout=60)

        def up() -> bool:
            try:
                return http.get("/nobody/sites").status_code == 401
            except httpx.TransportError:
                return serve.poll() is not None
        assert wait(up, 60) and serve.poll() is None, (tmp_path / "serve.log").read_text()
        token = json.loads(cli("cloud", "org", "add", "acme", "--database", service_db, "--json"))["token"]
        site = http.post("/acme/sites", headers={"Authorization": f"Bearer {token}"}, json={"site": "plant-1"})
        assert site.status_code == 200, site.text
        base_port = random.Random(os.getpid() ^ time.time_ns()).randrange(43000, 47900)
        tables = demo_tables(available_profiles(), "udp_multicast", base_port=base_port)
        sim = {"site": {"org": "acme", "name": "plant-1"}, "bus": [b for b in tables["bus"] if b["name"] == "can0"],
               "device": [d for d in tables["device"] if d["name"] == "acme_hv"]}
        assert sim["device"][0]["bus"] == "can0"
        (tmp_path / "sim.toml").write_text(site_toml(sim), encoding="utf-8")
        (tmp_path / "uplink.secret").write_text(site.json()["password"] + "\n", encoding="utf-8")
        (tmp_path / "site.toml").write_text(site_toml(sim) + f'\n[uplink]\nurl = "{broker.url}"\nusername = '
                                            f'"{site.json()["username"]}"\npassword_file = "uplink.secret"\n' + RULE,
                                            encoding="utf-8")
        r = Rig(http, token, tmp_path)
        r.simulate()
        edge = subprocess.Popen([*emsbms_command(), "--site", str(tmp_path / "site.toml"), "run", "--db",
                                 str(tmp_path / "edge.db")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        yield r
        http.close()
    finally:
        if edge is not None:
            stop_process(edge)
        if r is not None and r.sim is not None:
            stop_process(r.sim)
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()
        broker.stop(signal.SIGKILL)
        pg.drop_database(name)


def temperature(rig: Rig) -> float | None:
    reading = rig.get("/sites/plant-1/channels").get("acme_hv/Temperature")
    ok = reading is not None and reading["quality"] == "ok" and reading["value"] is not None
    return float(reading["value"]) if ok else None  # type: ignore[index]


def test_an_over_temperature_raises_reaches_the_api_and_the_webhook_is_acked_and_clears(rig: Rig) -> None:
    receiver = Receiver()
    hook = rig.http.post("/acme/webhooks", headers={"Authorization": f"Bearer {rig.token}"},
                         json={"url": receiver.start(), "secret": SECRET})
    assert hook.status_code == 200, hook.text
    assert wait(lambda: (t := temperature(rig)) is not None and t < 40, 90)  # the edge runs and reports, cool
    assert rig.alarm() is None

    rig.simulate("acme_hv:overtemp")  # the pack at 56 °C
    assert wait(lambda: (a := rig.alarm()) is not None and a["state"] == "active", 60)
    alarm = rig.alarm()
    assert alarm is not None
    assert (alarm["severity"], alarm["acked"]) == ("FAULT", False)
    assert alarm["value"] > 50
    assert alarm["text"].startswith("hot: acme_hv/Temperature ") and alarm["text"].endswith(" > 50 for 1.0 s: active")
    assert wait(lambda: any(a["state"] == "active" for a in receiver.transitions()), 60)
    headers, body = receiver.posts[0]
    assert headers["x-emsbms-signature"] == "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    raised = [a for a in receiver.transitions() if a["state"] == "active"]
    assert [(a["id"], a["previous"], a["severity"]) for a in raised] == [("hot/acme_hv", "pending", "FAULT")]

    ack = rig.http.post(f"/acme/sites/plant-1/alarms/{quote('hot/acme_hv', safe='')}/ack",
                        headers={"Authorization": f"Bearer {rig.token}"})
    assert ack.status_code == 200, ack.text
    assert (ack.json()["status"], ack.json()["detail"]) == ("acked", "alarm 'hot/acme_hv' acknowledged: active")
    assert wait(lambda: (a := rig.alarm()) is not None and a["acked"] is True, 30)

    rig.simulate()  # cool again: below 40 °C the clear holds for its off-delay (the restart may show no_data first)

    def cleared() -> dict[str, Any] | None:
        last = next((h for h in rig.get("/sites/plant-1/alarms")["history"] if h["id"] == "hot/acme_hv"), None)
        return last if last is not None and last["state"] == "ok" else None
    assert wait(lambda: cleared() is not None, 90)
    last = cleared()
    assert last is not None and (last["previous"], last["acked"]) == ("clearing", True)
    assert last["value"] < 40  # cleared under the clear threshold, not merely under the raise one
    assert rig.alarm() is None
    assert wait(lambda: any(a["state"] == "ok" for a in receiver.transitions()), 60)
    notified = [(a["previous"], a["state"]) for a in receiver.transitions() if a["state"] in ("active", "ok")]
    assert notified == [("pending", "active"), ("clearing", "ok")]  # one raise, one clear: never one per sample
