"""Frames as real devices send them: every length from the profile's minimum to 8, padding, strict bounds.

The payloads are computed by hand from PROTOCOLS.md (Pylontech/SMA/Victron LV protocol,
little-endian, value = raw x scale), never from the DBC. A frame of `n` bytes gives exactly the
signals that lie wholly inside its `n` bytes; the others are absent (no sample), never zero.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emsbms import Edge, load_profile
from emsbms.diag.logs import OfflineDecoder, read_log
from emsbms.errors import ProfileError
from emsbms.profile.codec import compile_message
from emsbms.protocols.base import DeviceConfig, Output
from emsbms.protocols.dbc import DbcAdapter
from emsbms.site import parse_site
from emsbms.types import AlarmLevel, Quality
from tests.conftest import virtual_site, wait

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
ALARM, WARNING, OK = AlarmLevel.ALARM, AlarmLevel.WARNING, AlarmLevel.OK

# 0x35A: 2-bit fields, 01 active, 10 OK, 00 not supported (bit positions LSB first)
#   byte 0: general 10, high voltage 01, low voltage 10, high temperature 00 -> 0b00_10_01_10 = 0x26
#   byte 1: low temperature 00, high temp charge 00, low temp charge 00, high (discharge) current 10 -> 0x80
#   byte 2: high charge current 10, contactor 00, short circuit 00, BMS internal 10 -> 0x82
#   byte 3: cell imbalance 01 -> 0x01
#   byte 4 (warnings): general 10, high voltage 10, low voltage 01, high temperature 01 -> 0b01_01_10_10 = 0x5A
#   bytes 5-7: every warning 00 (not supported)
SMA_35A = bytes([0x26, 0x80, 0x82, 0x01, 0x5A, 0x00, 0x00, 0x00])

# (CAN ID, 8-byte payload, shortest length accepted, {channel: (value, bytes it needs)})
CASES: list[tuple[int, bytes, int, dict[str, tuple[Any, int]]]] = [
    # CVL 568 x 0.1 = 56.8 V; CCL 1000 x 0.1 = 100 A; DCL 0xFA24 = -1500 -> 150 A (abs); DVL 480 -> 48 V
    (0x351, bytes.fromhex("3802e80324fae001"), 6, {
        "ChargeMaxVoltage": (56.8, 2), "ChargeMaxCurrent": (100.0, 4), "DischargeMaxCurrent": (150.0, 6),
        "DischargeMinVoltage": (48.0, 8)}),
    # SoC 0x3B = 59 %, SoH 0x62 = 98 %, high-resolution SoC (no channel), then padding
    (0x355, bytes.fromhex("3b00620031170000"), 4, {"Soc": (59, 2), "Soh": (98, 4)}),
    # 0x145C = 5212 -> 52.12 V; 0xFF83 = -125 -> -12.5 A; 0x00EA = 234 -> 23.4 degC; padded to 8
    (0x356, bytes.fromhex("5c1483ffea000000"), 0, {
        "Voltage": (52.12, 2), "Current": (-12.5, 4), "Temperature": (23.4, 6)}),
    # protection byte 0 bit 3 (over-temperature), warning byte 2 bit 1 (over-voltage), 2 modules, "PN", pad
    (0x359, bytes([0x08, 0x00, 0x02, 0x00, 0x02, 0x50, 0x4E, 0x00]), 0, {
        "Alarm/OverTemperature": (ALARM, 1), "Alarm/UnderVoltage": (OK, 1), "Alarm/UnderTemperature": (OK, 1),
        "Alarm/DischargeOverCurrent": (OK, 1), "Alarm/ChargeOverCurrent": (OK, 2), "Alarm/SystemError": (OK, 2),
        "ModuleCount": (2, 5)}),
    (0x35A, SMA_35A, 0, {
        "Alarm/OverVoltage": (ALARM, 1), "Alarm/General": (OK, 1), "Alarm/DischargeOverCurrent": (OK, 2),
        "Alarm/ChargeOverCurrent": (OK, 3), "Alarm/SystemError": (OK, 3), "Alarm/CellImbalance": (ALARM, 4)}),
    # byte 0 = 0xC0: charge (bit 7) and discharge (bit 6) enabled; padded to 8
    (0x35C, bytes([0xC0, 0, 0, 0, 0, 0, 0, 0]), 0, {"AllowCharge": (True, 1), "AllowDischarge": (True, 1)}),
    (0x35E, b"PYTES   ", 1, {}),  # the name: no channel, any length from 1
    (0x372, bytes.fromhex("0200000000000000"), 0, {}),  # module counts: no channel
    # 3301 mV = 0x0CE5, 3342 mV = 0x0D0E, 296 K = 0x0128, 299 K = 0x012B
    (0x373, bytes.fromhex("e50c0e0d28012b01"), 0, {
        "MinCellVoltage": (3.301, 2), "MaxCellVoltage": (3.342, 4), "MinCellTemperature": (22.85, 6),
        "MaxCellTemperature": (25.85, 8)}),
    # installed capacity 0x0118 = 280 Ah; padded to 8
    (0x379, bytes.fromhex("1801000000000000"), 0, {"Capacity": (280, 2)}),
]
# the two alarms whose value moves with the length: over-voltage (0x359 warning in byte 2) and the
# 0x35A warnings in byte 4; an alarm no byte tells anything about has no sample at all
GROWING = {
    (0x359, "Alarm/OverVoltage"): {1: OK, 2: OK, 3: WARNING},  # protection bit in byte 0, warning in byte 2
    (0x35A, "Alarm/UnderVoltage"): {1: OK, 2: OK, 3: OK, 4: OK, 5: WARNING},  # alarm OK, then the warning
    (0x35A, "Alarm/OverTemperature"): {5: WARNING},  # the alarm fields are 00 (not supported): nothing before
}
DECLARED = {0x351: 6, 0x355: 4, 0x356: 6, 0x359: 7, 0x35A: 8, 0x35C: 2, 0x35E: 1, 0x372: 8, 0x373: 8, 0x379: 2}
LENGTHS = [(can_id, n) for can_id, _, low, _ in CASES for n in range(low, 9)]


def expected(can_id: int, n: int) -> dict[str, Any]:
    """The channel values a fresh bms_0 gives for the first n bytes of a case's payload."""
    case = next(c for c in CASES if c[0] == can_id)
    out = {f"bms_0/{name}": value for name, (value, need) in case[3].items() if need <= n}
    for (cid, name), levels in GROWING.items():
        fitting = [k for k in levels if k <= n]
        if cid == can_id and fitting:
            out[f"bms_0/{name}"] = levels[max(fitting)]
    return out


