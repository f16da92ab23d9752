"""End to end on virtual buses: simulated DBC/inline BMS units, the edge, reads, writes and faults."""

from __future__ import annotations

import itertools
import json
import statistics
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import can
import pytest

from emsbms.edge import Edge
from emsbms.sim.dbc_sim import DbcSimulator
from emsbms.sim.runner import Simulation
from emsbms.site import Site
from emsbms.types import CommandStatus, CommState, Quality, Reading
from tests.conftest import virtual_site

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def running(site: Site) -> Iterator[tuple[Simulation, Edge]]:
    """Simulated devices and the edge (the edge stops first)."""
    with Simulation(site) as sim, Edge(site) as edge:
        yield sim, edge


@contextmanager
def listening(site: Site, bus: str = "can0") -> Iterator[can.BusABC]:
    """A separate node on a bus that only listens."""
    listener = can.Bus(interface="virtual", channel=site.bus(bus).channel)
    try:
        yield listener
    finally:
        listener.shutdown()


def frames_of(bus: can.BusABC, can_id: int, quiet: float, timeout: float) -> list[can.Message]:
    """Frames with `can_id` until none arrives for `quiet` seconds (or `timeout` passes)."""
    got: list[can.Message] = []
    deadline = time.monotonic() + timeout
    last = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - last < quiet:
        m = bus.recv(0.02)
        if m is not None and m.arbitration_id == can_id:
            got.append(m)
            last = time.monotonic()
    return got


def heard(bus: can.BusABC, seconds: float) -> list[can.Message]:
    """Every frame the bus receives during the next `seconds`."""
    got: list[can.Message] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        m = bus.recv(left)
        if m is not None:
            got.append(m)
    return got


def num(value: object) -> float:
    """A channel value as a float (fails on a non-number)."""
    assert isinstance(value, int | float), value
    return float(value)


def hv_site(**device: object) -> Site:
    return virtual_site(["can0"], [{"name": "hv", "bus": "can0", "profile": "acme-hv", **device}])


def test_hv_channels_arrive_with_units_and_quality_ok() -> None:
    units = {
        "Soc": "%", "Soh": "%", "Voltage": "V", "Current": "A", "Temperature": "°C",
        "ChargeMaxVoltage": "V", "DischargeMinVoltage": "V", "ChargeMaxCurrent": "A",
        "DischargeMaxCurrent": "A", "MinCellVoltage": "V", "MaxCellVoltage": "V",
        "MinCellTemperature": "°C", "MaxCellTemperature": "°C", "Capacity": "Ah",
        "AllowCharge": "", "AllowDischarge": "", "BalancingActive": "",
    }
    with running(hv_site()) as (sim, edge):
        readings: dict[str, Reading] = {n: edge.read(f"hv/{n}", timeout=5.0) for n in units}
        model = sim.simulators["hv"].model
        assert edge.wait_until(lambda s: s.value("hv/CommState") == CommState.OK, 5.0)
        alarm = edge.read("hv/Alarm/OverTemperature", timeout=5.0)
    for name, unit in units.items():
        assert readings[name].unit == unit, name
        assert readings[name].quality is Quality.OK, name
    values = {n: r.value for n, r in readings.items()}
    assert values["Capacity"] == 120.0
    assert values["Soh"] == 98.0
    assert values["ChargeMaxVoltage"] == pytest.approx(340.8, abs=1e-9)
    assert values["ChargeMaxCurrent"] == 100.0
    assert values["DischargeMaxCurrent"] == 150.0
    assert values["AllowCharge"] is True
    assert abs(num(values["Soc"]) - model.soc) < 0.1
    assert abs(num(values["Voltage"]) - model.voltage) < 2.0
    assert 280.0 < num(values["Voltage"]) < 360.0
    assert alarm.value == 0


