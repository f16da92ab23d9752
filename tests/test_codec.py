"""The compiled decoders give exactly cantools' values (property tests) and hand-computed ones."""

from __future__ import annotations

import cantools
import pytest
from cantools.database.can import Message, Signal
from cantools.database.conversion import BaseConversion
from hypothesis import given, settings
from hypothesis import strategies as st

from emsbms.profile import load_profile
from emsbms.profile.codec import compile_message


@st.composite
def layouts(draw: st.DrawFn) -> tuple[Message, bytes]:
    """A message of random length with random non-overlapping signals, and a random payload."""
    length = draw(st.integers(1, 8))
    total = 8 * length
    signals = []
    used: set[int] = set()
    for i in range(draw(st.integers(1, 6))):
        n = draw(st.integers(1, min(32, total)))
        order = draw(st.sampled_from(["little_endian", "big_endian"]))
        seq = draw(st.integers(0, total - n))  # sequential position of the first bit
        bits = set(range(seq, seq + n))
        if bits & used:
            continue
        used |= bits
        if order == "little_endian":
            start = seq
        else:  # cantools' big-endian start bit is the MSB in sawtooth numbering
            start = 8 * (seq // 8) + (7 - seq % 8)
        scale = draw(st.sampled_from([1, 2, 0.1, 0.05, 0.001, 0.0015625, -1, 0.5]))
        offset = draw(st.sampled_from([0, -40, -273.15, 1600, -1600, 0.5]))
        signals.append(
            Signal(
                name=f"S{i}",
                start=start,
                length=n,
                byte_order=order,
                is_signed=draw(st.booleans()) and n > 1,
                conversion=BaseConversion.factory(scale=scale, offset=offset),
            )
        )
    if not signals:
        signals.append(Signal(name="S", start=0, length=8))
    msg = Message(frame_id=0x123, name="M", length=length, signals=signals, strict=False)
    data = draw(st.binary(min_size=length, max_size=length))
    return msg, data


@settings(max_examples=400, deadline=None)
@given(layouts())
def test_compiled_equals_cantools_for_random_layouts(case: tuple[Message, bytes]) -> None:
    msg, data = case
    compiled = compile_message(msg)
    expected = msg.decode(data, decode_choices=False, scaling=True)
    got = dict(zip(compiled.signal_names, compiled.decode(data), strict=True))
    assert got == expected  # exact equality, not approximate
    raw_expected = msg.decode(data, decode_choices=False, scaling=False)
    raw_got = dict(zip(compiled.signal_names, compiled.decode_raw(data), strict=True))
    assert raw_got == raw_expected


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_compiled_equals_cantools_on_shipped_profiles(data: st.DataObject) -> None:
    from emsbms.profile import list_shipped

    for name in list_shipped():
        profile = load_profile(name)
        if profile.db is None:
            continue
        for msg in profile.db.messages:
            payload = data.draw(st.binary(min_size=msg.length, max_size=msg.length))
            compiled = compile_message(msg)
            expected = msg.decode(payload, decode_choices=False)
            assert dict(zip(compiled.signal_names, compiled.decode(payload), strict=True)) == expected


def test_hand_computed_pylon_measurements() -> None:
    db = load_profile("pylon-lv").db
    compiled = compile_message(db.get_message_by_name("PYLON_Measurements"))
    # 52.12 V = 5212 = 0x145C; -12.5 A = -125 = 0xFF83; 23.4 degC = 234 = 0x00EA (little-endian)
    values = compiled.decode(bytes([0x5C, 0x14, 0x83, 0xFF, 0xEA, 0x00]))
    assert values == pytest.approx((52.12, -12.5, 23.4), abs=1e-9)


def test_big_endian_and_float_signals() -> None:
    db = cantools.database.load_string(
        'VERSION ""\nBU_: A\nBO_ 1 M: 8 A\n'
        ' SG_ BE : 7|16@0+ (0.5,-10) [0|0] "" A\n'
        ' SG_ F : 32|32@1- (1,0) [0|0] "" A\n'
        'SIG_VALTYPE_ 1 F : 1;\n',
        database_format="dbc",
    )
    compiled = compile_message(db.get_message_by_name("M"))
    # BE: bytes 0-1 = 0x01 0x2C -> raw 300 -> 300 * 0.5 - 10 = 140.0; F: 1.5f little-endian at byte 4
    data = bytes([0x01, 0x2C, 0, 0]) + bytes.fromhex("0000c03f")
    assert compiled.decode(data) == (140.0, 1.5)
    assert compiled.bytes_needed == (2, 8)
