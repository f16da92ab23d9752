"""The DBC adapter without a bus: hand-computed frames in, channel samples out."""

from __future__ import annotations

import can
import pytest

from emsbms import CommandRejected, load_profile
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.dbc import DbcAdapter
from emsbms.types import AlarmLevel, CommState, Quality

T0 = 1_800_000_000_000_000  # µs


def frame(can_id: int, data: bytes, t_us: int = T0) -> can.Message:
    return can.Message(arbitration_id=can_id, data=data, is_extended_id=False, timestamp=t_us / 1e6)


@pytest.fixture
def adapter() -> DbcAdapter:
    a = DbcAdapter(DeviceConfig("bms_0", "can0", "pylon-lv"), load_profile("pylon-lv"))
    a.start(T0)
    return a


def values(out: object) -> dict[str, object]:
    return {s.address: s.value for s in out.samples}  # type: ignore[attr-defined]


def test_limits_frame_with_sma_dvl(adapter: DbcAdapter) -> None:
    # CVL 56.8 V = 568 = 0x0238; CCL 50.0 A = 500 = 0x01F4; DCL -80.0 A = -800 = 0xFCE0 (sign quirk);
    # DVL 44.8 V = 448 = 0x01C0
    out = adapter.on_frame(frame(0x351, bytes.fromhex("3802f401e0fcc001")), T0)
    v = values(out)
    assert v["bms_0/ChargeMaxVoltage"] == pytest.approx(56.8)
    assert v["bms_0/ChargeMaxCurrent"] == pytest.approx(50.0)
    assert v["bms_0/DischargeMaxCurrent"] == pytest.approx(80.0)  # positive magnitude
    assert v["bms_0/DischargeMinVoltage"] == pytest.approx(44.8)


def test_short_pylontech_limits_frame_leaves_dvl_out(adapter: DbcAdapter) -> None:
    out = adapter.on_frame(frame(0x351, bytes.fromhex("3802f401e0fc")), T0)
    v = values(out)
    assert v["bms_0/ChargeMaxCurrent"] == pytest.approx(50.0)
    assert "bms_0/DischargeMinVoltage" not in v


def test_soc_soh_four_bytes(adapter: DbcAdapter) -> None:
    v = values(adapter.on_frame(frame(0x355, bytes([77, 0, 98, 0])), T0))
    assert v["bms_0/Soc"] == 77 and v["bms_0/Soh"] == 98


def test_cells_in_volts_and_celsius(adapter: DbcAdapter) -> None:
    # 3301 mV = 0x0CE5, 3342 mV = 0x0D0E, 296 K = 0x0128, 299 K = 0x012B
    v = values(adapter.on_frame(frame(0x373, bytes.fromhex("e50c0e0d28012b01")), T0))
    assert v["bms_0/MinCellVoltage"] == pytest.approx(3.301)
    assert v["bms_0/MaxCellVoltage"] == pytest.approx(3.342)
    assert v["bms_0/MinCellTemperature"] == pytest.approx(22.85)
    assert v["bms_0/MaxCellTemperature"] == pytest.approx(25.85)


def test_flags_and_alarm_levels(adapter: DbcAdapter) -> None:
    # 0x35C byte 0 = 0xC0: charge and discharge enabled
    v = values(adapter.on_frame(frame(0x35C, bytes([0xC0, 0x00])), T0))
    assert v == {"bms_0/AllowCharge": True, "bms_0/AllowDischarge": True, "bms_0/CommState": CommState.OK,
                 "bms_0/Alarm/CommLoss": AlarmLevel.OK}
    # protection byte 0 bit 3 (over-temperature), warning byte 2 bit 1 (over-voltage), 2 modules
    v = values(adapter.on_frame(frame(0x359, bytes([0x08, 0x00, 0x02, 0x00, 0x02, 0x50, 0x4E])), T0))
    assert v["bms_0/Alarm/OverTemperature"] is AlarmLevel.ALARM
    assert v["bms_0/Alarm/OverVoltage"] is AlarmLevel.WARNING
    assert v["bms_0/Alarm/UnderVoltage"] is AlarmLevel.OK
    assert v["bms_0/ModuleCount"] == 2


@pytest.mark.parametrize("data", [b"", bytes(3), bytes(5)])
def test_wrong_dlc_is_an_error_output_not_an_exception(adapter: DbcAdapter, data: bytes) -> None:
    out = adapter.on_frame(frame(0x351, data), T0)  # the profile's min_dlc 6 is strict; no max_dlc
    assert out is not None and out.samples == () and out.error is not None
    assert f"PYLON_Limits (0x351) DLC {len(data)}, expected at least 6" in out.error


def test_other_ids_and_extended_ids_are_not_mine(adapter: DbcAdapter) -> None:
    assert adapter.on_frame(frame(0x352, bytes(8)), T0) is None
    ext = can.Message(arbitration_id=0x351, data=bytes(8), is_extended_id=True)
    assert adapter.on_frame(ext, T0) is None


