"""The CANopen adapter without a bus: hand-computed frames in, samples and frames out; profile checks."""

from __future__ import annotations

import copy
import json
from typing import Any

import can
import pytest

from emsbms import CommandRejected, ConfigError, ProfileError, load_profile
from emsbms.profile.loader import parse_profile
from emsbms.profile.models import Profile
from emsbms.protocols.base import DeviceConfig, Output
from emsbms.protocols.canopen import CanopenAdapter
from emsbms.protocols.canopen_codes import NmtState, abort_text, emcy_text, register_bits
from emsbms.protocols.canopen_od import IdentitySpec
from emsbms.protocols.canopen_services import identity_problems
from emsbms.resources import data_dir
from emsbms.types import AlarmLevel, CommandResult, CommandStatus, CommState, Quality

T0 = 1_800_000_000_000_000  # µs


def frame(can_id: int, hex_data: str, t_us: int = T0) -> can.Message:
    return can.Message(arbitration_id=can_id, data=bytes.fromhex(hex_data), is_extended_id=can_id > 0x7FF,
                       timestamp=t_us / 1e6)


def profile_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((data_dir("profiles") / "cia418-bms.json").read_text(encoding="utf-8"))
    return data


def variant(edit: Any) -> Profile:
    """The shipped profile with one edit applied (edit(data) mutates the JSON document)."""
    data = copy.deepcopy(profile_data())
    edit(data)
    return parse_profile(data)


def make(node_id: int = 1, profile: Profile | None = None, **options: Any) -> CanopenAdapter:
    options.setdefault("pdo_mapping", "eds")
    device = DeviceConfig("bms_0", "can0", "cia418-bms", node_id=node_id, options=options)
    adapter = CanopenAdapter(device, profile or load_profile("cia418-bms"))
    adapter.start(T0)
    return adapter


def values(out: Output | None) -> dict[str, object]:
    assert out is not None and out.error is None, out
    return {s.address: s.value for s in out.samples}


# -- TPDO decoding by the mapping (EDS default here), hand-computed frames --------------------------


def test_tpdo1_temperature_status_soc_current_request() -> None:
    # 0x6010 I16 1/8 °C: 25.5 °C = 204 = 0x00CC; 0x6000 = 0x01; 0x6081 SoC 77 = 0x4D;
    # 0x4804 I16 0.1 A: -12.3 A = -123 = 0xFF85; 0x6070 U16 1/16 A: 40 A = 640 = 0x0280
    v = values(make().on_frame(frame(0x181, "cc00014d85ff8002"), T0))
    assert v["bms_0/Temperature"] == 25.5
    assert v["bms_0/BatteryStatus"] == 1
    assert v["bms_0/Soc"] == 77.0
    assert v["bms_0/Current"] == pytest.approx(-12.3)
    assert v["bms_0/ChargeCurrentRequested"] == 40.0


def test_tpdo2_voltage_in_1024ths_and_cells_in_mv() -> None:
    # 0x6060 U32 1/1024 V: 53.25 V = 54528 = 0x0000D500; 0x480A 3310 mV = 0x0CEE; 0x480B 3345 mV = 0x0D11
    v = values(make().on_frame(frame(0x281, "00d50000ee0c110d"), T0))
    assert v["bms_0/Voltage"] == 53.25
    assert v["bms_0/MinCellVoltage"] == pytest.approx(3.310)
    assert v["bms_0/MaxCellVoltage"] == pytest.approx(3.345)


def test_tpdo3_limits_and_tpdo4_cells_flags() -> None:
    adapter = make()
    # CCL 50.0 A = 500 = 0x01F4; DCL 80.0 A = 0x0320; CVL 56.8 V = 568 = 0x0238; DVL 44.8 V = 448 = 0x01C0
    v = values(adapter.on_frame(frame(0x381, "f40120033802c001"), T0))
    assert v["bms_0/ChargeMaxCurrent"] == 50.0
    assert v["bms_0/DischargeMaxCurrent"] == 80.0
    assert v["bms_0/ChargeMaxVoltage"] == 56.8  # rounded: 568 * 0.1 is 56.800000000000004
    assert v["bms_0/DischargeMinVoltage"] == 44.8
    # min cell -5.5 °C = -55 = 0xFFC9; max 31.2 °C = 312 = 0x0138; SoH 97; balancing 1; charge 0; discharge 1
    v = values(adapter.on_frame(frame(0x481, "c9ff380161010001"), T0))
    assert v["bms_0/MinCellTemperature"] == -5.5
    assert v["bms_0/MaxCellTemperature"] == 31.2
    assert v["bms_0/Soh"] == 97.0
    assert v["bms_0/BalancingActive"] is True
    assert v["bms_0/AllowCharge"] is False
    assert v["bms_0/AllowDischarge"] is True


