"""REAL32 and REAL64 objects as command targets: an SDO download of the IEEE 754 bytes, acked by a LocalNode."""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import pytest

from emsbms import CommandStatus, CommState, Edge, ProfileError
from emsbms.profile.loader import load_profile
from emsbms.resources import data_dir
from emsbms.sim.canopen_sim import CanopenSimulator
from emsbms.sim.runner import Simulation
from tests.conftest import virtual_site
from tests.conftest import wait as wait_for

REAL_OBJECTS = """
[4811]
ParameterName=Charge power limit
ObjectType=0x7
DataType=0x0008
AccessType=rw
DefaultValue=0
PDOMapping=0
LowLimit=0
HighLimit=10000
Unit=W

[4812]
ParameterName=Energy target
ObjectType=0x7
DataType=0x0011
AccessType=rw
DefaultValue=0
PDOMapping=0
"""


def real_profile(folder: Path, edit: Any = None) -> Path:
    """cia418-bms with 0x4811 REAL32 and 0x4812 REAL64 added to its EDS and written by two commands."""
    eds = (data_dir("eds") / "cia418_bms.eds").read_text(encoding="utf-8")
    eds = eds.replace("SupportedObjects=14\n", "SupportedObjects=16\n").replace(
        "14=0x4810\n", "14=0x4810\n15=0x4811\n16=0x4812\n")
    (folder / "real.eds").write_text(eds + REAL_OBJECTS, encoding="utf-8")
    data = json.loads((data_dir("profiles") / "cia418-bms.json").read_text(encoding="utf-8"))
    data = copy.deepcopy(data)
    data["name"], data["source"] = "cia418-real", {"eds": "real.eds"}
    data["commands"]["SetChargePower"] = {"od": "0x4811", "unit": "W", "min": 0, "max": 5000, "ack": {"type": "sdo"}}
    data["commands"]["SetEnergyTarget"] = {"od": "0x4812", "unit": "kWh", "min": -1e6, "max": 1e6,
                                           "ack": {"type": "sdo"}}
    if edit is not None:
        edit(data)
    path = folder / "cia418-real.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


@contextmanager
def running(profile: Path) -> Iterator[tuple[CanopenSimulator, Edge, can.BusABC, list[tuple[int, int, bytes]]]]:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": str(profile), "node_id": 1}])
    with can.Bus(interface="virtual", channel=site.bus("can0").channel) as listener, Simulation(site) as simulation, \
            Edge(site) as edge:
        sim = simulation.simulators["bms_0"]
        assert isinstance(sim, CanopenSimulator) and sim.node is not None
        written: list[tuple[int, int, bytes]] = []

        def record(index: int, subindex: int, od: object, data: bytes, **_: Any) -> None:
            written.append((index, subindex, bytes(data)))

        untyped: Any = sim.node  # the library's LocalNode; its callback registration is untyped
        untyped.add_write_callback(record)
        edge.read("bms_0/VendorId", timeout=5)  # configured
        assert wait_for(lambda: edge.snapshot().value("bms_0/CommState") is CommState.OK)  # commands need OK
        yield sim, edge, listener, written


def sdo_requests(listener: can.BusABC) -> list[bytes]:
    """The SDO requests to node 1 heard so far (the virtual bus delivers a frame as it is sent)."""
    out = []
    while (msg := listener.recv(0)) is not None:
        if msg.arbitration_id == 0x601:
            out.append(bytes(msg.data))
    return out


def test_real32_and_real64_commands_are_sdo_downloads_of_ieee754_bytes(tmp_path: Path) -> None:
    with running(real_profile(tmp_path)) as (sim, edge, listener, written):
        sdo_requests(listener)  # the configuration's uploads
        result = edge.write("bms_0/SetChargePower", 1234.5, timeout=3)
        assert result.status is CommandStatus.ACKED, result.detail
        # 1234.5 = 0x449A5000 (REAL32), little-endian; expedited download of 4 bytes: 0x23
        assert written == [(0x4811, 0, bytes.fromhex("00509a44"))]
        assert sdo_requests(listener) == [bytes.fromhex("2311480000509a44")]
        assert sim.node is not None and bytes(sim.node.data_store[0x4811][0]) == struct.pack("<f", 1234.5)
        big = edge.write("bms_0/SetEnergyTarget", -0.1, timeout=3)  # REAL64: 8 bytes, a segmented download
        assert big.status is CommandStatus.ACKED, big.detail
        assert written[1] == (0x4812, 0, bytes.fromhex("9a9999999999b9bf"))  # -0.1 as a double
        assert written[1][2] == struct.pack("<d", -0.1)


def test_out_of_range_and_non_finite_real_values_are_refused_before_anything_is_sent(tmp_path: Path) -> None:
    with running(real_profile(tmp_path)) as (sim, edge, listener, written):
        sdo_requests(listener)
        too_high = edge.write("bms_0/SetChargePower", 5000.5, timeout=3)
        assert too_high.status is CommandStatus.REJECTED
        assert too_high.detail == "bms_0/SetChargePower = 5000.5 W is above the maximum 5000.0 W"
        nan = edge.write("bms_0/SetEnergyTarget", float("nan"), timeout=3)
        assert nan.status is CommandStatus.REJECTED
        assert nan.detail == "bms_0/SetEnergyTarget: expected a finite number, found nan; nothing sent"
        low = edge.write("bms_0/SetEnergyTarget", -2e6, timeout=3)
        assert low.status is CommandStatus.REJECTED
        assert low.detail == "bms_0/SetEnergyTarget = -2000000.0 kWh is below the minimum -1000000.0 kWh"
        assert sdo_requests(listener) == [] and written == []
        assert sim.node is not None and 0x4811 not in sim.node.data_store  # still the EDS default


def test_a_real_command_beyond_the_eds_limits_or_with_a_factor_is_refused_at_load(tmp_path: Path) -> None:
    def too_high(data: dict[str, Any]) -> None:
        data["commands"]["SetChargePower"]["max"] = 20000

    with pytest.raises(ProfileError) as e:
        load_profile(real_profile(tmp_path, too_high))
    assert str(e.value) == ("profile cia418-real: commands.SetChargePower.max 20000 is above 0x4811's highest value"
                            " 10000 W in eds/real.eds")

    def huge(data: dict[str, Any]) -> None:
        data["commands"]["SetChargePower"]["od"] = "0x4812"
        data["commands"]["SetChargePower"]["max"] = 1e300

    assert load_profile(real_profile(tmp_path, huge)).model.commands["SetChargePower"].max == 1e300  # REAL64 holds it
    path = real_profile(tmp_path)
    (tmp_path / "real.eds").write_text((tmp_path / "real.eds").read_text().replace(
        "HighLimit=10000\nUnit=W", "HighLimit=10000\nFactor=0.1\nUnit=W"), encoding="utf-8")
    with pytest.raises(ProfileError, match=r"0x4811 is REAL32 with Factor 0.1 in eds/real.eds; expected no Factor"):
        load_profile(path)