def test_id_offset_shifts_every_id() -> None:
    a = DbcAdapter(DeviceConfig("bms_9", "can0", "pylon-lv", id_offset=0x100), load_profile("pylon-lv"))
    assert a.on_frame(frame(0x355, bytes([50, 0, 90, 0])), T0) is None
    assert values(a.on_frame(frame(0x455, bytes([50, 0, 90, 0])), T0))["bms_9/Soc"] == 50
    keepalive = a.tick(T0).frames
    assert [f.arbitration_id for f in keepalive] == [0x405]


def test_keepalive_at_its_period(adapter: DbcAdapter) -> None:
    sent = [len(adapter.tick(T0 + i * 100_000).frames) for i in range(25)]  # 2.4 s in 100 ms ticks
    assert sent.count(1) == 3 and sent[0] == 1 and sent[10] == 1 and sent[20] == 1
    f = adapter.tick(T0 + 3_000_000).frames[0]
    assert (f.arbitration_id, bytes(f.data), f.is_extended_id) == (0x305, bytes(8), False)


def test_never_heard_device_is_lost_after_the_timeout(adapter: DbcAdapter) -> None:
    adapter.tick(T0 + 2_000_000)
    assert adapter.comm_state is CommState.WAITING
    adapter.tick(T0 + 5_100_000)
    assert adapter.comm_state is CommState.LOST


def test_supervision_stale_then_lost_then_recovered(adapter: DbcAdapter) -> None:
    for can_id, data in [(0x351, bytes(8)), (0x355, bytes(6)), (0x356, bytes(6)), (0x359, bytes(7)),
                         (0x35C, bytes(2)), (0x35E, bytes(8)), (0x372, bytes(8)), (0x373, bytes(8)),
                         (0x379, bytes(2))]:
        adapter.on_frame(frame(can_id, data), T0)
    assert adapter.comm_state is CommState.OK
    out = adapter.tick(T0 + 2_600_000)  # 2.6 periods: every message stale
    assert adapter.comm_state is CommState.STALE
    assert "bms_0/Soc" in out.stale and "bms_0/Voltage" in out.stale
    out = adapter.tick(T0 + 5_100_000)  # past the 5 s timeout
    assert adapter.comm_state is CommState.LOST
    assert values(out)["bms_0/Alarm/CommLoss"] is AlarmLevel.ALARM
    recovered = adapter.on_frame(frame(0x356, bytes(6), T0 + 6_000_000), T0 + 6_000_000)
    assert recovered is not None
    assert values(recovered)["bms_0/CommState"] is CommState.STALE  # the others are still missing
    assert all(s.quality is Quality.OK for s in recovered.samples)


def test_pylon_has_no_commands(adapter: DbcAdapter) -> None:
    with pytest.raises(CommandRejected, match="bms_0 has no command 'SetChargeCurrent'"):
        adapter.plan_command("SetChargeCurrent", 10, T0)


def test_a_cyclic_setpoint_carries_the_value_being_commanded_until_its_result() -> None:
    """acme-hv repeats EMS_Setpoints every 100 ms while a setpoint is active. A new value's echo must not
    be overwritten by the old value's repetition before the BMS reports it: the repetition carries the
    value in flight, and the old one again only if the new one failed."""
    from emsbms.types import CommandResult, CommandStatus

    profile = load_profile("acme-hv")
    a = DbcAdapter(DeviceConfig("hv_0", "can0", "acme-hv"), profile)
    a.start(T0)
    a.on_frame(frame(0x4A0, bytes(8)), T0)  # heard: the device is not LOST

    def repeated(now_us: int) -> float:
        [f] = [f for f in a.tick(now_us).frames if f.arbitration_id == 0x4B0]
        return float(profile.db.decode_message(0x4B0, f.data)["ChargeCurrentRequest"])

    first = a.plan_command("SetChargeCurrent", 42.5, T0)
    a.command_done(first, CommandResult("hv_0/SetChargeCurrent", 42.5, CommandStatus.ACKED), T0)
    assert repeated(T0 + 100_000) == 42.5
    second = a.plan_command("SetChargeCurrent", 12.5, T0 + 150_000)
    assert repeated(T0 + 200_000) == 12.5  # was 42.5: the BMS echoed 42.5 again and 12.5 timed out
    a.on_frame(frame(0x4A0, bytes(8), T0 + 900_000), T0 + 900_000)  # still heard: not LOST (1 s timeout)
    a.on_frame(frame(0x4A0, bytes(8), T0 + 1_800_000), T0 + 1_800_000)
    a.command_done(second, CommandResult("hv_0/SetChargeCurrent", 12.5, CommandStatus.TIMEOUT), T0 + 2_150_000)
    assert repeated(T0 + 2_200_000) == 42.5  # not acknowledged: the last acknowledged value again
    third = a.plan_command("SetChargeCurrent", 20.0, T0 + 2_250_000)
    a.command_done(third, CommandResult("hv_0/SetChargeCurrent", 20.0, CommandStatus.ACKED), T0 + 2_260_000)
    assert repeated(T0 + 2_400_000) == 20.0
