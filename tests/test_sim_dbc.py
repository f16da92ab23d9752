"""The DBC-profile simulator on a virtual bus: its frames, commands, echoes, watchdog and faults."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from emsbms.errors import ProfileError
from emsbms.profile.loader import load_profile, parse_profile
from emsbms.protocols.base import DeviceConfig
from emsbms.sim.battery import BatteryModel
from emsbms.sim.dbc_sim import DbcSimulator
from emsbms.site import BusConfig

ROOT = Path(__file__).resolve().parents[1]
HV_DB: Any = cantools.database.load_file(str(ROOT / "dbc" / "acme_hv.dbc"))
PYLON_DB: Any = cantools.database.load_file(str(ROOT / "dbc" / "pylon_lv.dbc"))


class FrozenModel(BatteryModel):
    """A battery model that holds still, so frames can be compared with exact values."""

    def step(self, dt: float) -> None:
        pass


@contextmanager
def simulated(
    profile: str, channel: str, model: BatteryModel, id_offset: int = 0
) -> Iterator[tuple[DbcSimulator, can.BusABC]]:
    """A started simulator and a listener bus on the same virtual channel."""
    sim = DbcSimulator(
        DeviceConfig("bms", "can0", profile, id_offset=id_offset),
        load_profile(profile),
        BusConfig("can0", "virtual", channel),
        model,
    )
    listener = can.Bus(interface="virtual", channel=channel)
    sim.start()
    try:
        yield sim, listener
    finally:
        sim.stop()
        listener.shutdown()


def wait_frame(
    bus: can.BusABC, can_id: int, accept: Callable[[can.Message], bool] = lambda m: True, timeout: float = 5.0
) -> can.Message:
    """The first frame with `can_id` that `accept` likes; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        m = bus.recv(0.05)
        if m is not None and m.arbitration_id == can_id:
            last = m
            if accept(m):
                return m
    pytest.fail(f"no acceptable frame 0x{can_id:X} within {timeout} s; last seen: {last}")


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    assert predicate()


def decode(db: Any, frame: can.Message) -> dict[str, Any]:
    result: dict[str, Any] = db.decode_message(frame.arbitration_id, frame.data, decode_choices=False)
    return result


def hv_model() -> FrozenModel:
    return FrozenModel(soc=63.37, current=-12.3, temperature=31.4)


# -- acme-hv frames -----------------------------------------------------------------------------


def test_hv_frames_decode_to_model_values(channel: Callable[..., str]) -> None:
    model = hv_model()
    with simulated("acme-hv", channel(), model) as (_, bus):
        frames = {i: wait_frame(bus, i) for i in (0x4A0, 0x4A1, 0x4A2, 0x4A4, 0x4A5)}
    ch = model.channels()
    assert model.cells == 96  # options.simulator made it an HV pack
    expected = {  # channel: (id, signal, resolution), written from the DBC by hand
        "Voltage": (0x4A0, "PackVoltage", 0.1), "Current": (0x4A0, "PackCurrent", 0.1),
        "Soc": (0x4A0, "PackSoc", 0.01), "Temperature": (0x4A0, "PackTemperature", 0.1),
        "ChargeMaxVoltage": (0x4A1, "ChargeVoltageLimit", 0.1),
        "DischargeMinVoltage": (0x4A1, "DischargeVoltageLimit", 0.1),
        "ChargeMaxCurrent": (0x4A1, "ChargeCurrentLimit", 0.1),
        "DischargeMaxCurrent": (0x4A1, "DischargeCurrentLimit", 0.1),
        "MinCellVoltage": (0x4A2, "MinCellVoltage", 0.001), "MaxCellVoltage": (0x4A2, "MaxCellVoltage", 0.001),
        "MinCellTemperature": (0x4A2, "MinCellTemperature", 0.1),
        "MaxCellTemperature": (0x4A2, "MaxCellTemperature", 0.1),
        "Soh": (0x4A5, "PackSoh", 0.5), "Capacity": (0x4A5, "NominalCapacity", 0.1),
        "AllowCharge": (0x4A4, "ChargeAllowed", 1), "AllowDischarge": (0x4A4, "DischargeAllowed", 1),
    }
    for name, (can_id, signal, resolution) in expected.items():
        got = decode(HV_DB, frames[can_id])[signal]
        assert abs(got - ch[name]) <= resolution / 2 + 1e-9, (name, got, ch[name])
    assert decode(HV_DB, frames[0x4A0])["PackCurrent"] == pytest.approx(-12.3)  # negative = discharging


