"""The design's identical-ID case: three CiA 418 BMS, all node 1 (TPDO1 on 0x181), on can0, can1 and can2."""

from __future__ import annotations

import can
import pytest

from emsbms import CommandStatus, Edge
from emsbms.sim.runner import Simulation
from tests.conftest import virtual_site
from tests.conftest import wait as wait_for

BUSES = ["can0", "can1", "can2"]



def drain(bus: can.BusABC) -> list[can.Message]:
    frames = []
    while (m := bus.recv(0)) is not None:
        frames.append(m)
    return frames


def carrying(frames: list[can.Message], raw: int) -> tuple[list[can.Message], list[can.Message]]:
    """(SDO downloads of 0x4807 = raw to node 1, RPDO1 frames of node 1 whose 0x4807 entry is raw)."""
    value = raw.to_bytes(2, "little")
    sdo = [m for m in frames if m.arbitration_id == 0x601 and m.data[0] & 0xE0 == 0x20
           and bytes(m.data[1:4]) == b"\x07\x48\x00" and bytes(m.data[4:6]) == value]
    rpdo = [m for m in frames if m.arbitration_id == 0x201 and bytes(m.data[2:4]) == value]
    return sdo, rpdo


def test_three_identical_nodes_on_three_buses_keep_their_values_and_commands_apart() -> None:
    site = virtual_site(BUSES, [
        {"name": f"bms_{i}", "bus": bus, "profile": "cia418-bms", "node_id": 1} for i, bus in enumerate(BUSES)])
    listeners = [can.Bus(interface="virtual", channel=site.bus(b).channel) for b in BUSES]
    try:
        with Simulation(site) as simulation, Edge(site) as edge:
            sims = [simulation.simulators[f"bms_{i}"] for i in range(3)]
            socs = [edge.read(f"bms_{i}/Soc", timeout=5).value for i in range(3)]
            for i in range(3):
                assert socs[i] == pytest.approx(sims[i].model.soc, abs=1)
                edge.read(f"bms_{i}/Capacity", timeout=5)  # configured: the workers are idle now
            assert len({round(float(s)) for s in socs}) == 3  # each its own values (SoC 40, 57, 74 %)
            for target in range(3):
                for bus in listeners:
                    drain(bus)
                amps = 40.0 + target
                result = edge.write(f"bms_{target}/SetDischargeCurrent", amps, timeout=3)
                assert result.status is CommandStatus.ACKED, result.detail
                seen: list[list[can.Message]] = [[], [], []]

                def repeated(t: int = target, seen: list[list[can.Message]] = seen, raw: int = int(amps * 10)) -> bool:
                    for i, bus in enumerate(listeners):
                        seen[i] += drain(bus)
                    return bool(carrying(seen[t], raw)[1])

                assert wait_for(repeated), "no RPDO1 repeat of the setpoint"
                for i in range(3):
                    sdo, rpdo = carrying(seen[i], int(amps * 10))
                    assert (len(sdo), bool(rpdo)) == ((1, True) if i == target else (0, False)), f"bms_{target}"
                assert [s.model.discharge_max_current for s in sims][target] == amps
                assert all(s.model.discharge_max_current != amps for i, s in enumerate(sims) if i != target)
            assert wait_for(lambda: [edge.snapshot().value(f"bms_{i}/DischargeMaxCurrent") for i in range(3)]
                            == [40.0, 41.0, 42.0])
    finally:
        for bus in listeners:
            bus.shutdown()