def payload(can_id: int, n: int) -> bytes:
    return next(c for c in CASES if c[0] == can_id)[1][:n]


def frame(can_id: int, data: bytes, t: float = T0) -> can.Message:
    return can.Message(arbitration_id=can_id, data=data, is_extended_id=False, timestamp=t, is_fd=len(data) > 8)


def channel_values(out: Output | None) -> dict[str, Any]:
    assert out is not None and out.error is None, out
    return {s.address: s.value for s in out.samples if not s.address.endswith(("/CommState", "/Alarm/CommLoss"))}


def assert_values(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert set(got) == set(want)  # present exactly when the bytes hold the signal: absent, never zero
    for address, value in want.items():
        assert got[address] == pytest.approx(value, abs=1e-9), address
        assert type(got[address]) is type(value), address  # bool stays bool, an alarm an AlarmLevel


def pylon() -> DbcAdapter:
    return DbcAdapter(DeviceConfig("bms_0", "can0", "pylon-lv"), load_profile("pylon-lv"))


# -- through the adapter --------------------------------------------------------------------------


@pytest.mark.parametrize(("can_id", "n"), LENGTHS)
def test_every_length_from_the_minimum_to_8_through_the_adapter(can_id: int, n: int) -> None:
    adapter = pylon()
    assert_values(channel_values(adapter.on_frame(frame(can_id, payload(can_id, n)), 0)), expected(can_id, n))
    assert adapter.counters() == (int(n < DECLARED[can_id]), 0)  # short frames counted, nothing else
    # the generic path (no generated code) agrees, sample for sample
    reference = pylon()
    route = reference._routes[can_id]
    again = channel_values(reference._short_frame(route, frame(can_id, payload(can_id, n))))
    assert again == channel_values(pylon().on_frame(frame(can_id, payload(can_id, n)), 0))


def test_excess_bytes_are_ignored_even_beyond_8() -> None:
    adapter = pylon()
    got = channel_values(adapter.on_frame(frame(0x356, payload(0x356, 8) + bytes(56)), 0))  # a 64-byte CAN FD frame
    assert_values(got, expected(0x356, 8))
    assert adapter.counters() == (0, 0)


@pytest.mark.parametrize(("can_id", "n"), [(0x351, 0), (0x351, 5), (0x355, 3), (0x35E, 0)])
def test_below_a_strict_minimum_is_a_bad_frame_naming_both_lengths(can_id: int, n: int) -> None:
    adapter = pylon()
    out = adapter.on_frame(frame(can_id, bytes(n)), 0)
    low = {0x351: 6, 0x355: 4, 0x35E: 1}[can_id]
    assert out is not None and out.samples == () and out.error is not None
    assert f"(0x{can_id:X}) DLC {n}, expected at least {low}" in out.error
    assert adapter.counters() == (0, 0)


def test_a_shorter_frame_keeps_the_values_it_does_not_hold() -> None:
    adapter = pylon()
    channel_values(adapter.on_frame(frame(0x356, payload(0x356, 6)), 0))
    assert channel_values(adapter.on_frame(frame(0x356, bytes.fromhex("6f14")), 0)) == {"bms_0/Voltage": 52.31}


# -- 0x35A: the SMA/Victron 2-bit alarm frame -----------------------------------------------------


def test_sma_alarm_bits_give_alarm_levels_and_unsupported_gives_none() -> None:
    got = channel_values(pylon().on_frame(frame(0x35A, SMA_35A), 0))
    assert got == {
        "bms_0/Alarm/General": OK, "bms_0/Alarm/OverVoltage": ALARM, "bms_0/Alarm/UnderVoltage": WARNING,
        "bms_0/Alarm/OverTemperature": WARNING, "bms_0/Alarm/DischargeOverCurrent": OK,
        "bms_0/Alarm/ChargeOverCurrent": OK, "bms_0/Alarm/SystemError": OK, "bms_0/Alarm/CellImbalance": ALARM,
    }  # UnderTemperature: every field 00 (not supported) -> no alarm information, not OK


def test_alarms_only_in_0x35a_win_over_a_quiet_0x359() -> None:
    adapter = pylon()
    quiet = channel_values(adapter.on_frame(frame(0x359, bytes(7)), 0))
    assert quiet["bms_0/Alarm/OverVoltage"] is OK
    loud = channel_values(adapter.on_frame(frame(0x35A, SMA_35A), 0))
    assert loud["bms_0/Alarm/OverVoltage"] is ALARM and loud["bms_0/Alarm/UnderTemperature"] is OK
    assert channel_values(adapter.on_frame(frame(0x359, bytes(7)), 0))["bms_0/Alarm/OverVoltage"] is ALARM
    cleared = bytes([0x2A, 0, 0, 0, 0, 0, 0, 0])  # general, high and low voltage 10 (OK), high temperature 00
    assert channel_values(adapter.on_frame(frame(0x35A, cleared), 0))["bms_0/Alarm/OverVoltage"] is OK


# -- through the offline decoder -------------------------------------------------------------------


def test_every_length_through_the_offline_decoder(tmp_path: Path) -> None:
    site = parse_site({"site": {"org": "t", "name": "lengths"},
                       "bus": [{"name": "can0", "interface": "virtual", "channel": "lengths"}],
                       "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}]})
    path = tmp_path / "lengths.blf"
    with can.Logger(str(path)) as writer:
        for k, (can_id, n) in enumerate(LENGTHS):
            msg = frame(can_id, payload(can_id, n), T0 + k)
            msg.channel = 0
            writer.on_message_received(msg)
        strict = frame(0x351, bytes(5), T0 + len(LENGTHS))
        strict.channel = 0
        writer.on_message_received(strict)
    frames = list(read_log(path))
    assert [len(m.data) for m in frames[:-1]] == [n for _, n in LENGTHS]

    decoder = OfflineDecoder(site)
    by_time: dict[int, dict[str, Any]] = {}
    for s in decoder.decode(frames):
        if s.quality is Quality.OK and not s.address.endswith(("/CommState", "/Alarm/CommLoss")):
            by_time.setdefault(s.timestamp_us, {})[s.address] = s.value
    for k, (can_id, n) in enumerate(LENGTHS):
        t = round((T0 + k) * 1_000_000)
        want = expected(can_id, n)
        got = by_time.get(t, {})
        # alarms carry the slots of earlier frames of the log: compare those only where this frame tells them
        own = {a for a in got if not a.startswith("bms_0/Alarm/")} | {a for a in want if a.startswith("bms_0/Alarm/")}
        if can_id in (0x359, 0x35A):
            assert set(got) >= set(want), (hex(can_id), n)
            continue
        assert {a: got[a] for a in own} == pytest.approx(want), (hex(can_id), n)
    st = decoder.stats
    assert st.short == sum(n < DECLARED[can_id] for can_id, n in LENGTHS)
    assert (st.bad, st.decoded, st.bad_values) == (1, len(LENGTHS), 0)


# -- on a live edge ------------------------------------------------------------------------------


def test_short_frames_have_their_own_health_counter_on_a_live_edge() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}], tag="lengths")
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    edge = Edge(site).start()
    try:
        peer.send(can.Message(arbitration_id=0x356, data=bytes.fromhex("5c14"), is_extended_id=False))  # voltage only
        peer.send(can.Message(arbitration_id=0x379, data=bytes.fromhex("18"), is_extended_id=False))  # no whole signal
        peer.send(can.Message(arbitration_id=0x356, data=bytes.fromhex("5c1483ffea000000"), is_extended_id=False))
        peer.send(can.Message(arbitration_id=0x351, data=bytes(3), is_extended_id=False))  # below the strict 6
        assert wait(lambda: edge.snapshot().value("can0/ShortFrames") == 2 and edge.snapshot().value("can0/BadFrames")
                    == 1)
        snap = edge.snapshot()
        assert snap.value("can0/BadValues") == 0
        assert snap.value("bms_0/Voltage") == pytest.approx(52.12)
        assert snap.value("bms_0/Current") == pytest.approx(-12.5)
        assert edge.registry.get("bms_0/Capacity") is None  # the 1-byte 0x379 held no whole signal: absent, not 0
    finally:
        edge.stop()
        peer.shutdown()