def test_hv_frames_match_hand_computed_bytes(channel: Callable[..., str]) -> None:
    model = hv_model()
    with simulated("acme-hv", channel(), model) as (_, bus):
        limits = wait_frame(bus, 0x4A1)
        pack = wait_frame(bus, 0x4A0)
        status = wait_frame(bus, 0x4A4)
    # 340.8 V, 268.8 V, 100 A, 150 A at 0.1 per bit, little-endian
    assert bytes(limits.data) == struct.pack("<HHHH", 3408, 2688, 1000, 1500)
    assert bytes(pack.data) == struct.pack("<HhHh", round(model.voltage * 10), -123, 6337, 314)
    # charge + discharge allowed; echoes idle: balancing 3, reset 0, both currents 0xFFFF
    assert bytes(status.data) == bytes([0x03, 0x03]) + struct.pack("<HH", 0xFFFF, 0xFFFF)


def test_hv_alarm_levels_are_two_bit_fields(channel: Callable[..., str]) -> None:
    model = hv_model()
    with simulated("acme-hv", channel(), model) as (_, bus):
        assert bytes(wait_frame(bus, 0x4A3).data) == b"\x00\x00"
        model.faults.add("OverTemperature")  # level 2 in bits 4-5
        wait_frame(bus, 0x4A3, lambda m: bytes(m.data) == b"\x20\x00")
        model.faults.clear()
        model.temperature = 50.0  # level 1 (warning)
        wait_frame(bus, 0x4A3, lambda m: bytes(m.data) == b"\x10\x00")


# -- commands, echoes, watchdog -----------------------------------------------------------------


def test_setpoint_applied_echoed_and_reverted_by_watchdog(channel: Callable[..., str]) -> None:
    model = hv_model()
    with simulated("acme-hv", channel(), model) as (_, bus):
        setpoint = can.Message(arbitration_id=0x4B0, data=struct.pack("<HH", 300, 0xFFFF), is_extended_id=False)
        bus.send(setpoint)
        status = wait_frame(bus, 0x4A4, lambda m: decode(HV_DB, m)["ChargeCurrentRequestEcho"] == 30.0)
        assert decode(HV_DB, status)["DischargeCurrentRequestEcho"] == 6553.5  # idle: no request
        assert model.charge_max_current == 30.0
        assert model.discharge_max_current == 150.0
        wait_frame(bus, 0x4A1, lambda m: decode(HV_DB, m)["ChargeCurrentLimit"] == 30.0)
        for _ in range(3):  # keep it alive for a while, then stop sending
            time.sleep(0.05)
            bus.send(setpoint)
        last_sent = time.monotonic()
        wait_frame(bus, 0x4A4, lambda m: decode(HV_DB, m)["ChargeCurrentRequestEcho"] == 6553.5)
        reverted_after = time.monotonic() - last_sent
        assert model.charge_max_current == 100.0  # the default from options.simulator
    assert reverted_after >= 0.29  # never before 3 periods of 100 ms without a setpoint


