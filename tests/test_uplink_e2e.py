"""Commands from the cloud end to end, with real processes: a real Mosquitto, `emsbms simulate` and
`emsbms run` on the demo site (udp_multicast buses) with an [uplink], and a test client with the
cloud's credentials that publishes `cmd` and reads `cmd/result`. A listener on the DBC device's bus
sees what reaches the bus.

Without Mosquitto the test skips, unless EMSBMS_REQUIRE_MOSQUITTO=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import can
import pytest

from emsbms.demo import MULTICAST_GROUP, available_profiles, demo_tables, site_toml
from emsbms.uplink.broker import Broker
from emsbms.uplink.messages import Topics
from tests.conftest import wait
from tests.test_uplink_mqtt import CLOUD, EDGE, OTHER, Watcher, emsbms_command, require_mosquitto, stop_process

pytestmark = pytest.mark.slow

PLANT_1 = Topics("acme", "plant-1")


class BusListener(can.Listener):
    """Every ChargeCurrentRequest that the acme_hv device's bus carries (EMS_Setpoints, decoded)."""

    def __init__(self) -> None:
        profile = next(p for p in available_profiles() if p.name == "acme-hv")
        self.message = profile.db.get_message_by_name("EMS_Setpoints")
        self.values: set[float] = set()
        self.lock = threading.Lock()

    def on_message_received(self, msg: can.Message) -> None:
        if msg.arbitration_id == self.message.frame_id:
            value = self.message.decode(bytes(msg.data))["ChargeCurrentRequest"]
            with self.lock:
                self.values.add(round(float(value), 3))  # type: ignore[arg-type]

    def seen(self) -> set[float]:
        with self.lock:
            return set(self.values)


class Cloud(Watcher):
    """The cloud's side: publishes commands, reads their results."""

    def command(self, cid: str, address: str, value: float, deadline_us: int | None = None) -> None:
        deadline = deadline_us if deadline_us is not None else time.time_ns() // 1000 + 10_000_000
        doc = {"id": cid, "address": address, "value": value, "deadline_us": deadline}
        self.client.publish(PLANT_1.cmd, json.dumps(doc), qos=1).wait_for_publish(10)

    def results(self, cid: str) -> list[bytes]:
        return [p for p in self.payloads(PLANT_1.cmd_result) if json.loads(p)["id"] == cid]

    def result(self, cid: str) -> dict[str, Any]:
        assert wait(lambda: self.results(cid), 30), f"no cmd/result for {cid}"
        doc: dict[str, Any] = json.loads(self.results(cid)[0])
        return doc

    def comm_ok(self, device: str) -> bool:
        return any(s["address"] == f"{device}/CommState" and s["value"] == "OK"
                   for p in self.payloads(PLANT_1.health) for s in json.loads(p)["samples"])


