"""The J1939 BMS end to end: the can-j1939 simulator and the edge on python-can virtual buses."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import can
import j1939
import pytest

from emsbms import Edge
from emsbms.commissioning.j1939 import J1939Node, scan_j1939
from emsbms.demo import site_toml
from emsbms.edge.registry import Snapshot
from emsbms.protocols.j1939_stack import GuardedCA
from emsbms.sim.j1939_sim import J1939Simulator
from emsbms.sim.runner import Simulation, initial_soc
from emsbms.site import Site, parse_site
from emsbms.types import AlarmLevel, CommandStatus, CommState
from tests.conftest import virtual_site
from tests.test_cross_process import GROUP, emsbms_command, run_cli

BMS_NAME = 0x9000A0005CA01F3A
DEVICE = {"name": "bms_0", "bus": "can0", "profile": "j1939-hvess", "j1939_name": BMS_NAME}


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        left = [t for t in set(threading.enumerate()) - before
                if t.is_alive() and ("j1939" in t.name or "notifier" in t.name or "emsbms" in t.name)]
        if not left:
            return
        time.sleep(0.05)
    pytest.fail(f"threads left running: {[t.name for t in left]}")


def value(edge: Edge, address: str) -> Any:
    r = edge.snapshot().get(address)
    return None if r is None else r.value


def until(edge: Edge, predicate: Callable[[Snapshot], bool], timeout: float = 5.0) -> bool:
    return edge.wait_until(predicate, timeout)


@pytest.fixture
def sim_edge() -> Iterator[tuple[Simulation, Edge]]:
    site = virtual_site(["can0"], [DEVICE])
    with Simulation(site) as sim, Edge(site) as edge:
        yield sim, edge


def test_values_requested_groups_and_commands(sim_edge: tuple[Simulation, Edge]) -> None:
    sim, edge = sim_edge
    assert until(edge, lambda s: s.value("bms_0/CommState") == CommState.OK, 10.0)  # claimed and heard: OK
    result = edge.write("bms_0/SetChargeCurrent", 42.0, 5.0)
    assert result.status is CommandStatus.ACKED, result.detail
    assert edge.read("bms_0/Soc", 5.0).value == pytest.approx(initial_soc("bms_0"), abs=0.5)
    assert edge.read("bms_0/Soh", 5.0).value == pytest.approx(98.0, abs=0.4)  # HVES1HIST, by BAM
    assert edge.read("bms_0/NominalVoltage", 5.0).value == pytest.approx(614.4)  # HVES1CFG, by BAM
    assert edge.read("bms_0/DischargeMaxCurrent", 5.0).value == pytest.approx(250.0)
    assert edge.read("bms_0/ChargeMaxVoltage", 5.0).value == pytest.approx(700.8)
    assert 500.0 < edge.read("bms_0/Voltage", 5.0).value < 720.0
    assert edge.read("bms_0/EdgeAddress", 5.0).value == 0xE0
    assert until(edge, lambda s: s.value("bms_0/ChargeMaxCurrent") == pytest.approx(42.0))
    result = edge.write("bms_0/Connect", 0, 3.0)
    assert result.status is CommandStatus.ACKED and "BusConnectionStatus = 0" in result.detail
    assert until(edge, lambda s: s.value("bms_0/PositiveContactor") == 0)
    result = edge.write("bms_0/Connect", 1, 3.0)
    assert result.status is CommandStatus.ACKED, result.detail
    bms = sim.simulators["bms_0"]
    assert isinstance(bms, J1939Simulator)
    count = bms.received[0x1B00]
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and bms.received[0x1B00] < count + 5:
        time.sleep(0.02)
    assert bms.received[0x1B00] >= count + 5  # HVES1C1 repeats while active
    assert value(edge, "can0/UnknownIds") == 0


def test_dm1_single_frame_bam_and_dm11(sim_edge: tuple[Simulation, Edge]) -> None:
    sim, edge = sim_edge
    edge.read("bms_0/EdgeAddress", 5.0)
    sim.inject("bms_0", "overtemp")  # one DTC: a single-frame DM1
    assert until(edge, lambda s: s.value("bms_0/Alarm/OverTemperature") == AlarmLevel.ALARM)
    assert json.loads(value(edge, "bms_0/Dm1/ActiveDtcs")) == [{"spn": 520200, "fmi": 0, "oc": 1}]
    assert value(edge, "bms_0/Dm1/RedStopLamp") == "on"
    sim.inject("bms_0", "dtc2")  # three DTCs: DM1 by BAM
    assert until(edge, lambda s: s.value("bms_0/Dm1/ActiveDtcCount") == 3)
    assert value(edge, "bms_0/Alarm/CellUnderVoltage") == AlarmLevel.WARNING
    sim.clear("bms_0", "overtemp")
    result = edge.write("bms_0/ResetFaults", 1, 3.0)
    assert result.status is CommandStatus.ACKED and "ACK of PGN 0xFED3" in result.detail
    assert until(edge, lambda s: s.value("bms_0/Dm1/ActiveDtcs") == "[]")
    assert value(edge, "bms_0/Alarm/OverTemperature") == AlarmLevel.OK
    assert value(edge, "bms_0/Alarm/CellUnderVoltage") == AlarmLevel.OK
    sim.inject("bms_0", "nack_dm11")
    result = edge.write("bms_0/ResetFaults", 1, 3.0)
    assert result.status is CommandStatus.REJECTED and result.detail.startswith("NACK of PGN 0xFED3")


def test_address_change_is_followed_by_name(sim_edge: tuple[Simulation, Edge]) -> None:
    sim, edge = sim_edge
    assert until(edge, lambda s: s.value("bms_0/SourceAddress") == 0xF3)
    edge.read("bms_0/Soc", 5.0)
    sim.inject("bms_0", "conflict")  # a stronger NAME claims 0xF3: the BMS moves to 0xF4
    assert until(edge, lambda s: s.value("bms_0/SourceAddress") == 0xF4)
    moved = time.time_ns() // 1000
    assert edge.read("bms_0/Soc", 5.0, after_us=moved).value == pytest.approx(initial_soc("bms_0"), abs=0.5)
    assert value(edge, "bms_0/CommState") is CommState.OK
    assert value(edge, "bms_0/Alarm/NameNotClaimed") == AlarmLevel.OK


def test_identical_bms_on_two_buses() -> None:
    site = virtual_site(["can0", "can1"], [DEVICE, {**DEVICE, "name": "bms_1", "bus": "can1"}])
    with Simulation(site) as sim, Edge(site) as edge:
        soc0 = edge.read("bms_0/Soc", 5.0).value
        soc1 = edge.read("bms_1/Soc", 5.0).value
        assert soc0 == pytest.approx(initial_soc("bms_0"), abs=0.5)
        assert soc1 == pytest.approx(initial_soc("bms_1"), abs=0.5) and abs(soc0 - soc1) > 1
        sim.inject("bms_1", "overtemp")
        assert until(edge, lambda s: s.value("bms_1/Alarm/OverTemperature") == AlarmLevel.ALARM)
        assert value(edge, "bms_0/Alarm/OverTemperature") == AlarmLevel.OK
        assert value(edge, "bms_0/SourceAddress") == value(edge, "bms_1/SourceAddress") == 0xF3


def test_two_bms_on_one_bus_share_one_edge_ecu() -> None:
    other = {"name": "bms_1", "bus": "can0", "profile": "j1939-hvess", "j1939_name": BMS_NAME + 1,
             "source_address": 0xF4}
    site = virtual_site(["can0"], [DEVICE, other])
    with Simulation(site), Edge(site) as edge:
        assert edge.read("bms_0/Soc", 5.0).value == pytest.approx(initial_soc("bms_0"), abs=0.5)
        assert edge.read("bms_1/Soc", 5.0).value == pytest.approx(initial_soc("bms_1"), abs=0.5)
        assert edge.read("bms_1/Soh", 5.0).value == pytest.approx(98.0, abs=0.4)
        assert edge.adapters["bms_0"].stack is edge.adapters["bms_1"].stack  # type: ignore[attr-defined]
        assert value(edge, "bms_0/SourceAddress") == 0xF3 and value(edge, "bms_1/SourceAddress") == 0xF4
        assert value(edge, "bms_0/EdgeAddress") == value(edge, "bms_1/EdgeAddress") == 0xE0
        assert value(edge, "can0/UnknownIds") == 0


def test_scan_lists_names_and_profiles() -> None:
    site = virtual_site(["can0"], [DEVICE])
    with Simulation(site) as sim:
        bms = sim.simulators["bms_0"]
        assert isinstance(bms, J1939Simulator)
        deadline = time.monotonic() + 5.0
        while bms.address is None and time.monotonic() < deadline:
            time.sleep(0.02)
        seen: list[J1939Node] = []
        bus = can.Bus(interface="virtual", channel=site.bus("can0").channel)
        try:
            nodes = scan_j1939(bus, 0.5, seen.append)
        finally:
            bus.shutdown()
        again = scan_j1939(site.bus("can0"), 0.3)  # opens and closes a bus of its own
    assert again == nodes
    assert [n.address for n in nodes] == [0xF3] and seen == nodes
    node = nodes[0]
    assert node.name == BMS_NAME and node.profile == "j1939-hvess"
    d = node.as_dict()
    assert (d["function"], d["manufacturer_code"], d["industry_group"], d["ecu_instance"]) == (160, 741, 1, 0)
    assert d["name_hex"] == "0x9000A0005CA01F3A" and d["address_hex"] == "0xF3"


def echoing_site() -> Site:
    tag = uuid.uuid4().hex[:8]
    return parse_site({
        "bus": [{"name": "can0", "interface": "virtual", "channel": f"echo-{tag}", "receive_own_messages": True}],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "j1939-hvess", "source_address": 0xF3}],
    })


def count_claims(site: Site, seconds: float) -> tuple[int, Any]:
    peer = can.Bus(interface="virtual", channel=site.bus("can0").channel)
    claims = 0
    try:
        with Edge(site) as edge:
            deadline = time.monotonic() + seconds
            while (left := deadline - time.monotonic()) > 0:
                msg = peer.recv(left)
                if msg is not None and msg.arbitration_id == 0x18EEFFE0:
                    claims += 1
            address = value(edge, "bms_0/EdgeAddress")
    finally:
        peer.shutdown()
    return claims, address


def test_claim_storm_guard_on_a_bus_that_echoes(monkeypatch: pytest.MonkeyPatch) -> None:
    # the runner drops a virtual echo (is_rx=False) as its own frame; here it must reach can-j1939, as
    # on a bus whose echoes cannot be told apart (SocketCAN with receive_own_messages)
    monkeypatch.setattr("emsbms.can.bus.RX_FLAGGED_INTERFACES", frozenset())
    claims, address = count_claims(echoing_site(), 1.5)
    # one claim (a second only if the echo of our start request from 254 came after the claim)
    assert 1 <= claims <= 2 and address == 0xE0
    # the same bus without the guard: can-j1939 answers its own echo, again and again
    monkeypatch.setattr(GuardedCA, "_process_addressclaim", j1939.ControllerApplication._process_addressclaim)
    storm, _ = count_claims(echoing_site(), 1.0)
    assert storm > 50


@pytest.mark.slow
def test_cross_process_over_udp_multicast(tmp_path: Path) -> None:
    """`emsbms simulate` and `emsbms read`/`write` in separate processes; udp_multicast echoes every
    sender's own frames, so both ECUs see their own claims (the guard keeps them from storming)."""
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(48000, 49990)
    site = tmp_path / "site.toml"
    site.write_text(site_toml({
        "site": {"org": "test", "name": "j1939"},
        "bus": [{"name": "can0", "interface": "udp_multicast", "channel": GROUP, "port": port}],
        "device": [DEVICE],
    }), encoding="utf-8")
    sim = subprocess.Popen([*emsbms_command(), "--site", str(site), "simulate", "--duration", "60"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        r = run_cli(site, "read", "bms_0/Soc", "bms_0/Soh", "bms_0/SourceAddress", "--json", "--timeout", "20")
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["bms_0/Soc"]["value"] == pytest.approx(initial_soc("bms_0"), abs=1.0)
        assert doc["bms_0/Soc"]["unit"] == "%"
        assert doc["bms_0/Soh"]["value"] == pytest.approx(98.0, abs=0.4)
        assert doc["bms_0/SourceAddress"]["value"] == 0xF3
        r = run_cli(site, "write", "bms_0/ResetFaults", "1", "--json", "--timeout", "10")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["status"] == "acked"
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            _, err = sim.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            sim.kill()
            _, err = sim.communicate()
    assert sim.returncode == 0, err