def test_control_commands_apply_and_echo(channel: Callable[..., str]) -> None:
    model = hv_model()
    with simulated("acme-hv", channel(), model) as (_, bus):
        bus.send(can.Message(arbitration_id=0x4B1, data=b"\x01", is_extended_id=False))  # enable balancing
        status = wait_frame(bus, 0x4A4, lambda m: decode(HV_DB, m)["BalancingRequestEcho"] == 1)
        assert model.balancing is True
        wait_frame(bus, 0x4A4, lambda m: decode(HV_DB, m)["BalancingActive"] == 1)
        model.faults.add("SystemError")
        wait_frame(bus, 0x4A3, lambda m: bytes(m.data) == b"\x00\x80")  # SystemError level 2, bits 14-15
        # fault reset with "no request" (3) for balancing: faults clear, balancing stays on
        bus.send(can.Message(arbitration_id=0x4B1, data=b"\x07", is_extended_id=False))
        status = wait_frame(bus, 0x4A4, lambda m: decode(HV_DB, m)["FaultResetEcho"] == 1)
        assert decode(HV_DB, status)["BalancingRequestEcho"] == 3
        assert model.faults == set()
        assert model.balancing is True
        wait_frame(bus, 0x4A3, lambda m: bytes(m.data) == b"\x00\x00")


def test_offset_device_sends_and_listens_on_shifted_ids(channel: Callable[..., str]) -> None:
    model = hv_model()
    with simulated("acme-hv", channel(), model, id_offset=0x100) as (_, bus):
        frame = wait_frame(bus, 0x5A1)
        assert bytes(frame.data) == struct.pack("<HHHH", 3408, 2688, 1000, 1500)
        bus.send(can.Message(arbitration_id=0x4B0, data=struct.pack("<HH", 200, 200), is_extended_id=False))
        bus.send(can.Message(arbitration_id=0x5B0, data=struct.pack("<HH", 250, 0xFFFF), is_extended_id=False))
        status = HV_DB.get_message_by_name("ACME_Status")
        wait_frame(bus, 0x5A4, lambda m: status.decode(m.data, decode_choices=False)["ChargeCurrentRequestEcho"] == 25)
        assert model.charge_max_current == 25.0  # the un-offset 0x4B0 (20 A) was not for it


# -- faults -------------------------------------------------------------------------------------


def test_silent_fault_stops_frames_and_answers(channel: Callable[..., str]) -> None:
    model = hv_model()
    with simulated("acme-hv", channel(), model) as (sim, bus):
        wait_frame(bus, 0x4A0)
        sim.inject("silent")
        time.sleep(0.15)  # let frames already on their way arrive
        while bus.recv(0.0) is not None:
            pass
        bus.send(can.Message(arbitration_id=0x4B0, data=struct.pack("<HH", 300, 0xFFFF), is_extended_id=False))
        heard = [m for m in iter(lambda: bus.recv(0.4), None)]
        assert heard == []
        assert model.charge_max_current == 100.0  # the setpoint was not answered
        sim.clear("silent")
        wait_frame(bus, 0x4A0)


def test_overtemp_fault_raises_over_temperature_alarm(channel: Callable[..., str]) -> None:
    with simulated("acme-hv", channel(), BatteryModel()) as (sim, bus):
        sim.inject("overtemp")
        frame = wait_frame(bus, 0x4A3, lambda m: bytes(m.data) == b"\x20\x00")
        assert bytes(frame.data) == b"\x20\x00"
        pack = wait_frame(bus, 0x4A0)
        assert decode(HV_DB, pack)["PackTemperature"] >= 55.0
        assert sim.model.alarm_level("OverTemperature") == 2


# -- other profiles -----------------------------------------------------------------------------


