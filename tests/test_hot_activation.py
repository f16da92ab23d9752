"""Hot activation: a new profile version switches its devices while frames flow, losing none elsewhere."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from emsbms.db import EdgeDb
from emsbms.edge import Edge
from emsbms.edge.registry import Snapshot
from emsbms.edge.watch import ProfileWatcher
from emsbms.errors import ConfigError, UnsupportedError
from emsbms.profile.loader import load_profile
from emsbms.profile.models import Profile
from emsbms.protocols.j1939 import J1939Adapter
from emsbms.sim.runner import Simulation, initial_soc
from emsbms.types import Quality, Reading
from tests.conftest import virtual_site, wait
from tests.test_db import invoke, profile_copy, pylon_v2

# hand-computed frames (PROTOCOLS.md): 0x355 SoC u16 % = 80, SoH u16 % = 100; ACME_Pack 0x4A0 bytes 0-1
# PackVoltage 0.1 V/bit carrying the frame's sequence number, the rest zero
PYLON_SOC = can.Message(arbitration_id=0x355, data=bytes([80, 0, 100, 0, 0, 0]), is_extended_id=False)


def acme_pack(i: int) -> can.Message:
    return can.Message(arbitration_id=0x4A0, data=i.to_bytes(2, "little") + bytes(6), is_extended_id=False)



def test_activation_while_traffic_flows_loses_no_frame_of_another_device(tmp_path: Path) -> None:
    v1 = profile_copy(tmp_path, version="1.0.0")
    v2 = profile_copy(tmp_path, version="1.1.0", edit=pylon_v2)
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": str(v1)},
                                   {"name": "hv_0", "bus": "can0", "profile": "acme-hv"}])
    edge = Edge(site)
    voltages: list[float] = []
    edge.subscribe("hv_0/Voltage", lambda a, r: voltages.append(float(r.value or 0)))
    done = threading.Event()
    sent = [0]

    def send(bus: can.BusABC) -> None:
        while not done.is_set() or sent[0] < 500:
            bus.send(acme_pack(sent[0]))
            sent[0] += 1
            if sent[0] % 5 == 0:
                bus.send(PYLON_SOC)
            time.sleep(0.002)

    with edge, can.Bus(interface="virtual", channel=site.bus("can0").channel) as bus:
        sender = threading.Thread(target=send, args=(bus,))
        sender.start()
        try:
            soc = lambda: edge.registry.get("bms_0/Soc")  # noqa: E731
            assert wait(lambda: (r := soc()) is not None and r.value == 80)
            old_adapter = edge.adapters["bms_0"]
            before = soc()
            assert edge.activate_profile(load_profile(v2)) == ["bms_0"]
            assert edge.adapters["bms_0"] is not old_adapter and edge.profiles["bms_0"].version == "1.1.0"
            continuing = soc()  # a channel that still exists keeps its reading
            assert before is not None and continuing is not None and continuing.timestamp_us >= before.timestamp_us
            assert wait(lambda: (r := soc()) is not None and r.value == 40.0)  # the new scale
            assert wait(lambda: (r := edge.registry.get("bms_0/StateOfHealth")) is not None and r.value == 100)
            soh = edge.registry.get("bms_0/Soh")
            assert soh is not None and soh.quality is Quality.STALE  # gone from v2
            for again in (v1, v2, v1):  # more switches while frames flow
                edge.activate_profile(load_profile(again))
                expected = 80 if again == v1 else 40.0
                assert wait(lambda e=expected: (r := soc()) is not None and r.value == e)  # type: ignore[misc]
        finally:
            done.set()
            sender.join()
        assert wait(lambda: len(voltages) >= sent[0])
    assert sorted(round(v * 10) for v in voltages) == list(range(sent[0]))
    assert edge.dispatchers["can0"].bad_frames == 0 and edge.dispatchers["can0"].unknown_ids == 0


def test_a_version_that_would_send_on_another_devices_id_is_refused(tmp_path: Path) -> None:
    # the site's own check runs on hot activation too: IDs the edge sends count, not only received ones
    v1 = profile_copy(tmp_path, version="1.0.0")
    onto_setpoints = profile_copy(tmp_path, version="2.0.0",  # its keepalive moved onto hv_0's EMS_Setpoints
                                  dbc_edit=lambda t: t.replace("BO_ 773 EMS_Keepalive", "BO_ 1200 EMS_Keepalive"))
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": str(v1)},
                                   {"name": "hv_0", "bus": "can0", "profile": "acme-hv"}])
    edge = Edge(site)
    working = edge.adapters["bms_0"]
    with pytest.raises(ConfigError, match=re.escape(
            "device 'bms_0': profile pylon-lv 2.0.0: <site>: [[device]] #2 'hv_0': key 'bus' expected IDs no other"
            " device on bus 'can0' uses, found frame 0x4B0 (sent: command EMS_Setpoints), already used by device"
            " 'bms_0' (sent: EMS_Keepalive)")):
        edge.activate_profile(load_profile(onto_setpoints))
    assert edge.adapters["bms_0"] is working and edge.profiles["bms_0"].version == "1.0.0"


def test_a_profile_that_cannot_be_built_never_replaces_a_working_one(tmp_path: Path) -> None:
    v1 = profile_copy(tmp_path, version="1.0.0")
    colliding = profile_copy(tmp_path, version="2.0.0",  # its SoC message moved onto hv_0's ACME_Pack
                             dbc_edit=lambda t: t.replace("BO_ 853 PYLON_SocSoh", "BO_ 1184 PYLON_SocSoh"))
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": str(v1)},
                                   {"name": "hv_0", "bus": "can0", "profile": "acme-hv"}])
    with Simulation(site), Edge(site) as edge:
        working = edge.adapters["bms_0"]
        with pytest.raises(ConfigError, match=re.escape(
                "device 'bms_0': profile pylon-lv 2.0.0: <site>: [[device]] #2 'hv_0': key 'bus' expected IDs no other"
                " device on bus 'can0' uses, found frame 0x4A0 (received), already used by device 'bms_0' (received)")):
            edge.activate_profile(load_profile(colliding))
        assert edge.adapters["bms_0"] is working and edge.profiles["bms_0"].version == "1.0.0"
        later = time.time_ns() // 1000
        assert edge.read("bms_0/Soc", timeout=10.0, after_us=later).quality is Quality.OK  # still decoding


def hvess_v2(doc: dict[str, Any]) -> None:
    """v2 of j1939-hvess: Soc rescaled by 0.5, the unscaled value as new SocPercent, Soh renamed StateOfHealth."""
    doc["channels"]["SocPercent"] = dict(doc["channels"]["Soc"])
    doc["channels"]["Soc"]["scale"] = 0.5
    doc["channels"]["StateOfHealth"] = doc["channels"].pop("Soh")


def edge_claims(frames: list[can.Message], edge_address: int) -> list[can.Message]:
    """Address claims (PGN 0xEE00) the edge sent, and its Requests for Address Claimed (0xEA, data 00 EE 00)."""
    return [m for m in frames if m.is_extended_id and (m.arbitration_id & 0xFF) in (edge_address, 0xFE) and (
        (m.arbitration_id >> 16) & 0xFF == 0xEE
        or ((m.arbitration_id >> 16) & 0xFF == 0xEA and bytes(m.data[:3]) == b"\x00\xee\x00"))]


def test_a_running_j1939_device_switches_on_its_bus_stack_without_a_new_claim(tmp_path: Path) -> None:
    v2 = profile_copy(tmp_path, base="j1939-hvess", version="1.1.0", edit=hvess_v2)
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "j1939-hvess",
                                    "j1939_name": 0x9000A0005CA01F3A}])
    seen: list[can.Message] = []
    with can.Bus(interface="virtual", channel=site.bus("can0").channel) as bus:  # listens from before the start
        notifier = can.Notifier(bus, [seen.append])
        try:
            with Simulation(site), Edge(site) as edge:
                switch_and_check(edge, load_profile(v2), seen)
        finally:
            notifier.stop()


def switch_and_check(edge: Edge, v2: Profile, seen: list[can.Message]) -> None:
    """Switch bms_0 to `v2` once the claims are done; check the new mapping, the addresses, the claims."""
    assert edge.wait_until(lambda s: s.value("bms_0/EdgeAddress") == 0xE0, 10.0)
    assert edge.wait_until(lambda s: s.value("bms_0/SourceAddress") == 0xF3, 10.0)
    soh = edge.read("bms_0/Soh", timeout=10.0).value  # HVES1HIST, on request (BAM)
    assert soh == pytest.approx(98.0, abs=0.4)
    old = edge.adapters["bms_0"]
    assert isinstance(old, J1939Adapter)
    claims_before = len(edge_claims(list(seen), 0xE0))
    assert claims_before >= 2  # the edge's Request for Address Claimed and its claim at start
    switched_us = time.time_ns() // 1000
    assert edge.activate_profile(v2) == ["bms_0"]
    new = edge.adapters["bms_0"]
    assert isinstance(new, J1939Adapter) and new is not old and edge.profiles["bms_0"].version == "1.1.0"
    assert new.stack is old.stack and new.stack.clients == [new]  # the same edge ECU, the old adapter gone
    assert new.address == 0xF3  # from the stack's NAME table: the BMS claimed nothing since
    assert new.stack.edge_address == 0xE0

    def pair(s: Snapshot) -> bool:  # Soc and SocPercent decoded from one HVES1D2 frame after the switch
        a, b = s.get("bms_0/Soc"), s.get("bms_0/SocPercent")
        return a is not None and b is not None and a.timestamp_us == b.timestamp_us > switched_us

    assert edge.wait_until(pair, 10.0)
    snap = edge.snapshot()
    percent, soc = snap.value("bms_0/SocPercent"), snap.value("bms_0/Soc")
    assert isinstance(percent, float) and isinstance(soc, float)
    assert percent == pytest.approx(initial_soc("bms_0"), abs=0.5)
    assert soc == pytest.approx(percent * 0.5, abs=1e-9)  # the new scale
    health = edge.read("bms_0/StateOfHealth", timeout=10.0)  # requested again under v2
    assert health.value == soh and health.timestamp_us > switched_us
    gone = edge.registry.get("bms_0/Soh")
    assert gone is not None and gone.quality is Quality.STALE
    # 1 s on (a new claim would have been sent 0.5 s after a new start), frames still decode
    assert edge.read("bms_0/Voltage", timeout=10.0, after_us=switched_us + 1_000_000).quality is Quality.OK
    assert edge.registry.get("bms_0/EdgeAddress").value == 0xE0  # type: ignore[union-attr]
    assert edge.registry.get("bms_0/SourceAddress").value == 0xF3  # type: ignore[union-attr]
    assert edge.dispatchers["can0"].bad_frames == 0
    assert len(edge_claims(list(seen), 0xE0)) == claims_before  # no address claim, no request for claims


def test_a_j1939_device_is_not_switched_to_another_protocol(tmp_path: Path) -> None:
    site = virtual_site(["can0"], [{"name": "hv_0", "bus": "can0", "profile": "j1939-hvess",
                                    "source_address": 0xF3}])
    edge = Edge(site)
    working = edge.adapters["hv_0"]
    other = load_profile(profile_copy(tmp_path, name="j1939-hvess", version="2.0.0"))  # a pylon-lv (DBC) profile
    with pytest.raises(UnsupportedError, match="hv_0: cannot switch from protocol j1939 to dbc"):
        edge.activate_profile(other)
    assert edge.adapters["hv_0"] is working and edge.profiles["hv_0"].version == "1.0.0"


def test_an_import_reaches_a_running_edge_started_from_the_database(tmp_path: Path) -> None:
    v1 = profile_copy(tmp_path, version="1.0.0")
    v2 = profile_copy(tmp_path, version="1.1.0", edit=pylon_v2)
    bad = profile_copy(tmp_path, version="1.2.0",
                       dbc_edit=lambda t: t.replace("BO_ 853 PYLON_SocSoh", "BO_ 1184 PYLON_SocSoh"))
    db = tmp_path / "e.db"
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": str(v1)},
                                   {"name": "hv_0", "bus": "can0", "profile": "acme-hv"}])
    with EdgeDb(db) as edge_db:
        edge_db.site.replace(site)
        edge_db.profiles.import_paths([v1])
        edge_db.db.execute("UPDATE devices SET profile = 'pylon-lv' WHERE name = 'bms_0'")
        stored = edge_db.stored_site()
    first: list[float] = []

    def seen(address: str, reading: Reading) -> None:
        if not first:
            first.append(time.monotonic())

    with Simulation(stored), Edge.from_db(db) as edge, ProfileWatcher(db, edge, interval=0.2).start() as watcher:
        assert edge.read("bms_0/Soh", timeout=10.0).value is not None
        edge.subscribe("bms_0/StateOfHealth", seen)
        imported = time.monotonic()
        with EdgeDb(db) as edge_db:
            edge_db.profiles.import_paths([v2])
        assert wait(lambda: bool(first), timeout=15.0)
        assert first[0] - imported < 10.0
        assert [(a.profile, a.version, a.devices, a.error) for a in watcher.activations] == [
            ("pylon-lv", "1.1.0", ("bms_0",), None)]
        with EdgeDb(db) as edge_db:
            edge_db.profiles.import_paths([bad])
        assert wait(lambda: len(watcher.activations) == 2)
        refused = watcher.activations[1]
        assert refused.version == "1.2.0" and refused.error is not None
        assert "found frame 0x4A0 (received), already used by device 'bms_0'" in refused.error
        assert edge.profiles["bms_0"].version == "1.1.0"


def test_emsbms_run_activates_a_version_imported_while_it_runs(tmp_path: Path) -> None:
    v2 = profile_copy(tmp_path, version="9.1.0", edit=pylon_v2)  # newer than any shipped pylon-lv
    tag = uuid.uuid4().hex[:8]
    db = tmp_path / "e.db"
    # commissioned by name, it follows the newest version (`site import` pins the version its file names)
    assert invoke(db, "commission", "bms_0", "--bus", "can0", "--profile", "pylon-lv", "--interface", "virtual",
                  "--channel", f"run-{tag}").exit_code == 0

    def logged(address: str) -> bool:
        try:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT count(*) FROM samples WHERE address = ?", [address]).fetchone()[0] > 0
        except sqlite3.OperationalError:  # `run` has not created its tables yet
            return False

    finished = threading.Event()  # `run` returned: never signal the test process after that

    def importer() -> None:
        try:
            if wait(lambda: logged("bms_0/Soh") or finished.is_set(), timeout=30.0) and not finished.is_set():
                with EdgeDb(db) as edge_db:
                    edge_db.profiles.import_paths([v2])
                wait(lambda: logged("bms_0/StateOfHealth") or finished.is_set(), timeout=30.0)
        finally:
            if not finished.is_set():
                os.kill(os.getpid(), signal.SIGTERM)  # `run` stops cleanly on SIGTERM

    with EdgeDb(db) as edge_db:
        stored = edge_db.stored_site()
    with Simulation(stored):
        helper = threading.Thread(target=importer)
        helper.start()
        try:
            r = invoke(db, "run", "--duration", "60")
        finally:
            finished.set()
            helper.join()
    assert r.exit_code == 0, r.output
    assert logged("bms_0/StateOfHealth")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT unit FROM channels WHERE address = 'bms_0/StateOfHealth'").fetchone() == ("%",)