def test_set_charge_current_acked_and_limit_follows() -> None:
    with running(hv_site()) as (sim, edge):
        assert edge.wait_until(lambda s: s.value("hv/CommState") == CommState.OK, 10.0)  # commands need OK
        result = edge.write("hv/SetChargeCurrent", 42.5, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result
        assert "ChargeCurrentRequestEcho" in result.detail
        assert edge.wait_until(lambda s: s.value("hv/ChargeMaxCurrent") == 42.5, 5.0)
        result = edge.write("hv/SetDischargeCurrent", 60.0, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result
        assert edge.wait_until(lambda s: s.value("hv/DischargeMaxCurrent") == 60.0, 5.0)
        model = sim.simulators["hv"].model
        # both setpoints travel in one cyclic frame: the first one is still held
        assert model.charge_max_current == 42.5
        assert edge.snapshot().value("hv/SetChargeCurrent") == 42.5


def test_out_of_range_write_is_rejected_and_nothing_is_sent() -> None:
    site = hv_site()
    with running(site) as (sim, edge), listening(site) as listener:
        edge.read("hv/Soc", timeout=5.0)
        high = edge.write("hv/SetChargeCurrent", 250.0, timeout=1.0)
        low = edge.write("hv/SetDischargeCurrent", -5.0, timeout=1.0)
        reset = edge.write("hv/ResetFaults", 0.0, timeout=1.0)
        sent = [m for m in heard(listener, 0.4) if m.arbitration_id in (0x4B0, 0x4B1)]
        assert sim.simulators["hv"].model.charge_max_current == 100.0
    assert high.status is CommandStatus.REJECTED
    assert "above the maximum 200.0 A" in high.detail
    assert low.status is CommandStatus.REJECTED
    assert "below the minimum 0.0 A" in low.detail
    assert reset.status is CommandStatus.REJECTED
    assert "below the minimum 1.0" in reset.detail
    assert sent == []


def test_cyclic_setpoint_repeats_at_its_period_and_stops_after_ttl(tmp_path: Path) -> None:
    data = json.loads((ROOT / "profiles" / "acme-hv.json").read_text(encoding="utf-8"))
    data["name"] = "acme-hv-short-ttl"
    data["commands"]["SetChargeCurrent"]["ttl_s"] = 1.0
    path = tmp_path / "acme-hv-short-ttl.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    site = hv_site(profile=str(path))
    with running(site) as (sim, edge), listening(site) as listener:
        edge.read("hv/Soc", timeout=5.0)
        started = time.time()
        result = edge.write("hv/SetChargeCurrent", 30.0, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result
        frames = frames_of(listener, 0x4B0, quiet=0.6, timeout=8.0)
        # the BMS's watchdog gives its own limit back once the setpoints stop
        assert edge.wait_until(lambda s: s.value("hv/ChargeMaxCurrent") == 100.0, 5.0)
        assert sim.simulators["hv"].model.charge_max_current == 100.0
        assert edge.snapshot()["hv/SetChargeCurrent"].quality is Quality.STALE
    assert {bytes(m.data) for m in frames} == {struct.pack("<HH", 300, 0xFFFF)}  # 30 A, discharge idle
    assert len(frames) >= 5
    gaps = [b.timestamp - a.timestamp for a, b in itertools.pairwise(frames)]
    assert 0.09 <= statistics.median(gaps) <= 0.3
    assert frames[-1].timestamp - started >= 0.8  # repeated until (about) the ttl of 1 s
    assert frames[-1].timestamp - started <= 3.0  # and then stopped


def test_enable_balancing_and_reset_faults_are_acked() -> None:
    with running(hv_site()) as (sim, edge):
        model = sim.simulators["hv"].model
        assert edge.wait_until(lambda s: s.value("hv/CommState") == CommState.OK, 10.0)  # commands need OK
        result = edge.write("hv/EnableBalancing", 1.0, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result
        assert "BalancingRequestEcho" in result.detail
        assert edge.wait_until(lambda s: s.value("hv/BalancingActive") is True, 5.0)
        model.faults.add("SystemError")
        assert edge.wait_until(lambda s: s.value("hv/Alarm/SystemError") == 2, 5.0)
        result = edge.write("hv/ResetFaults", 1.0, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result
        assert "FaultResetEcho" in result.detail
        assert edge.wait_until(lambda s: s.value("hv/Alarm/SystemError") == 0, 5.0)
        assert model.balancing is True  # the reset frame carried "no request" for balancing


def test_bytemap_profile_reads_and_its_command_is_sent_not_acked() -> None:
    site = virtual_site(["can0"], [{"name": "lv", "bus": "can0", "profile": "acme-lv-bytemap"}])
    with running(site) as (sim, edge):
        model = sim.simulators["lv"].model
        cvl = edge.read("lv/ChargeMaxVoltage", timeout=5.0)  # the big-endian field
        current = edge.read("lv/Current", timeout=5.0)  # the signed field
        model_current = model.current  # before the command limits it
        result = edge.write("lv/SetChargeCurrent", 20.0, timeout=2.0)
        assert edge.wait_until(lambda s: s.value("lv/ChargeMaxCurrent") == 20.0, 5.0)
        assert model.charge_max_current == 20.0
        high = edge.write("lv/SetChargeCurrent", 150.0, timeout=2.0)
    assert cvl.value == pytest.approx(56.8, abs=1e-9) and cvl.unit == "V"
    assert abs(num(current.value) - model_current) < 2.0
    assert result.status is CommandStatus.SENT
    assert "no acknowledgement" in result.detail
    assert result.frames == ("618#C800",)
    assert high.status is CommandStatus.REJECTED and "maximum 100.0 A" in high.detail


def test_three_pylon_devices_with_identical_ids_on_three_buses() -> None:
    site = virtual_site(
        ["can0", "can1", "can2"],
        [{"name": f"bms_{i}", "bus": f"can{i}", "profile": "pylon-lv"} for i in range(3)],
    )
    with running(site) as (sim, edge):
        socs = [edge.read(f"bms_{i}/Soc", timeout=5.0).value for i in range(3)]
        models = [sim.simulators[f"bms_{i}"].model for i in range(3)]
        # each simulated battery hears the edge's 0x305 keepalive on its own bus
        sims = [sim.simulators[f"bms_{i}"] for i in range(3)]
        assert all(isinstance(s, DbcSimulator) for s in sims)
        assert edge.wait_until(lambda _: all(
            (age := s.keepalive_age()) is not None and age < 1.5 for s in sims if isinstance(s, DbcSimulator)), 5.0)
    assert socs == [round(m.soc) for m in models]
    assert len(set(socs)) == 3


def test_device_behind_a_bridge_shares_the_bus_with_an_unoffset_one() -> None:
    site = virtual_site(["can0"], [
        {"name": "hv0", "bus": "can0", "profile": "acme-hv"},
        {"name": "hv1", "bus": "can0", "profile": "acme-hv", "id_offset": 0x100},
    ])
    with running(site) as (sim, edge), listening(site) as listener:
        soc0 = edge.read("hv0/Soc", timeout=5.0).value
        soc1 = edge.read("hv1/Soc", timeout=5.0).value
        m0, m1 = sim.simulators["hv0"].model, sim.simulators["hv1"].model
        result = edge.write("hv1/SetChargeCurrent", 25.0, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result
        assert edge.wait_until(lambda s: s.value("hv1/ChargeMaxCurrent") == 25.0, 5.0)
        ids = {m.arbitration_id for m in heard(listener, 0.3)}
        charge0 = edge.snapshot().value("hv0/ChargeMaxCurrent")
    assert abs(num(soc0) - m0.soc) < 0.05
    assert abs(num(soc1) - m1.soc) < 0.05
    assert abs(num(soc0) - num(soc1)) > 5.0
    assert charge0 == 100.0 and m0.charge_max_current == 100.0
    assert 0x5B0 in ids and 0x4B0 not in ids
    assert {0x4A0, 0x5A0} <= ids


def test_silent_device_goes_stale_then_lost_and_refuses_writes() -> None:
    site = hv_site()
    with running(site) as (sim, edge), listening(site) as listener:
        states: list[object] = []
        edge.subscribe("hv/CommState", lambda _address, reading: states.append(reading.value))
        edge.read("hv/Soc", timeout=5.0)
        assert edge.wait_until(lambda s: s.value("hv/CommState") == CommState.OK, 5.0)
        sim.inject("hv", "silent")
        assert edge.wait_until(lambda s: s.value("hv/CommState") == CommState.LOST, 5.0)
        snap = edge.snapshot()
        heard(listener, 0.05)
        result = edge.write("hv/SetChargeCurrent", 10.0, timeout=1.0)
        sent = [m for m in heard(listener, 0.3) if m.arbitration_id == 0x4B0]
    assert CommState.STALE in states
    assert states.index(CommState.STALE) < states.index(CommState.LOST)
    for name in ("Soc", "Voltage", "ChargeMaxCurrent", "Alarm/OverTemperature"):
        assert snap[f"hv/{name}"].quality is Quality.STALE, name
    assert snap.value("hv/Alarm/CommLoss") == 2
    assert result.status is CommandStatus.REJECTED
    assert "LOST" in result.detail
    assert sent == []


def test_overtemp_fault_raises_over_temperature_alarm() -> None:
    with running(hv_site()) as (sim, edge):
        assert edge.read("hv/Alarm/OverTemperature", timeout=5.0).value == 0
        sim.inject("hv", "overtemp")
        assert edge.wait_until(lambda s: s.value("hv/Alarm/OverTemperature") == 2, 5.0)
        temperature = edge.read("hv/Temperature", timeout=2.0).value
    assert num(temperature) >= 55.0
