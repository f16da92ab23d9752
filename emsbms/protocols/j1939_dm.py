"""J1939 diagnostics: DM1 lamps and active DTCs, and the acknowledgement PGN (0xE800).

DTC and lamp bit layouts are decoded and encoded by can-j1939 (``j1939.DTC``, ``j1939.DtcLamp``);
this module turns them into typed values and JSON-ready lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum

import j1939

from emsbms.errors import DecodeError
from emsbms.types import AlarmLevel


class LampState(StrEnum):
    """State of one DM1 lamp."""

    OFF = "off"
    ON = "on"
    SLOW_FLASH = "slow flash"
    FAST_FLASH = "fast flash"
    NOT_AVAILABLE = "not available"

    @property
    def lit(self) -> bool:
        return self in (LampState.ON, LampState.SLOW_FLASH, LampState.FAST_FLASH)


_FROM_LIB = {
    j1939.DtcLamp.OFF: LampState.OFF,
    j1939.DtcLamp.ON: LampState.ON,
    j1939.DtcLamp.ON_SLOW_FLASH: LampState.SLOW_FLASH,
    j1939.DtcLamp.ON_FAST_FLASH: LampState.FAST_FLASH,
    j1939.DtcLamp.NA: LampState.NOT_AVAILABLE,
}
_TO_LIB = {v: k for k, v in _FROM_LIB.items()}

LAMPS = ("ProtectLamp", "AmberWarningLamp", "RedStopLamp", "MalfunctionLamp")
"""DM1 lamps in the order of their bit pairs in byte 1 (protect bits 1-2 ... MIL bits 7-8)."""
_LIB_KEYS = ("pl", "awl", "rsl", "mil")


@dataclass(frozen=True, order=True)
class Dtc:
    """One diagnostic trouble code: suspect parameter, failure mode and occurrence count."""

    spn: int
    fmi: int
    oc: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"spn": self.spn, "fmi": self.fmi, "oc": self.oc}


@dataclass(frozen=True)
class Dm1:
    """A decoded DM1: the four lamps and the active DTCs."""

    lamps: Mapping[str, LampState]
    dtcs: tuple[Dtc, ...]

    @property
    def level(self) -> AlarmLevel:
        """Red stop lamp lit: alarm; another lamp lit or any DTC active: warning."""
        if self.lamps.get("RedStopLamp", LampState.OFF).lit:
            return AlarmLevel.ALARM
        if self.dtcs or any(state.lit for state in self.lamps.values()):
            return AlarmLevel.WARNING
        return AlarmLevel.OK


def parse_dm1(data: bytes | bytearray | list[int]) -> Dm1:
    """Decode a DM1 payload (single frame or reassembled by TP); raises DecodeError."""
    raw = bytes(data)
    n = len(raw)
    if n < 6 or (n != 8 and (n - 2) % 4 != 0):
        raise DecodeError(f"DM1: expected 8 bytes or 2 + 4 per DTC, found {n} bytes")
    lamp = j1939.DtcLamp()
    lamps = {
        name: _FROM_LIB[lamp.get_status((raw[0] >> (2 * i)) & 3, (raw[1] >> (2 * i)) & 3)]
        for i, name in enumerate(LAMPS)
    }
    dtcs: list[Dtc] = []
    for i in range((n - 2) // 4):
        word = int.from_bytes(raw[2 + 4 * i:6 + 4 * i], "little")
        if word in (0, 0xFFFFFFFF):  # "no DTC" placeholder, or padding
            continue
        d = j1939.DTC(dtc=word & 0x7FFFFFFF)  # bit 31 is the (obsolete) conversion method
        dtcs.append(Dtc(int(d.spn), int(d.fmi), int(d.oc)))
    return Dm1(lamps, tuple(dtcs))


def dm1_payload(lamps: Mapping[str, LampState], dtcs: Iterable[Dtc]) -> list[int]:
    """Encode a DM1: 8 bytes with no or one DTC (padded), 2 + 4 per DTC with more (needs TP)."""
    status = {key: _TO_LIB[lamps.get(name, LampState.OFF)] for key, name in zip(_LIB_KEYS, LAMPS, strict=True)}
    data: list[int] = list(j1939.DtcLamp().get_data(status))
    items = list(dtcs)
    for d in items:
        data += list(j1939.DTC(spn=d.spn, fmi=d.fmi, oc=d.oc).dtc.to_bytes(4, "little"))
    if not items:
        data += [0, 0, 0, 0]
    return data + [0xFF] * (8 - len(data)) if len(data) < 8 else data


def dtcs_json(dtcs: Iterable[Dtc]) -> str:
    """The active-DTC list as compact JSON, e.g. ``[{"spn": 520200, "fmi": 0, "oc": 1}]``."""
    return json.dumps([d.as_dict() for d in dtcs], separators=(",", ":"))


class AckControl(IntEnum):
    """Control byte of the acknowledgement PGN 0xE800."""

    ACK = 0
    NACK = 1
    ACCESS_DENIED = 2
    CANNOT_RESPOND = 3


@dataclass(frozen=True)
class Acknowledgement:
    """A decoded acknowledgement (PGN 0xE800)."""

    control: AckControl | int
    group_function: int
    address: int
    pgn: int


def parse_ack(data: bytes | bytearray) -> Acknowledgement | None:
    """Decode an acknowledgement payload; None if it is too short."""
    if len(data) < 8:
        return None
    control: AckControl | int = data[0]
    if data[0] in AckControl._value2member_map_:
        control = AckControl(data[0])
    return Acknowledgement(control, data[1], data[4], data[5] | data[6] << 8 | data[7] << 16)


def ack_payload(control: AckControl, pgn: int, address: int, group_function: int = 0xFF) -> list[int]:
    """Encode an acknowledgement of `pgn` to the requester at `address`."""
    return [int(control), group_function, 0xFF, 0xFF, address & 0xFF, pgn & 0xFF, (pgn >> 8) & 0xFF, (pgn >> 16) & 0xFF]
