"""SocketCAN tier: the emsbms CLI against can-utils on vcan (decoding cansend frames, encoding seen by candump)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.socketcan.support import Candump, CansendLoop, Simulation, Vcans, emsbms, write_site

pytestmark = pytest.mark.socketcan

# Frames as cansend writes them, with the values they carry, computed by hand from PROTOCOLS.md
# (little-endian; raw x scale + offset). Not from the DBC or the EDS.
DECODE_TABLE: list[tuple[str, str, dict[str, float]]] = [
    # Pylon LV 0x356: 0x146F = 5231 x 0.01 V; 0xFF83 = -125 x 0.1 A; 0x00EA = 234 x 0.1 degC
    ("lv", "356#6F1483FFEA00", {"pylon/Voltage": 52.31, "pylon/Current": -12.5, "pylon/Temperature": 23.4}),
    # 0x355 in its 4-byte form: SoC 0x004D = 77 %, SoH 0x0062 = 98 %
    ("lv", "355#4D006200", {"pylon/Soc": 77, "pylon/Soh": 98}),
    # 0x351: CVL 0x0238 = 568 x 0.1 V; CCL 0x03E8 = 1000 x 0.1 A; DCL 0xFA24 = -1500 x 0.1 A (as a
    # magnitude); DVL 0x01B8 = 440 x 0.1 V
    ("lv", "351#3802E80324FAB801", {"pylon/ChargeMaxVoltage": 56.8, "pylon/ChargeMaxCurrent": 100.0,
                                     "pylon/DischargeMaxCurrent": 150.0, "pylon/DischargeMinVoltage": 44.0}),
    # J1939 HVES1D1, PGN 0xF090, priority 3, source 0xF3: ID 3<<26 | 0xF090<<8 | 0xF3 = 0x0CF090F3.
    # 0x0BB8 = 3000 x 0.05 kW = 150 kW; 0x07D0 = 2000 x 0.05 kW; 0x32C8 = 13000 x 0.05 V;
    # 0x7B0C = 31500 x 0.05 - 1600 = -25 A
    ("hv", "0CF090F3#B80BD007C8320C7B", {"hvess/AvailableDischargePower": 150_000.0,
                                          "hvess/AvailableChargePower": 100_000.0,
                                          "hvess/Voltage": 650.0, "hvess/Current": -25.0}),
    # HVES1D2 0x0CF091F3: 0xC800 = 51200 x 0.0015625 % = 80 %; 0x0D54 = 3412 mV; 0x0D46 = 3398 mV
    ("hv", "0CF091F3#00C8540D460DF0FF", {"hvess/Soc": 80.0, "hvess/MaxCellVoltage": 3.412,
                                          "hvess/MinCellVoltage": 3.398}),
    # CANopen node 1: heartbeat 0x701, state 0x05 = operational. Not checked through `read`: the
    # adapter publishes NmtState UNKNOWN when it starts, and `read` returns the first value newer
    # than its own start, which can be that one (it happened in one of the first runs here).
    ("co", "701#05", {}),
    # TPDO1 0x181: 0x6010 0x00F2 = 242 / 8 degC; 0x6000 = 0x02; 0x6081 = 0x40 = 64 %;
    # 0x4804 0xFF33 = -205 x 0.1 A; 0x6070 0x00C8 = 200 / 16 A
    ("co", "181#F200024033FFC800", {"bms/Temperature": 30.25, "bms/BatteryStatus": 2, "bms/Soc": 64,
                                     "bms/Current": -20.5, "bms/ChargeCurrentRequested": 12.5}),
    # TPDO2 0x281: 0x6060 0x0000D000 = 53248 / 1024 V = 52 V; 0x480A 0x0CB2 = 3250 mV; 0x480B 0x0CEE = 3310 mV
    ("co", "281#00D00000B20CEE0C", {"bms/Voltage": 52.0, "bms/MinCellVoltage": 3.25, "bms/MaxCellVoltage": 3.31}),
]


def test_read_decodes_frames_sent_by_cansend(
    tmp_path: Path, vcans: Vcans, cansend_loop: Callable[..., CansendLoop]
) -> None:
    lv, hv, co = vcans.add(3)
    ifaces = {"lv": lv, "hv": hv, "co": co}
    site = write_site(tmp_path / "decode.toml", ifaces, [
        {"name": "pylon", "bus": "lv", "profile": "pylon-lv"},
        {"name": "hvess", "bus": "hv", "profile": "j1939-hvess", "source_address": 0xF3},
        # no SDO server answers on this bus: decode the TPDOs by the EDS's default mapping
        {"name": "bms", "bus": "co", "profile": "cia418-bms", "node_id": 1, "options": {"pdo_mapping": "eds"}},
    ])
    cansend_loop([(ifaces[bus], frame) for bus, frame, _ in DECODE_TABLE], period_s=0.1)
    expected = {a: v for _, _, values in DECODE_TABLE for a, v in values.items()}

    done = emsbms("--site", str(site), "read", *expected, "--json", "--timeout", "60")

    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    for address, value in expected.items():
        assert got[address] is not None, f"{address}: no value"
        assert got[address]["quality"] == "ok", address
        assert got[address]["value"] == pytest.approx(value, abs=1e-9), address


def test_write_puts_the_profile_frame_on_the_bus(
    tmp_path: Path, simulation: Simulation, candump: Callable[[list[str]], Candump]
) -> None:
    site = write_site(tmp_path / "write.toml", {"hv": simulation.hv_iface},
                      [{"name": "hv_0", "bus": "hv", "profile": "acme-hv"}])
    dump = candump([simulation.hv_iface])

    done = emsbms("--site", str(site), "write", "hv_0/SetChargeCurrent", "50", "--json", "--timeout", "60")
    frames = dump.stop()

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "acked", result
    # EMS_Setpoints 0x4B0 (acme-hv): ChargeCurrentRequest 50 A / 0.1 = 500 = 0x01F4, little-endian;
    # DischargeCurrentRequest idle 0xFFFF ("no request")
    setpoints = [f for f in frames if f.can_id == 0x4B0]
    assert setpoints, f"no 0x4B0 frame on {simulation.hv_iface}; saw {sorted({hex(f.can_id) for f in frames})}"
    assert {f.data for f in setpoints} == {bytes.fromhex("F401FFFF")}
    assert not any(f.extended for f in setpoints)
    # the simulated BMS echoes the raw request in ACME_Status 0x4A4 bytes 2-3
    first = setpoints[0].timestamp_us
    echoes = [f for f in frames if f.can_id == 0x4A4 and f.timestamp_us > first]
    assert any(f.data[2:4] == bytes.fromhex("F401") for f in echoes), [f.data.hex() for f in echoes]