def test_bytemap_frames_little_big_endian_and_signed(channel: Callable[..., str]) -> None:
    model = FrozenModel(soc=63.37, current=-12.3, temperature=-5.0)
    with simulated("acme-lv-bytemap", channel(), model) as (_, bus):
        limits = wait_frame(bus, 0x611)
        pack = wait_frame(bus, 0x610)
        cells = wait_frame(bus, 0x612)
    # 56.8 V big-endian (0x0238), then 50 A, 80 A, 44.8 V little-endian at 0.1 per bit
    assert bytes(limits.data) == b"\x02\x38\xf4\x01\x20\x03\xc0\x01"
    volts = round(model.voltage * 100)
    # voltage u16 0.01 V, current s16 -123 (0xFF85), SoC 63 %, SoH 98 %, -5 degC (0xFB), flags 0b011
    assert bytes(pack.data) == struct.pack("<Hh", volts, -123) + bytes([63, 98, 0xFB, 0x03])
    lo, hi = round((model.cell_voltage - 0.01) * 1000), round((model.cell_voltage + 0.01) * 1000)
    assert bytes(cells.data) == struct.pack("<HHbb", lo, hi, -6, -4) + b"\x00\x00"


def test_bytemap_command_is_applied(channel: Callable[..., str]) -> None:
    model = FrozenModel()
    with simulated("acme-lv-bytemap", channel(), model) as (_, bus):
        bus.send(can.Message(arbitration_id=0x618, data=struct.pack("<H", 225), is_extended_id=False))
        wait_frame(bus, 0x611, lambda m: bytes(m.data)[2:4] == struct.pack("<H", 225))
        assert model.charge_max_current == 22.5


def test_pylon_keeps_sending_without_keepalive(channel: Callable[..., str]) -> None:
    model = FrozenModel(soc=63.0, temperature=31.4)
    model.faults.add("OverTemperature")
    with simulated("pylon-lv", channel(), model) as (sim, bus):
        frames = {i: wait_frame(bus, i) for i in (0x351, 0x355, 0x356, 0x359, 0x373, 0x379)}
        # a second round of frames arrives although no 0x305 keepalive was ever sent
        wait_frame(bus, 0x355, timeout=3.0)
        age = sim.keepalive_age()
        assert age is not None and age >= 0.9
        bus.send(can.Message(arbitration_id=0x305, data=bytes(8), is_extended_id=False))
        wait_until(lambda: (sim.keepalive_age() or 99.0) < 0.5)
    assert bytes(frames[0x351].data) == struct.pack("<HhhH", 568, 500, 800, 448)
    assert decode(PYLON_DB, frames[0x355])["SoC"] == 63
    assert decode(PYLON_DB, frames[0x356])["BatteryTemperature"] == pytest.approx(31.4)
    # cell temperatures in kelvin: 29.9 and 32.9 degC
    assert decode(PYLON_DB, frames[0x373])["MinCellTemperature"] == 303
    assert decode(PYLON_DB, frames[0x373])["MaxCellTemperature"] == 306
    assert bytes(frames[0x359].data)[:4] == b"\x08\x00\x00\x00"  # protection bit 3: over-temperature
    assert decode(PYLON_DB, frames[0x379])["InstalledCapacity"] == 100


def test_stop_is_prompt(channel: Callable[..., str]) -> None:
    name = channel()
    sim = DbcSimulator(DeviceConfig("bms", "can0", "acme-hv"), load_profile("acme-hv"),
                       BusConfig("can0", "virtual", name), BatteryModel())
    sim.start()
    thread = sim._thread
    assert thread is not None and thread.is_alive()
    started = time.monotonic()
    sim.stop()
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()
    listener = can.Bus(interface="virtual", channel=name)
    try:
        assert listener.recv(0.3) is None
    finally:
        listener.shutdown()


def test_unknown_simulator_option_is_named() -> None:
    import json

    data = json.loads((ROOT / "profiles" / "acme-hv.json").read_text(encoding="utf-8"))
    data["options"]["simulator"]["volts"] = 400
    profile = parse_profile(data, ROOT / "profiles" / "acme-hv.json")
    with pytest.raises(ProfileError, match=r"options\.simulator\.volts: unknown; expected one of cells"):
        DbcSimulator(DeviceConfig("bms", "can0", "acme-hv"), profile, BusConfig("can0", "virtual", "x"),
                     BatteryModel())
