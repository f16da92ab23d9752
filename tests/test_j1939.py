"""The J1939 adapter and its edge ECU without a bus: hand-computed frames in, samples and frames out.

Frames are written byte by byte from the HVESS table in PROTOCOLS.md (1-based bytes, little endian).
The library's claim timers run on wall-clock deadlines, so `now` is taken from the real clock.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import can
import j1939
import pytest

from emsbms import CommandRejected, ConfigError, load_profile
from emsbms.protocols.base import Adapter, DeviceConfig, Output
from emsbms.protocols.j1939 import J1939Adapter, j1939_limits
from emsbms.protocols.j1939_dm import Dtc, LampState, dm1_payload, parse_dm1
from emsbms.protocols.j1939_names import decode_name, make_name
from emsbms.protocols.j1939_stack import DrivenEcu
from emsbms.types import AlarmLevel, CommandResult, CommandStatus, CommState, Quality
from tests.test_adapter_contract import AdapterContract
from tests.test_adapter_contract import msg as contract_msg

BMS_NAME = 0x9000A0005CA01F3A
EDGE = 0xE0
PROFILE = load_profile("j1939-hvess")


def now_us() -> int:
    return time.time_ns() // 1000


def frame(can_id: int, hex_data: str, t_us: int | None = None) -> can.Message:
    t = now_us() if t_us is None else t_us
    return can.Message(arbitration_id=can_id, data=bytes.fromhex(hex_data), is_extended_id=True, timestamp=t / 1e6)


def claim_frame(address: int, name: int) -> can.Message:
    return frame(0x18EEFF00 | address, name.to_bytes(8, "little").hex())


def make(**device: Any) -> J1939Adapter:
    bus = "can-" + uuid.uuid4().hex[:8]  # every test gets its own edge ECU
    a = J1939Adapter(DeviceConfig("bms", bus, "j1939-hvess", **device), PROFILE)
    a.start(now_us())
    return a


def claimed_edge(**device: Any) -> J1939Adapter:
    """An adapter whose edge ECU holds its address (the claim timers run 2 s ahead)."""
    a = make(**device)
    later = now_us() + 2_000_000
    a.tick(later)
    a.tick(later + 10_000)
    assert a.stack.edge_address is not None
    return a


def values(out: Output | None) -> dict[str, object]:
    assert out is not None
    return {s.address: s.value for s in out.samples}


def qualities(out: Output | None) -> dict[str, Quality]:
    assert out is not None
    return {s.address: s.quality for s in out.samples}


def ids(frames: Any) -> list[tuple[int, str]]:
    return [(f.arbitration_id, bytes(f.data).hex()) for f in frames]


# -- decoding and validity ----------------------------------------------------------------------

def test_hves1d1_values_and_not_available_power() -> None:
    a = make(source_address=0xF3)
    # discharge power 100 kW = 2000 = 0x07D0; charge power 0xFFFF (n/a); 650 V = 13000 = 0x32C8;
    # -20 A = (-20 + 1600) / 0.05 = 31600 = 0x7B70
    out = a.on_frame(frame(0x0CF090F3, "d007ffffc832707b"), now_us())
    v, q = values(out), qualities(out)
    assert v["bms/AvailableDischargePower"] == pytest.approx(100_000.0)
    assert v["bms/Voltage"] == pytest.approx(650.0)
    assert v["bms/Current"] == pytest.approx(-20.0)
    assert v["bms/AvailableChargePower"] is None and q["bms/AvailableChargePower"] is Quality.NOT_AVAILABLE


def test_error_and_reserved_raw_values_give_no_number() -> None:
    a = make(source_address=0xF3)
    # voltage 0xFE12 (error indicator), current 0xFB00 (reserved), both powers 0xFFFF
    out = a.on_frame(frame(0x0CF090F3, "ffffffff12fe00fb"), now_us())
    v, q = values(out), qualities(out)
    assert v["bms/Voltage"] is None and q["bms/Voltage"] is Quality.INVALID
    assert v["bms/Current"] is None and q["bms/Current"] is Quality.INVALID
    assert q["bms/AvailableDischargePower"] is Quality.NOT_AVAILABLE
    assert 6553.5 not in v.values() and 3276.75 not in v.values()


def test_one_byte_and_bit_field_validity() -> None:
    a = make(source_address=0xF3)
    # HVES1D6: bus 0x0000, ignition 0x0960 (24.0 V), coolant in 0x3C (20 °C), out 0xFF (n/a),
    # electronics 0xFE (error), pack 0x41 (25 °C)
    out = a.on_frame(frame(0x18F095F3, "00006009" "3cfffe41"), now_us())
    v, q = values(out), qualities(out)
    assert v["bms/PackTemperature"] == 25
    assert v["bms/BusVoltage"] == 0.0
    # HVES1S1: byte 1 = 0b0000_11_10 (positive contactor 10 error, negative 11 n/a);
    # byte 6 = 0x04 (bus connection 4: pre-charge failed; operational status 0)
    out = a.on_frame(frame(0x18F096F3, "0e0000000004ffff"), now_us())
    v, q = values(out), qualities(out)
    assert v["bms/PositiveContactor"] is None and q["bms/PositiveContactor"] is Quality.INVALID
    assert v["bms/NegativeContactor"] is None and q["bms/NegativeContactor"] is Quality.NOT_AVAILABLE
    assert v["bms/BusConnection"] == 4 and q["bms/BusConnection"] is Quality.OK
    assert v["bms/Alarm/ContactorError"] is AlarmLevel.ALARM
    assert v["bms/Alarm/PrechargeFailed"] is AlarmLevel.ALARM
    # byte 6 = 0x0F: bus connection n/a; 0x0E: error
    out = a.on_frame(frame(0x18F096F3, "05000000000fffff"), now_us())
    assert qualities(out)["bms/BusConnection"] is Quality.NOT_AVAILABLE
    out = a.on_frame(frame(0x18F096F3, "05000000000effff"), now_us())
    assert qualities(out)["bms/BusConnection"] is Quality.INVALID
    assert values(out)["bms/PositiveContactor"] == 1 and values(out)["bms/Alarm/ContactorError"] is AlarmLevel.OK


@pytest.mark.parametrize(("length", "expected"), [(8, (0xFB, 0xFF)), (16, (0xFB00, 0xFF00)),
                                                    (24, (0xFB0000, 0xFF0000)), (2, (2, 3)), (4, (14, 15))])
def test_validity_limits(length: int, expected: tuple[int, int]) -> None:
    assert j1939_limits(length) == expected


def test_discharge_limit_is_a_positive_magnitude() -> None:
    a = make(source_address=0xF3)
    # discharge limit -200 A: (−200 + 1600) / 0.05 = 28000 = 0x6D60; charge +150 A: 35000 = 0x88B8;
    # min cell SoC 50 % = 32000 = 0x7D00; max 0xFFFF n/a
    v = values(a.on_frame(frame(0x0CF094F3, "606db888007dffff"), now_us()))
    assert v["bms/DischargeMaxCurrent"] == pytest.approx(200.0)
    assert v["bms/ChargeMaxCurrent"] == pytest.approx(150.0)
    assert v["bms/MinCellSoc"] == pytest.approx(50.0)


def test_matched_by_pgn_and_source_whatever_the_priority() -> None:
    a = make(source_address=0xF3)
    # HVES1D2 at priority 6 instead of 3: SoC 60 % = 38400 = 0x9600, 3.301 V = 0x0CE5, 3.290 V = 0x0CDA
    v = values(a.on_frame(frame(0x18F091F3, "0096e50cda0c00ff"), now_us()))
    assert v["bms/Soc"] == pytest.approx(60.0)
    assert v["bms/MaxCellVoltage"] == pytest.approx(3.301)
    assert a.on_frame(frame(0x0CF091F4, "0096e50cda0c00ff"), now_us()) is None  # another source


def test_short_frame_gives_the_parameters_it_holds_and_is_counted() -> None:
    a = make(source_address=0xF3)
    # HVES1D1 in 3 bytes: only bytes 1-2 (available discharge power, 2000 x 0.05 kW) are whole
    v = values(a.on_frame(frame(0x0CF090F3, "d007ff"), now_us()))
    assert v["bms/AvailableDischargePower"] == pytest.approx(100_000.0)
    assert "bms/AvailableChargePower" not in v and "bms/Voltage" not in v and "bms/Current" not in v
    assert a.counters() == (1, 0)  # one short frame, no bad value


def test_device_needs_a_name_or_an_address() -> None:
    with pytest.raises(ConfigError, match=r"needs j1939_name .* or source_address"):
        J1939Adapter(DeviceConfig("bms", "can-x", "j1939-hvess"), PROFILE)
    hex_named = J1939Adapter(DeviceConfig("bms", "can-h", "j1939-hvess", j1939_name="0x9000A0005CA01F3A"), PROFILE)
    assert hex_named.j1939_name == BMS_NAME  # "0x.." strings (JSON has no hex) are accepted
    with pytest.raises(ConfigError, match=r"source_address: expected 0\.\.0xfd, found 0x100"):
        J1939Adapter(DeviceConfig("bms", "can-w", "j1939-hvess", source_address=256), PROFILE)
    with pytest.raises(ConfigError, match="id_offset has no meaning for a j1939 device"):
        J1939Adapter(DeviceConfig("bms", "can-z", "j1939-hvess", source_address=1, id_offset=0x10), PROFILE)
    with pytest.raises(ConfigError, match=r"options\.edge_address"):
        J1939Adapter(DeviceConfig("bms", "can-y", "j1939-hvess", source_address=1, options={"edge_address": 300}),
                     PROFILE)


# -- DM1 ----------------------------------------------------------------------------------------

def test_dm1_single_frame_then_cleared() -> None:
    a = make(source_address=0xF3)
    # lamps: red stop lamp on (bits 5-6 = 01) -> 0x10, flash bits all 11 -> 0xFF;
    # DTC SPN 520200 = 0x7F008: 08 F0, byte 5 = SPN bits 16-18 (111) << 5 | FMI 0 = 0xE0, OC 1
    v = values(a.on_frame(frame(0x18FECAF3, "10ff08f0e001ffff"), now_us()))
    assert json.loads(str(v["bms/Dm1/ActiveDtcs"])) == [{"spn": 520200, "fmi": 0, "oc": 1}]
    assert v["bms/Dm1/RedStopLamp"] == "on" and v["bms/Dm1/AmberWarningLamp"] == "off"
    assert v["bms/Alarm/OverTemperature"] is AlarmLevel.ALARM
    assert v["bms/Alarm/DiagnosticLamps"] is AlarmLevel.ALARM
    assert v["bms/Dm1/ActiveDtcCount"] == 1
    assert a.active_dtcs == (Dtc(520200, 0, 1),)
    # a DM1 listing no DTC clears it
    v = values(a.on_frame(frame(0x18FECAF3, "00ff00000000ffff"), now_us()))
    assert v["bms/Dm1/ActiveDtcs"] == "[]"
    assert v["bms/Alarm/OverTemperature"] is AlarmLevel.OK
    assert v["bms/Alarm/DiagnosticLamps"] is AlarmLevel.OK
    assert a.active_dtcs == ()


def test_dm1_by_bam() -> None:
    a = make(source_address=0xF3)
    # 10 bytes: amber lamp 0x04, 0xFF; SPN 520201 FMI 16 OC 2: 09 F0 F0 02; SPN 520202 FMI 18 OC 3: 0A F0 F2 03
    bam = frame(0x1CECFFF3, "200a0002ffcafe00")  # TP.CM BAM: 10 bytes, 2 packets, PGN 0x00FECA
    assert a.on_frame(bam, now_us()) is not None  # used by the stack, no samples yet
    out = a.on_frame(frame(0x1CEBFFF3, "0104ff09f0f0020a"), now_us())
    assert out is not None and not out.samples
    v = values(a.on_frame(frame(0x1CEBFFF3, "02f0f203ffffffff"), now_us()))
    assert json.loads(str(v["bms/Dm1/ActiveDtcs"])) == [{"spn": 520201, "fmi": 16, "oc": 2},
                                                     {"spn": 520202, "fmi": 18, "oc": 3}]
    assert v["bms/Alarm/CellOverVoltage"] is AlarmLevel.WARNING
    assert v["bms/Alarm/CellUnderVoltage"] is AlarmLevel.WARNING
    assert v["bms/Alarm/OverTemperature"] is AlarmLevel.OK
    assert v["bms/Dm1/AmberWarningLamp"] == "on"
    assert v["bms/Alarm/DiagnosticLamps"] is AlarmLevel.WARNING


def test_dm1_payload_round_trip_through_the_library() -> None:
    dtcs = [Dtc(520200, 0, 1), Dtc(100, 3, 7)]
    data = dm1_payload({"RedStopLamp": LampState.ON}, dtcs)
    assert len(data) == 10 and data[:2] == [0x10, 0xFF]
    assert data[2:6] == [0x08, 0xF0, 0xE0, 0x01]
    parsed = parse_dm1(bytes(data))
    assert parsed.dtcs == tuple(dtcs) and parsed.lamps["RedStopLamp"] is LampState.ON
    assert dm1_payload({}, []) == [0, 0xFF, 0, 0, 0, 0, 0xFF, 0xFF]


# -- transport protocol ---------------------------------------------------------------------------

CFG = "0030c036002afa0d0029a01f420ec409"
# nominal 614.4 V = 12288 = 0x3000; max 700.8 V = 0x36C0; min 537.6 V = 0x2A00; SoC 100 % = 0xFA,
# 5.2 % = 0x0D; 55 °C = 10496 = 0x2900; -20 °C = 8096 = 0x1FA0; 3.65 V = 0x0E42; 2.5 V = 0x09C4


def test_hves1cfg_by_bam() -> None:
    a = make(source_address=0xF3)
    a.on_frame(frame(0x18ECFFF3, "20100003ff5dfc00"), now_us())
    a.on_frame(frame(0x1CEBFFF3, "01" + CFG[0:14]), now_us())
    a.on_frame(frame(0x1CEBFFF3, "02" + CFG[14:28]), now_us())
    v = values(a.on_frame(frame(0x1CEBFFF3, "03" + CFG[28:32] + "ffffffffff"), now_us()))
    assert v["bms/NominalVoltage"] == pytest.approx(614.4)
    assert v["bms/DischargeMinVoltage"] == pytest.approx(537.6)


def test_hves1cfg_by_rts_cts_to_the_edge() -> None:
    a = claimed_edge(source_address=0xF3)
    # RTS to 0xE0: 16 bytes, 3 packets, up to 255 per CTS, PGN 0x00FC5D
    out = a.on_frame(frame(0x1CECE0F3, "10100003ff5dfc00"), now_us())
    assert out is not None and ids(out.frames) == [(0x1CECF3E0, "110101ffff5dfc00")]  # CTS: 1 packet from 1
    out = a.on_frame(frame(0x1CEBE0F3, "01" + CFG[0:14]), now_us())
    assert out is not None and ids(out.frames) == [(0x1CECF3E0, "110102ffff5dfc00")]
    out = a.on_frame(frame(0x1CEBE0F3, "02" + CFG[14:28]), now_us())
    assert out is not None and ids(out.frames) == [(0x1CECF3E0, "110103ffff5dfc00")]
    out = a.on_frame(frame(0x1CEBE0F3, "03" + CFG[28:32] + "ffffffffff"), now_us())
    assert out is not None and ids(out.frames) == [(0x1CECF3E0, "13100003ff5dfc00")]  # end of message ack
    assert values(out)["bms/NominalVoltage"] == pytest.approx(614.4)


def test_on_request_groups_are_requested_once_the_edge_has_an_address() -> None:
    a = J1939Adapter(DeviceConfig("bms", "can-" + uuid.uuid4().hex[:8], "j1939-hvess", source_address=0xF3), PROFILE)
    start = a.start(now_us())
    # first, from the null address: a request for Address Claimed to everyone (PGN 0x00EE00)
    assert ids(start.frames) == [(0x18EAFFFE, "00ee00")]
    later = now_us() + 2_000_000
    out1 = a.tick(later)
    out2 = a.tick(later + 10_000)
    sent = ids([*out1.frames, *out2.frames])
    assert (0x18EEFFE0, make_name(arbitrary_address_capable=1, function=130, manufacturer_code=0x7FF,
                                  identity_number=0xE05).to_bytes(8, "little").hex()) in sent
    assert (0x18EAF3E0, "5dfc00") in sent and (0x18EAF3E0, "5efc00") in sent
    assert values(out2)["bms/EdgeAddress"] == EDGE

    def requests(t: int) -> list[str]:
        return [bytes(f.data).hex() for f in a.tick(t).frames if f.arbitration_id == 0x18EAF3E0]

    assert requests(later + 500_000) == []
    assert requests(later + 1_100_000) == ["5dfc00", "5efc00"]  # unanswered: asked again after 1 s
    # HVES1CFG arrives (BAM); HVES1HIST does not
    t = later + 1_200_000
    a.on_frame(frame(0x18ECFFF3, "20100003ff5dfc00", t), t)
    for i, part in enumerate((CFG[0:14], CFG[14:28], CFG[28:32] + "ffffffffff")):
        a.on_frame(frame(0x1CEBFFF3, f"0{i + 1}" + part, t), t)
    assert requests(later + 2_200_000) == []
    assert requests(later + 3_200_000) == ["5efc00"]  # then after 2 s, 4 s, ... (up to the interval)
    assert requests(later + 30_000_000) == ["5efc00"]
    assert requests(later + 59_000_000) == ["5efc00"]  # HVES1CFG (answered): once a minute
    assert "5dfc00" in requests(later + 61_300_000)


# -- NAME and addresses ---------------------------------------------------------------------------

def test_address_change_after_a_conflict_is_followed_by_name() -> None:
    a = make(j1939_name=BMS_NAME)
    assert a.address is None
    v = values(a.on_frame(claim_frame(0xF3, BMS_NAME), now_us()))
    assert v["bms/SourceAddress"] == 0xF3
    assert values(a.on_frame(frame(0x0CF091F3, "0096e50cda0c00ff"), now_us()))["bms/Soc"] == pytest.approx(60.0)
    # a stronger NAME takes 0xF3: the BMS loses it, frames from 0xF3 are no longer its own
    out = a.on_frame(claim_frame(0xF3, 0x1000), now_us())
    assert qualities(out)["bms/SourceAddress"] is Quality.NOT_AVAILABLE
    assert a.on_frame(frame(0x0CF091F3, "0096e50cda0c00ff"), now_us()) is None
    # the BMS claims 0xF4 with the same NAME: same channels, new address
    assert values(a.on_frame(claim_frame(0xF4, BMS_NAME), now_us()))["bms/SourceAddress"] == 0xF4
    # SoC 61.5 % = 39360 = 0x99C0
    assert values(a.on_frame(frame(0x0CF091F4, "c099e50cda0c00ff"), now_us()))["bms/Soc"] == pytest.approx(61.5)


def test_a_name_that_never_claims_is_missing() -> None:
    a = make(j1939_name=BMS_NAME)
    t0 = a._start_us
    a.on_frame(frame(0x0CF091F3, "0096e50cda0c00ff"), t0)  # someone at 0xF3, but not our NAME
    out = a.tick(t0 + 3_500_000)  # profile timeout 3 s
    v = values(out)
    assert v["bms/Alarm/NameNotClaimed"] is AlarmLevel.ALARM
    assert v["bms/CommState"] is CommState.LOST
    assert "bms/Soc" not in v


def test_name_fields_decode() -> None:
    f = decode_name(BMS_NAME)
    assert (f.arbitrary_address_capable, f.industry_group, f.function, f.manufacturer_code, f.identity_number) == (
        True, 1, 160, 741, 0x1F3A)
    assert f.as_dict()["name_hex"] == "0x9000A0005CA01F3A"


# -- the edge's own claim -----------------------------------------------------------------------

def test_library_answers_its_own_echoed_claim() -> None:
    """Why the guard exists: can-j1939 2.0.12 re-claims on every echo of its own claim."""
    sent: list[can.Message] = []
    ecu = DrivenEcu(sent.append)
    name = j1939.Name(value=make_name(identity_number=5))
    ca = j1939.ControllerApplication(name, 0x20)
    ecu.add_ca(controller_application=ca)
    ca.start()
    ecu.run_jobs(time.time() + 1)
    assert ids(sent) == [(0x18EEFF20, bytes(name.bytes).hex())]
    ecu.notify(0x18EEFF20, bytes(name.bytes), time.time())  # the echo
    assert len(sent) == 2  # ... answered: on an echoing bus this never ends


def test_own_claim_echo_is_dropped() -> None:
    a = claimed_edge(source_address=0xF3)
    for _ in range(5):
        out = a.on_frame(claim_frame(EDGE, a.stack.ca.name_value), now_us())
        assert out is not None and not out.frames
    assert a.stack.ca.own_claims_dropped == 5
    # our own request, echoed, is not answered either
    out = a.on_frame(frame(0x18EAF3E0, "5dfc00"), now_us())
    assert out is not None and not out.frames and a.stack.own_frames_dropped == 1


def test_edge_losing_its_claim_moves_and_gives_up_past_253() -> None:
    a = claimed_edge(source_address=0xF3)
    out = a.on_frame(claim_frame(EDGE, 0x10), now_us())  # a stronger NAME takes 0xE0
    assert out is not None and ids(out.frames) == [(0x18EEFFE1, a.stack.ca.name_value.to_bytes(8, "little").hex())]
    later = now_us() + 2_000_000
    assert values(a.tick(later))["bms/EdgeAddress"] == 0xE1
    b = claimed_edge(source_address=0xF3, options={"edge_address": 253})
    out = b.on_frame(claim_frame(253, 0x10), now_us())
    assert out is not None and ids(out.frames) == [(0x18EEFFFE, b.stack.ca.name_value.to_bytes(8, "little").hex())]
    assert b.stack.edge_address is None
    v = values(b.tick(now_us() + 3_000_000))
    assert v["bms/EdgeAddress"] is None
    with pytest.raises(CommandRejected, match="holds no J1939 address"):
        b.plan_command("ResetFaults", 1, now_us())


# -- commands -----------------------------------------------------------------------------------

def ack(control: int, pgn: int, to: int = EDGE) -> can.Message:
    data = bytes([control, 0xFF, 0xFF, 0xFF, to, pgn & 0xFF, (pgn >> 8) & 0xFF, pgn >> 16])
    return frame(0x18E8FFF3, data.hex())


def test_dm11_request_with_ack_and_nack() -> None:
    a = claimed_edge(source_address=0xF3)
    plan = a.plan_command("ResetFaults", 1, now_us())
    assert ids(plan.frames) == [(0x18EAF3E0, "d3fe00")]  # request to 0xF3 for PGN 0x00FED3
    assert plan.ack is not None
    assert plan.ack(ack(0, 0xEF00)) is None  # an ACK of another PGN
    assert plan.ack(frame(0x18E8FFF4, "00ffffffe0d3fe00")) is None  # from another address
    status, detail = plan.ack(ack(0, 0xFED3)) or (None, "")
    assert status is CommandStatus.ACKED and "ACK of PGN 0xFED3 from address 0xF3" in detail
    status, detail = plan.ack(ack(1, 0xFED3)) or (None, "")
    assert status is CommandStatus.REJECTED and detail.startswith("NACK")


def test_a_command_written_while_claiming_waits_for_the_claim() -> None:
    a = make(source_address=0xF3)
    plan = a.plan_command("ResetFaults", 1, now_us())  # the edge has no address yet
    assert plan.frames == [] and plan.execute is not None
    execute = plan.execute
    outcome: list[tuple[CommandStatus, str]] = []
    writer = threading.Thread(target=lambda: outcome.append(execute(10.0)))
    writer.start()
    t = now_us() + 2_000_000
    sent: list[tuple[int, str]] = []
    deadline = time.monotonic() + 10.0
    while not sent and time.monotonic() < deadline:  # the dispatcher's ticks: the claim, then the command
        sent += [x for x in ids(a.tick(t).frames) if x == (0x18EAF3E0, "d3fe00")]
        t += 10_000
        time.sleep(0.002)
    assert sent == [(0x18EAF3E0, "d3fe00")] and a.stack.edge_address == EDGE
    a.on_frame(ack(0, 0xFED3), now_us())
    writer.join(5.0)
    assert outcome and outcome[0][0] is CommandStatus.ACKED


def test_proprietary_a_setpoint_frame() -> None:
    a = claimed_edge(source_address=0xF3)
    plan = a.plan_command("SetChargeCurrent", 42.0, now_us())
    # 42 A / 0.05 = 840 = 0x0348; the other setpoints 0xFFFF (not available: no change)
    assert ids(plan.frames) == [(0x18EFF3E0, "4803ffffffffffff")]
    with pytest.raises(CommandRejected, match="above the maximum 500"):
        a.plan_command("SetChargeCurrent", 501.0, now_us())


def test_connect_is_cyclic_until_its_ttl() -> None:
    a = claimed_edge(source_address=0xF3)
    t = now_us()
    plan = a.plan_command("Connect", 1, t)
    assert ids(plan.frames) == [(0x0C1BF3E0, "fdffffffffffffff")]  # close = 01, the rest 11 / padding
    a.command_done(plan, CommandResult("bms/Connect", 1.0, CommandStatus.ACKED), t)
    sent = 0
    for i in range(1, 101):  # one second of 10 ms ticks
        sent += sum(1 for f in a.tick(t + i * 10_000).frames if f.arbitration_id == 0x0C1BF3E0)
    assert 45 <= sent <= 51  # every 20 ms
    out = a.tick(t + 10_000_001)
    assert "bms/Connect" in out.stale and not [f for f in out.frames if f.arbitration_id == 0x0C1BF3E0]
    assert not [f for f in a.tick(t + 10_100_000).frames if f.arbitration_id == 0x0C1BF3E0]


# -- the adapter contract suite -------------------------------------------------------------------

class TestJ1939Contract(AdapterContract):
    """J1939 addresses a device by NAME or source address, not by exact frame ID: `id_offset`
    here shifts the source address, and the adapter takes every frame no exact key claimed."""

    offset = 1

    def make_adapter(self, id_offset: int = 0) -> Adapter:
        return J1939Adapter(DeviceConfig(self.device, "can0", "j1939-hvess", source_address=0xF3 + id_offset), PROFILE)

    def device_frames(self, id_offset: int = 0) -> list[can.Message]:
        sa = 0xF3 + id_offset
        return [
            contract_msg(0x0CF09000 | sa, bytes.fromhex("d007ffffc832707b"), True),  # HVES1D1
            contract_msg(0x18F09100 | sa, bytes.fromhex("0096e50cda0c00ff"), True),  # HVES1D2, priority 6
            contract_msg(0x0CF09400 | sa, bytes.fromhex("606db888007dffff"), True),  # HVES1D5
            contract_msg(0x18F09600 | sa, bytes.fromhex("05000000000100ff"), True),  # HVES1S1
            contract_msg(0x18FECA00 | sa, bytes.fromhex("10ff08f0e001ffff"), True),  # DM1, one DTC
        ]

    def malformed_frames(self) -> list[can.Message]:
        # a short HVES1D1 is no longer malformed: it gives the parameters it holds (tests above)
        return [contract_msg(0x18FECAF3, bytes(5), True), contract_msg(0x18FECAF3, bytes(7), True)]

    def foreign_frames(self) -> list[can.Message]:
        return [contract_msg(0x0CF090F4, bytes(8), True), contract_msg(0x123, bytes(8)),
                contract_msg(0x18FF50E5, bytes(8), True)]

    def out_of_range_command(self) -> tuple[str, float] | None:
        return "SetChargeCurrent", 501.0  # max 500 A

    def _command_ids(self, adapter: Adapter) -> set[int]:
        return {0x18EFF3E0, 0x0C1BF3E0, 0x18EAF3E0}

    def test_frame_keys_cover_the_device_frames(self) -> None:
        adapter = self.make_adapter()
        assert adapter.wants_unmatched and list(adapter.frame_keys()) == []


def test_an_unresolved_name_is_asked_for_again_with_backoff() -> None:
    """A BMS whose claim the edge missed (it claimed before the edge listened) is found by asking again."""
    a = make(j1939_name=BMS_NAME)
    t0 = a._start_us

    def claim_requests(t_from: int, t_to: int) -> list[int]:
        seen = []
        for t in range(t_from, t_to, 100_000):
            for f in a.tick(t).frames:
                if (f.arbitration_id >> 8) & 0xFFFF == 0xEAFF and bytes(f.data[:3]) == b"\x00\xee\x00":
                    seen.append(round((t - t0) / 1e6))
        return seen

    assert claim_requests(t0, t0 + 16_000_000) == [1, 3, 7, 15]  # after the one at start: 1, 2, 4, 8 s apart
    a.on_frame(claim_frame(0xF3, BMS_NAME), t0 + 16_000_000)
    assert a.address == 0xF3
    assert claim_requests(t0 + 16_000_000, t0 + 60_000_000) == []  # found: no more requests