def test_node_id_and_bridge_offset_select_the_cob_ids() -> None:
    adapter = make(node_id=5)
    assert adapter.on_frame(frame(0x181, "cc00014d85ff8002"), T0) is None  # node 1's TPDO1
    assert values(adapter.on_frame(frame(0x185, "cc00014d85ff8002"), T0))["bms_0/Soc"] == 77.0
    bridged = CanopenAdapter(DeviceConfig("b", "can0", "cia418-bms", node_id=5, id_offset=0x10000,
                                          options={"pdo_mapping": "eds"}), load_profile("cia418-bms"))
    bridged.start(T0)
    assert bridged.on_frame(frame(0x185, "cc00014d85ff8002"), T0) is None
    assert values(bridged.on_frame(frame(0x10185, "cc00014d85ff8002"), T0))["b/Soc"] == 77.0


def test_wrong_tpdo_length_is_an_error_not_a_value() -> None:
    out = make().on_frame(frame(0x181, "cc00014d"), T0)
    assert out is not None and out.error is not None and "DLC 4, expected 8" in out.error
    assert not out.samples


def test_device_mapping_mode_decodes_nothing_until_the_mapping_is_read() -> None:
    adapter = make(pdo_mapping="device")
    out = adapter.on_frame(frame(0x181, "cc00014d85ff8002"), T0)
    assert out is not None and out.error is None and not [s for s in out.samples if s.address == "bms_0/Soc"]


# -- NMT and heartbeat supervision -------------------------------------------------------------------


def test_heartbeat_states_become_the_nmt_state_channel() -> None:
    adapter = make()
    assert values(adapter.on_frame(frame(0x701, "7f"), T0))["bms_0/NmtState"] is NmtState.PRE_OPERATIONAL
    assert values(adapter.on_frame(frame(0x701, "05", T0 + 1000), T0 + 1000))["bms_0/NmtState"] is NmtState.OPERATIONAL
    assert "bms_0/NmtState" not in values(adapter.on_frame(frame(0x701, "05", T0 + 2000), T0 + 2000))  # no change
    bad = adapter.on_frame(frame(0x701, "42", T0 + 3000), T0 + 3000)
    assert bad is not None and bad.error is not None and "0x42" in bad.error


def test_nmt_master_starts_the_node_and_restarts_it_when_pre_operational() -> None:
    device = DeviceConfig("bms_0", "can0", "cia418-bms", node_id=7, nmt_master=True,
                          options={"pdo_mapping": "eds"})
    adapter = CanopenAdapter(device, load_profile("cia418-bms"))
    start = adapter.start(T0)
    assert [(f.arbitration_id, bytes(f.data)) for f in start.frames] == [(0x000, b"\x01\x07")]
    adapter.on_frame(frame(0x707, "00", T0 + 1_000_000), T0 + 1_000_000)  # boot-up
    adapter.on_frame(frame(0x707, "7f", T0 + 1_100_000), T0 + 1_100_000)  # pre-operational
    frames = adapter.tick(T0 + 1_200_000).frames
    assert [(f.arbitration_id, bytes(f.data)) for f in frames] == [(0x000, b"\x01\x07")]
    assert not adapter.tick(T0 + 1_300_000).frames  # at most once a second
    adapter.on_frame(frame(0x707, "05", T0 + 1_400_000), T0 + 1_400_000)
    assert not adapter.tick(T0 + 2_000_000).frames


def test_without_nmt_master_the_edge_sends_no_nmt() -> None:
    adapter = make(node_id=7)
    adapter.on_frame(frame(0x707, "7f", T0 + 100_000), T0 + 100_000)
    assert not adapter.start(T0).frames
    assert not adapter.tick(T0 + 2_000_000).frames


def test_missed_heartbeat_loses_the_device_and_marks_every_value_stale() -> None:
    adapter = make(heartbeat_consumer_ms=400)
    adapter.on_frame(frame(0x181, "cc00014d85ff8002", T0), T0)
    adapter.on_frame(frame(0x701, "05", T0), T0)
    adapter.tick(T0 + 399_000)
    assert adapter.comm_state is not CommState.LOST
    out = adapter.tick(T0 + 401_000)
    assert adapter.comm_state is CommState.LOST
    assert values(Output(samples=out.samples))["bms_0/Alarm/CommLoss"] is AlarmLevel.ALARM
    assert {"bms_0/Soc", "bms_0/Voltage", "bms_0/NmtState"} <= set(out.stale)
    back = values(adapter.on_frame(frame(0x701, "05", T0 + 600_000), T0 + 600_000))
    assert back["bms_0/CommState"] is not CommState.LOST
    assert back["bms_0/Alarm/CommLoss"] is not AlarmLevel.ALARM