# -- strict bounds a profile declares ------------------------------------------------------------


def profile_with(tmp_path: Path, messages: dict[str, Any]) -> Path:
    doc = json.loads((ROOT / "profiles" / "pylon-lv.json").read_text(encoding="utf-8"))
    doc["source"]["dbc"] = str(ROOT / "dbc" / "pylon_lv.dbc")
    for name, bounds in messages.items():
        doc["messages"][name] = {**doc["messages"][name], **bounds}
    path = tmp_path / "strict.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_a_strict_max_dlc_refuses_longer_frames(tmp_path: Path) -> None:
    profile = load_profile(profile_with(tmp_path, {"PYLON_Measurements": {"min_dlc": 6, "max_dlc": 6}}))
    adapter = DbcAdapter(DeviceConfig("bms_0", "can0", "strict"), profile)
    out = adapter.on_frame(frame(0x356, payload(0x356, 8)), 0)
    assert out is not None and out.samples == () and out.error == "bms_0: PYLON_Measurements (0x356) DLC 8, expected 6"
    assert channel_values(adapter.on_frame(frame(0x356, payload(0x356, 6)), 0))["bms_0/Voltage"] == pytest.approx(52.12)


@pytest.mark.parametrize(("settings", "text"), [
    ({"min_dlc": 7}, "messages.PYLON_Measurements.min_dlc: expected at most 6 (the length of PYLON_Measurements"),
    ({"max_dlc": 5}, "messages.PYLON_Measurements.max_dlc: expected at least 6 (the length of PYLON_Measurements"),
    ({"min_dlc": 6, "max_dlc": 4}, "min_dlc 6 is above max_dlc 4"),
])
def test_bounds_that_exclude_the_declared_length_are_refused(tmp_path: Path, settings: dict[str, int],
                                                             text: str) -> None:
    with pytest.raises(ProfileError, match=text.replace("(", r"\(")):
        load_profile(profile_with(tmp_path, {"PYLON_Measurements": settings}))


