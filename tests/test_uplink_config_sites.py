"""Configuration from the cloud that changes the site: devices added and removed, buses changed.

A real Edge from a real edge database on two virtual buses; separate bus nodes send the frames.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import pytest

from emsbms.cli.run import start_edge
from emsbms.db import EdgeDb, load_stored_site
from emsbms.edge import Edge
from emsbms.edge.lock import EdgeLock
from emsbms.site import load_site
from emsbms.types import Quality, Reading
from emsbms.uplink.config import ConfigHandler
from tests.conftest import virtual_site, wait
from tests.test_db import profile_copy
from tests.test_uplink_config import now, status

SOC = bytes([80, 0, 100, 0, 0, 0])  # 0x355 SoC 80 %, SoH 100 %
KEEPALIVE, KEEPALIVE_1 = 0x305, 0x405  # what the edge sends for bms_0 and for bms_1 (id_offset 0x100)
BMS_1 = {"name": "bms_1", "bus": "can0", "profile": "pylon-lv@1.0.0", "id_offset": 0x100}


class Rig:
    def __init__(self, edge: Edge, db: Path, tables: dict[str, Any], seen: list[int]) -> None:
        self.edge, self.db, self.tables, self.seen = edge, db, tables, seen
        self.handler = ConfigHandler(edge, db)

    def payload(self, version: str, devices: list[dict[str, Any]], buses: list[dict[str, Any]] | None = None) -> bytes:
        body = {"version": version, "site": {"bus": buses or self.tables["bus"], "device": devices}, "profiles": []}
        return json.dumps(body).encode()

    def apply(self, payload: bytes) -> dict[str, Any]:
        return status(self.handler.handle(payload, now()))

    def device(self, name: str) -> dict[str, Any]:
        return next(d for d in self.tables["device"] if d["name"] == name)

    def value(self, address: str) -> object:
        r = self.edge.registry.get(address)
        return None if r is None else r.value


def db_rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


@contextmanager
def rig(tmp_path: Path, *devices: dict[str, Any]) -> Iterator[Rig]:
    """bms_0 on can0, bms_9 on can1 (pylon-lv 1.0.0); nodes send 0x355 and 0x455 on can0, 0x355 on can1."""
    db = tmp_path / "edge.db"
    site = virtual_site(["can0", "can1"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv@1.0.0"},
                                           {"name": "bms_9", "bus": "can1", "profile": "pylon-lv@1.0.0"}, *devices])
    with EdgeDb(db) as store:
        store.profiles.import_paths([profile_copy(tmp_path, version="1.0.0")])
        store.site.replace(site)
        tables = store.site.tables()
    stop = threading.Event()
    seen: list[int] = []  # IDs on can0 as a third node receives them, in order

    def send(bus: can.BusABC, ids: list[int]) -> None:
        while not stop.wait(0.01):
            for i in ids:
                bus.send(can.Message(arbitration_id=i, data=SOC, is_extended_id=False))

    def listen(bus: can.BusABC) -> None:
        while not stop.is_set():
            msg = bus.recv(0.05)
            if msg is not None:
                seen.append(msg.arbitration_id)

    channel0, channel1 = site.bus("can0").channel, site.bus("can1").channel
    with (Edge.from_db(db) as edge, can.Bus(interface="virtual", channel=channel0) as node0,
          can.Bus(interface="virtual", channel=channel1) as node1,
          can.Bus(interface="virtual", channel=channel0) as listener):
        threads = [threading.Thread(target=send, args=(node0, [0x355, 0x455])),
                   threading.Thread(target=send, args=(node1, [0x355])),
                   threading.Thread(target=listen, args=(listener,))]
        for t in threads:
            t.start()
        try:
            r = Rig(edge, db, tables, seen)
            assert wait(lambda: r.value("bms_0/Soc") == 80 and r.value("bms_9/Soc") == 80)
            yield r
        finally:
            stop.set()
            for t in threads:
                t.join()


def test_a_config_adding_a_device_decodes_its_frames_and_leaves_the_others_running(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        before = "bms_1/Soc" in r.edge.registry.addresses()
        kept = (r.edge.adapters["bms_0"], r.edge.dispatchers["can0"], r.edge.dispatchers["can1"])
        out = r.apply(r.payload("2", [*r.tables["device"], BMS_1]))
        decoded = wait(lambda: r.value("bms_1/Soc") == 80)  # its 0x455 frames, decoded with its id_offset
        sends = wait(lambda: KEEPALIVE_1 in r.seen)  # and its keepalive goes out
        same = kept == (r.edge.adapters["bms_0"], r.edge.dispatchers["can0"], r.edge.dispatchers["can1"])
    assert not before
    assert out == {"version": "2", "status": "applied", "switched": [],
                   "detail": "version 2 applied: bms_1 added (pylon-lv 1.0.0)"}
    assert decoded and sends and same
    assert [(d.name, d.profile, d.id_offset) for d in load_stored_site(r.db).devices] == [
        ("bms_0", "pylon-lv@1.0.0", 0), ("bms_1", "pylon-lv@1.0.0", 0x100), ("bms_9", "pylon-lv@1.0.0", 0)]


def test_a_removed_device_shows_nothing_as_current_and_sends_nothing_more(tmp_path: Path) -> None:
    with rig(tmp_path, BMS_1) as r:
        assert wait(lambda: r.value("bms_1/Soc") == 80 and KEEPALIVE_1 in r.seen)
        out = r.apply(r.payload("2", [r.device("bms_0"), r.device("bms_9")]))
        with can.Bus(interface="virtual", channel=r.edge.site.bus("can0").channel) as marker:
            marker.send(can.Message(arbitration_id=0x7AA, is_extended_id=False))  # after every frame sent before
        assert wait(lambda: 0x7AA in r.seen and r.seen[r.seen.index(0x7AA):].count(KEEPALIVE) >= 2)
        after = r.seen[r.seen.index(0x7AA):]  # two keepalives of bms_0: over a second of bms_1's period
        reading = r.edge.registry.get("bms_1/Soc")  # its 0x455 frames kept coming all along
        retired = {a for a in r.edge.registry.addresses() if a.startswith("bms_1/")} <= r.edge.retired
        devices = sorted(r.edge.adapters)
    assert out["status"] == "applied" and out["detail"] == "version 2 applied: bms_1 removed"
    assert after.count(KEEPALIVE_1) == 0
    assert reading is not None and reading.quality is Quality.STALE
    assert retired and devices == ["bms_0", "bms_9"]
    assert [d.name for d in load_stored_site(r.db).devices] == ["bms_0", "bms_9"]


def test_a_bus_change_restarts_that_bus_only(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        counts = {"bms_0": 0}
        during: list[bool] = []

        def count(address: str, reading: Reading) -> None:
            counts["bms_0"] += 1

        def can1_down(address: str, reading: Reading) -> None:
            if reading.quality is Quality.STALE:  # can1's old dispatcher stopped, its new one not started yet
                start = counts["bms_0"]
                during.append(wait(lambda: counts["bms_0"] >= start + 5))

        can0 = r.edge.dispatchers["can0"]
        can1 = r.edge.dispatchers["can1"]
        buses = [r.tables["bus"][0], {**r.tables["bus"][1], "bitrate": 250_000}]
        with r.edge.subscribe("bms_0/Soc", count), r.edge.subscribe("can1/State", can1_down):
            out = r.apply(r.payload("2", r.tables["device"], buses))
        after = now()
        reading = r.edge.read("bms_9/Soc", timeout=10.0, after_us=after)  # can1 decodes again
        same = r.edge.dispatchers["can0"] is can0 and can0._thread is not None and can0._thread.is_alive()
        replaced = r.edge.dispatchers["can1"] is not can1 and r.edge.runners["can1"].config.bitrate == 250_000
    assert out["status"] == "applied"
    assert out["detail"] == "version 2 applied: bus can1 restarted, bms_9 on pylon-lv 1.0.0 (bus can1)"
    assert during == [True]  # bms_0 on can0 kept decoding while can1 was down
    assert reading.value == 80 and same and replaced
    assert [b.bitrate for b in load_stored_site(r.db).buses] == [500_000, 250_000]


def test_a_bus_added_and_a_bus_removed(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        can2 = {"name": "can2", "interface": "virtual", "channel": r.tables["bus"][0]["channel"] + "-2"}
        out = r.apply(r.payload("2", [r.device("bms_0"), {"name": "bms_2", "bus": "can2", "profile": "pylon-lv"}],
                                [r.tables["bus"][0], can2]))
        with can.Bus(interface="virtual", channel=can2["channel"]) as node:
            node.send(can.Message(arbitration_id=0x355, data=SOC, is_extended_id=False))
            decoded = wait(lambda: r.value("bms_2/Soc") == 80)
        buses = sorted(r.edge.dispatchers)
        gone = r.edge.registry.get("bms_9/Soc")
    assert out["detail"] == ("version 2 applied: bus can2 added, bus can1 removed, bms_9 removed,"
                             " bms_2 on pylon-lv 1.0.0 (bus can2)")
    assert decoded and buses == ["can0", "can2"]
    assert gone is not None and gone.quality is Quality.STALE


BAD = [
    ("unknown profile", {**BMS_1, "profile": "nope-lv"},
     "config 2: [[device]] #3 'bms_1': key 'profile': unknown profile 'nope-lv': not in the database and not shipped"),
    ("id collision", {**BMS_1, "id_offset": 0},
     "config 2: [[device]] #3 'bms_1': key 'bus' expected IDs no other device on bus 'can0' uses, found frame 0x351"
     " (received), already used by device 'bms_0'"),
]


@pytest.mark.parametrize(("case", "device", "detail"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_added_device_is_refused_and_nothing_changes(
    tmp_path: Path, case: str, device: dict[str, Any], detail: str
) -> None:
    with rig(tmp_path) as r:
        addresses, rows = r.edge.registry.addresses(), db_rows(r.db)
        adapters = dict(r.edge.adapters)
        out = r.apply(r.payload("2", [*r.tables["device"], device]))
        unchanged = (r.edge.registry.addresses(), db_rows(r.db), dict(r.edge.adapters)) == (addresses, rows, adapters)
        fixed = r.apply(r.payload("2", [*r.tables["device"], BMS_1]))  # the same version, corrected: applies
    assert out["status"] == "failed" and out["detail"].startswith(detail), out["detail"]
    assert out["detail"].endswith("; the running configuration stays")
    assert unchanged
    assert fixed["status"] == "applied" and fixed["detail"] == "version 2 applied: bms_1 added (pylon-lv 1.0.0)"


def test_the_same_site_change_twice_applies_nothing(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        payload = r.payload("2", [*r.tables["device"], BMS_1])
        first = r.apply(payload)
        adapter, dispatcher = r.edge.adapters["bms_1"], r.edge.dispatchers["can0"]
        again = r.apply(payload)  # a reconnect brings the retained message back
        same = r.edge.adapters["bms_1"] is adapter and r.edge.dispatchers["can0"] is dispatcher
    assert first["status"] == "applied" and r.handler.activations == 1
    assert again["detail"] == "version 2 is applied already; nothing changed"
    assert same and r.handler.structural_changes == 1


def test_run_starts_from_the_applied_configuration_with_the_site_files_uplink(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        site_file = tmp_path / "site.toml"
        bus0, bus1 = r.tables["bus"]
        site_file.write_text(
            '[site]\norg = "test"\nname = "test"\n\n[uplink]\nurl = "mqtt://127.0.0.1:1883"\nusername = "test.test"\n'
            f'\n[[bus]]\nname = "can0"\ninterface = "virtual"\nchannel = "{bus0["channel"]}"\n'
            f'\n[[bus]]\nname = "can1"\ninterface = "virtual"\nchannel = "{bus1["channel"]}"\n'
            '\n[[device]]\nname = "bms_0"\nbus = "can0"\nprofile = "pylon-lv"\n', encoding="utf-8")
        lock = EdgeLock.acquire(tmp_path / "other.db")
        try:  # no configuration from the cloud in that database: the site file
            from_file = start_edge(load_site(site_file), True, tmp_path / "other.db", lock)
        finally:
            lock.release()
        out = r.apply(r.payload("2", [*r.tables["device"], BMS_1]))
        assert out["status"] == "applied"
    lock = EdgeLock.acquire(r.db)
    try:
        with start_edge(load_site(site_file), True, r.db, lock) as edge, can.Bus(
                interface="virtual", channel=bus0["channel"]) as node:
            node.send(can.Message(arbitration_id=0x455, data=SOC, is_extended_id=False))
            assert wait(lambda: edge.registry.get("bms_1/Soc") is not None)
            soc = edge.read("bms_1/Soc", timeout=5.0)
            devices = sorted(edge.adapters)
            uplink = edge.site.uplink
    finally:
        lock.release()
    assert sorted(from_file.adapters) == ["bms_0"]
    assert devices == ["bms_0", "bms_1", "bms_9"] and soc.value == 80
    assert uplink is not None and uplink.url == "mqtt://127.0.0.1:1883" and uplink.username == "test.test"