def test_consumer_time_defaults_to_one_and_a_half_producer_times() -> None:
    adapter = make()
    assert adapter.consumer_us == 750_000  # the EDS 0x1017 default is 500 ms
    adapter.on_frame(frame(0x701, "05"), T0)
    adapter.tick(T0 + 740_000)
    assert adapter.comm_state is not CommState.LOST
    adapter.tick(T0 + 760_000)
    assert adapter.comm_state is CommState.LOST


# -- EMCY ---------------------------------------------------------------------------------------------


def test_emcy_raises_alarm_channels_with_levels_and_reset_clears_them() -> None:
    adapter = make()
    v = values(adapter.on_frame(frame(0x81, "1042080000000000"), T0))  # 0x4210, register 0x08
    assert v["bms_0/EmcyCode"] == 0x4210
    assert v["bms_0/EmcyRegister"] == 0x08
    assert v["bms_0/EmcyText"] == "excess device temperature"
    assert v["bms_0/Alarm/Emcy"] is AlarmLevel.ALARM
    assert v["bms_0/Alarm/OverTemperature"] is AlarmLevel.ALARM
    assert v["bms_0/Alarm/SystemError"] is AlarmLevel.OK
    v = values(adapter.on_frame(frame(0x81, "0050010000000000"), T0 + 1))  # 0x5000 as well
    assert v["bms_0/Alarm/SystemError"] is AlarmLevel.ALARM
    assert v["bms_0/Alarm/OverTemperature"] is AlarmLevel.ALARM  # still active
    v = values(adapter.on_frame(frame(0x81, "0000000000000000"), T0 + 2))  # error reset
    assert v["bms_0/EmcyCode"] == 0 and v["bms_0/EmcyText"] == ""
    assert v["bms_0/Alarm/Emcy"] is AlarmLevel.OK
    assert v["bms_0/Alarm/OverTemperature"] is AlarmLevel.OK
    assert v["bms_0/Alarm/SystemError"] is AlarmLevel.OK


def test_emcy_levels_come_from_the_options() -> None:
    adapter = make(emcy_level=1, emcy_alarms={"0xFF00-0xFFFF": {"alarm": "Vendor", "level": 1}})
    v = values(adapter.on_frame(frame(0x81, "0181800000000000"), T0))  # 0x8101 communication
    assert v["bms_0/Alarm/Emcy"] is AlarmLevel.WARNING
    v = values(adapter.on_frame(frame(0x81, "12ff800000000000"), T0))  # 0xFF12 device specific
    assert v["bms_0/Alarm/Vendor"] is AlarmLevel.WARNING
    assert v["bms_0/EmcyText"] == "device specific"


def test_code_tables() -> None:
    assert abort_text(0x06090031) == "0x06090031 value too high"
    assert abort_text(0x06010002) == "0x06010002 write to a read-only object"
    assert abort_text(0x06020000) == "0x06020000 object does not exist"
    assert abort_text(0x0609003A).startswith("0x0609003A ")
    assert emcy_text(0x8130) == "life guard or heartbeat error"
    assert emcy_text(0x4299) == "device temperature"  # class fallback
    assert register_bits(0x4210) == 0x09 and register_bits(0x2310) == 0x03 and register_bits(0) == 0


def test_identity_problems_name_the_field_expected_and_found() -> None:
    spec = IdentitySpec(device_profile=418, vendor_id=0x454D5342, product_code=0x418)
    good = {"device_type": 0x000201A2, "vendor_id": 0x454D5342, "product_code": 0x418, "revision": 7}
    assert identity_problems(spec, good) == []
    bad = identity_problems(spec, {**good, "product_code": 0x419, "device_type": 401})
    assert bad == ["device profile (0x1000) expected 418, found 401",
                   "product_code (0x1018 sub 2) expected 0x00000418, found 0x00000419"]


# -- commands -----------------------------------------------------------------------------------------


def test_command_limits_and_types_are_checked_before_anything_is_sent() -> None:
    adapter = make()
    with pytest.raises(CommandRejected, match="above the maximum 200"):
        adapter.plan_command("SetChargeCurrent", 200.1, T0)
    with pytest.raises(CommandRejected, match="expected 0 or 1"):
        adapter.plan_command("EnableBalancing", 0.5, T0)
    with pytest.raises(CommandRejected, match="known: EnableBalancing, ResetFaults"):
        adapter.plan_command("Connect", 1, T0)