# -- non-finite numbers ----------------------------------------------------------------------------

FLOAT_DBC = """VERSION ""

NS_ :

BS_:

BU_: BMS EMS

BO_ 1280 F_Values: 8 BMS
 SG_ Level : 0|32@1- (1,0) [0|0] "" EMS
 SG_ Count : 32|32@1- (1,0) [0|0] "" EMS

SIG_VALTYPE_ 1280 Level : 1;
SIG_VALTYPE_ 1280 Count : 1;
"""


def float_profile(tmp_path: Path) -> Path:
    (tmp_path / "floats.dbc").write_text(FLOAT_DBC, encoding="utf-8")
    doc = {"name": "floats", "version": "1.0.0", "protocol": "dbc", "source": {"dbc": "floats.dbc"},
           "channels": {"Level": {"message": "F_Values", "signal": "Level"},
                        "Count": {"message": "F_Values", "signal": "Count", "type": "int"}},
           "alarms": {"Flag": {"sources": [{"message": "F_Values", "signal": "Level"}]}}}
    path = tmp_path / "floats.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize("n", [8, 12])  # the declared length (the generated sampler) and a padded frame
def test_nan_and_infinity_give_an_invalid_sample_and_are_counted(tmp_path: Path, n: int) -> None:
    adapter = DbcAdapter(DeviceConfig("f", "can0", "floats"), load_profile(float_profile(tmp_path)))
    nan, inf = bytes.fromhex("0000c07f"), bytes.fromhex("0000807f")  # float32 NaN and +Infinity
    out = adapter.on_frame(can.Message(arbitration_id=0x500, data=(nan + inf).ljust(n, b"\0"), is_extended_id=False,
                                       is_fd=n > 8), 0)
    assert out is not None and out.error is None
    got = {s.address: (s.value, s.quality) for s in out.samples}
    assert got["f/Level"] == (None, Quality.INVALID) and got["f/Count"] == (None, Quality.INVALID)
    assert "f/Alarm/Flag" not in got  # NaN is no alarm information
    assert adapter.counters() == (0, 3)
    one_half = bytes.fromhex("0000c03f") + bytes.fromhex("00002041")  # 1.5 and 10.0
    fine = adapter.on_frame(can.Message(arbitration_id=0x500, data=one_half, is_extended_id=False), 0)
    values = {s.address: s.value for s in fine.samples} if fine is not None else {}
    assert (values["f/Level"], values["f/Count"], values["f/Alarm/Flag"]) == (1.5, 10, AlarmLevel.ALARM)
    assert type(values["f/Count"]) is int