def test_commands_from_the_cloud_through_the_broker(tmp_path: Path) -> None:
    require_mosquitto()
    broker = Broker(tmp_path / "broker", [EDGE, OTHER, CLOUD])
    broker.start()
    base_port = random.Random(os.getpid() ^ time.time_ns()).randrange(43000, 47900)
    tables = demo_tables(available_profiles(), "udp_multicast", base_port=base_port)
    tables["site"] = {"org": "acme", "name": "plant-1"}
    (tmp_path / "uplink.secret").write_text(EDGE.password + "\n", encoding="utf-8")
    site = tmp_path / "site.toml"
    site.write_text(site_toml(tables) + f'\n[uplink]\nurl = "{broker.url}"\nusername = "{EDGE.name}"\n'
                    'password_file = "uplink.secret"\n', encoding="utf-8")
    acme_bus = next(b for b in tables["bus"] if b["name"] == next(
        d["bus"] for d in tables["device"] if d["name"] == "acme_hv"))
    listener = BusListener()
    bus = can.Bus(interface="udp_multicast", channel=MULTICAST_GROUP, port=acme_bus["port"])
    notifier = can.Notifier(bus, [listener])
    cloud = Cloud(broker, CLOUD, ["ems/acme/plant-1/#"])
    sim = subprocess.Popen([*emsbms_command(), "--site", str(site), "simulate", "--duration", "600"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = subprocess.Popen([*emsbms_command(), "--site", str(site), "run", "--db", str(tmp_path / "edge.db")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        devices = ("acme_hv", "cia418_bms", "j1939_hvess")
        assert wait(lambda: all(cloud.comm_ok(d) for d in devices), 90), \
            [d for d in devices if not cloud.comm_ok(d)]

        # DBC: a valid setpoint is acked by the BMS's echo, and is on the bus
        cloud.command("dbc-1", "acme_hv/SetChargeCurrent", 42.5)
        ok = cloud.result("dbc-1")
        assert (ok["status"], ok["address"], ok["value"]) == ("acked", "acme_hv/SetChargeCurrent", 42.5), ok
        assert "ChargeCurrentRequestEcho = 42.5" in ok["detail"]
        assert ok["took_us"] > 0
        assert wait(lambda: 42.5 in listener.seen(), 10)

        # beyond the profile's 200 A maximum: rejected, naming the limit, nothing sent
        cloud.command("dbc-2", "acme_hv/SetChargeCurrent", 250)
        bad = cloud.result("dbc-2")
        assert (bad["status"], bad["detail"]) == (
            "rejected", "acme_hv/SetChargeCurrent = 250.0 A is above the maximum 200.0 A"), bad

        # a repeated id: the first result again, byte for byte, and not executed (33 never sent)
        cloud.command("dbc-1", "acme_hv/SetChargeCurrent", 33)
        assert wait(lambda: len(cloud.results("dbc-1")) == 2, 30)
        first, again = cloud.results("dbc-1")
        assert again == first

        # an expired deadline: expired, not executed
        cloud.command("dbc-3", "acme_hv/SetChargeCurrent", 77, deadline_us=time.time_ns() // 1000 - 1_000_000)
        late = cloud.result("dbc-3")
        assert (late["status"], late["took_us"]) == ("expired", 0), late
        assert late["detail"].startswith("cmd dbc-3: arrived ") and late["detail"].endswith(
            " s after its deadline; not executed"), late

        # a later valid command reaches the bus: what the edge refused would have been there by now
        cloud.command("dbc-4", "acme_hv/SetChargeCurrent", 12.5)
        assert cloud.result("dbc-4")["status"] == "acked"
        assert wait(lambda: 12.5 in listener.seen(), 10)
        seen = listener.seen()
        assert {250.0, 33.0, 77.0}.isdisjoint(seen), seen

        # CANopen: SDO download, acknowledged by the device; beyond the maximum: rejected
        cloud.command("co-1", "cia418_bms/SetChargeCurrent", 60)
        sdo = cloud.result("co-1")
        assert (sdo["status"], sdo["detail"]) == ("acked", "SDO download 0x4806 = 600 confirmed by node 1"), sdo
        cloud.command("co-2", "cia418_bms/SetChargeCurrent", 201)
        refused = cloud.result("co-2")
        assert (refused["status"], refused["detail"]) == (
            "rejected", "cia418_bms/SetChargeCurrent = 201.0 A is above the maximum 200.0 A"), refused

        # J1939: DM11 acknowledged by ACK
        cloud.command("j-1", "j1939_hvess/ResetFaults", 1)
        dm11 = cloud.result("j-1")
        assert (dm11["status"], dm11["detail"]) == ("acked", "ACK of PGN 0xFED3 from address 0xF3"), dm11
        assert len(cloud.results("dbc-1")) == 2  # the repeat was answered once, no more

        # the command results are in the event log, on `events`
        def command_events() -> list[str]:
            return [e["text"] for p in cloud.payloads(PLANT_1.events) for e in json.loads(p)["events"]
                    if e["source"] == "acme_hv" and e["kind"] == "command"]
        assert wait(lambda: any(t.startswith("SetChargeCurrent = 250 A rejected") for t in command_events()), 30), \
            command_events()
        assert any(t.startswith("SetChargeCurrent = 42.5 A acked") for t in command_events()), command_events()
        err = stop_process(run)
        assert run.returncode == 0, err
    finally:
        if run.poll() is None:
            stop_process(run)
        stop_process(sim)
        cloud.close()
        notifier.stop()
        bus.shutdown()
        broker.stop(signal.SIGKILL)