def test_sdo_command_without_a_running_edge_is_rejected_not_pretended() -> None:
    plan = make().plan_command("SetChargeVoltage", 55.0, T0)
    assert plan.execute is not None and plan.frames == []
    status, detail = plan.execute(0.5)
    assert status is CommandStatus.REJECTED and "not running" in detail


def _rpdo_no_ack(data: dict[str, Any]) -> None:
    data["commands"]["SetChargeCurrent"]["ack"] = {"type": "none"}


def test_rpdo_setpoint_frame_hand_computed_and_repeated_until_its_ttl() -> None:
    adapter = make(profile=variant(_rpdo_no_ack))
    adapter.on_frame(frame(0x381, "f40120033802c001"), T0)  # the device reports DCL 80.0 A
    plan = adapter.plan_command("SetChargeCurrent", 60.0, T0)
    # RPDO1 0x201: 0x4806 60.0 A = 600 = 0x0258, then 0x4807 keeps the device's 80.0 A = 800 = 0x0320
    assert [(f.arbitration_id, bytes(f.data).hex()) for f in plan.frames] == [(0x201, "58022003")]
    assert "not acknowledged" in plan.detail
    adapter.command_done(plan, CommandResult("bms_0/SetChargeCurrent", 60.0, CommandStatus.SENT), T0)
    assert not adapter.tick(T0 + 400_000).frames
    repeat = adapter.tick(T0 + 500_000).frames
    assert [(f.arbitration_id, bytes(f.data).hex()) for f in repeat] == [(0x201, "58022003")]
    late = adapter.tick(T0 + 60_000_001)
    assert not late.frames and "bms_0/SetChargeCurrent" in late.stale


# -- profile checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["channels"]["Voltage"].update(od="0x6061"),
     "channels.Voltage.od '0x6061' not in eds/cia418_bms.eds"),
    (lambda d: d["channels"]["Capacity"].update(od="0x6020"), "is a record; name a sub-index: 0x6020sub0"),
    (lambda d: d["channels"]["Capacity"].update(od="0x6020sub9"), "sub-index 9 of 0x6020 not in"),
    (lambda d: d["channels"]["Soc"].update(od="0x4810"), "0x4810 is wo in eds/cia418_bms.eds; expected readable"),
    (lambda d: d["commands"]["ResetFaults"].update(od="0x6081"), "0x6081 is ro in eds/cia418_bms.eds"),
    (lambda d: d["commands"]["SetChargeCurrent"].update(max=250), "max 250 is above 0x4806's highest value 200"),
    (lambda d: d["commands"]["SetChargeVoltage"].update(ttl_s=5, period_ms=100), "cyclic commands go by RPDO"),
    (lambda d: d["commands"]["SetChargeVoltage"].update(via="rpdo"), "0x480C is in no RPDO mapping"),
    (lambda d: d["commands"]["EnableBalancing"].update(ack={"type": "echo", "message": "x", "signal": "y"}),
     "ack.type 'echo': expected 'sdo' or 'none'"),
    (lambda d: d["options"].update(heartbeat_consumer_ms=-1), "options.heartbeat_consumer_ms"),
    (lambda d: d["options"].update(bogus=1), "options.bogus: Extra inputs are not permitted"),
    (lambda d: d["options"].update(emcy_alarms={"0x42": {"alarm": "A"}, "hot": {"alarm": "B"}}), "emcy_alarms key"),
])
def test_profile_errors_name_the_json_path(edit: Any, message: str) -> None:
    with pytest.raises(ProfileError, match="profile cia418-bms: ") as e:
        variant(edit)
    assert message in str(e.value)


def test_channels_may_name_od_entries() -> None:
    adapter = make()
    infos = {i.address: i for i in adapter.channels()}
    assert infos["bms_0/BatteryStatus"].description == "0x6000 Battery status"
    assert infos["bms_0/CellCount"].description == "0x6020sub4 Number of cells"
    assert infos["bms_0/Voltage"].unit == "V" and infos["bms_0/Temperature"].unit == "°C"


def test_node_id_is_required() -> None:
    with pytest.raises(ConfigError, match=r"needs node_id 1\.\.127; found None"):
        CanopenAdapter(DeviceConfig("bms_9", "can0", "cia418-bms"), load_profile("cia418-bms"))


def test_identity_mismatch_marks_values_invalid() -> None:
    adapter = make()
    adapter.identity_ok = False  # what the worker concludes from 0x1018 (see test_canopen_sim)
    out = adapter.on_frame(frame(0x181, "cc00014d85ff8002"), T0)
    assert out is not None and {s.quality for s in out.samples if s.address == "bms_0/Soc"} == {Quality.INVALID}