# -- the compiled codec at every length ------------------------------------------------------------

MESSAGES = [m for f in sorted((ROOT / "dbc").glob("*.dbc"))
            for m in cantools.database.load_file(str(f)).messages  # type: ignore[union-attr]
            if not m.is_multiplexed()]


@settings(max_examples=300, deadline=None)
@given(index=st.integers(0, len(MESSAGES) - 1), data=st.binary(min_size=0, max_size=8))
def test_partial_decoders_equal_cantools_truncated_decoding(index: int, data: bytes) -> None:
    message = MESSAGES[index]
    data = data[:message.length]
    compiled = compile_message(message, len(data))
    want = message.decode(data, decode_choices=False, allow_truncated=True)
    raw = message.decode(data, decode_choices=False, scaling=False, allow_truncated=True)
    assert dict(zip(compiled.signal_names, compiled.decode(data), strict=True)) == want
    assert dict(zip(compiled.signal_names, compiled.decode_raw(data), strict=True)) == raw


def test_the_simulator_sends_0x35a_as_ok_fields_and_raises_them_with_the_model() -> None:
    from emsbms.sim.battery import BatteryModel
    from emsbms.sim.dbc_sim import DbcSimulator
    from emsbms.site import BusConfig

    model = BatteryModel()
    sim = DbcSimulator(DeviceConfig("bms_0", "can0", "pylon-lv"), load_profile("pylon-lv"),
                       BusConfig(name="can0", interface="virtual", channel="sim-35a"), model)
    out = next(o for o in sim._outgoing if o.message.frame_id == 0x35A)
    assert sim.encode(out, model.channels()) == bytes([0xAA, 0xAA, 0xAA, 0x02] * 2)  # every field 10: OK
    model.temperature = 56.0
    model.step(0.1)  # the model latches its over-temperature alarm
    data = sim.encode(out, model.channels())
    assert data[:2] == bytes([0x6A, 0xA6])  # 01 in high temperature (byte 0 bits 6-7), high temp charge (byte 1 2-3)
    got = channel_values(pylon().on_frame(frame(0x35A, data), 0))
    assert got["bms_0/Alarm/OverTemperature"] is ALARM and got["bms_0/Alarm/OverVoltage"] is OK
