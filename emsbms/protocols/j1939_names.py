"""J1939 NAMEs, PGN constants and identifier helpers shared by the adapter, simulator and scan.

A NAME is the 64-bit identity an ECU claims an address with; its fields are decoded by
can-j1939's ``j1939.Name``. The helpers here only turn it into typed, JSON-ready values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import j1939

PGN_REQUEST = 0xEA00
PGN_ADDRESS_CLAIMED = 0xEE00
PGN_ACKNOWLEDGEMENT = 0xE800
PGN_TP_CM = 0xEC00
PGN_TP_DT = 0xEB00
PGN_PROPRIETARY_A = 0xEF00
PGN_DM1 = 0xFECA
PGN_DM11 = 0xFED3

ADDRESS_NULL = 254
"""The address of an ECU that could not claim one (a "cannot claim" message comes from it)."""
ADDRESS_GLOBAL = 255
MAX_CLAIMABLE = 253

NAME_FIELDS = (
    "arbitrary_address_capable", "industry_group", "vehicle_system_instance", "vehicle_system",
    "function", "function_instance", "ecu_instance", "manufacturer_code", "identity_number",
)


@dataclass(frozen=True)
class NameFields:
    """The fields of a 64-bit J1939 NAME."""

    name: int
    arbitrary_address_capable: bool
    industry_group: int
    vehicle_system_instance: int
    vehicle_system: int
    function: int
    function_instance: int
    ecu_instance: int
    manufacturer_code: int
    identity_number: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form; the NAME itself also as a hex string."""
        out = asdict(self)
        out["name_hex"] = f"0x{self.name:016X}"
        return out


def decode_name(value: int) -> NameFields:
    """Split a NAME into its fields (through can-j1939's Name)."""
    n = j1939.Name(value=value)
    return NameFields(
        name=value,
        arbitrary_address_capable=bool(n.arbitrary_address_capable),
        industry_group=int(n.industry_group),
        vehicle_system_instance=int(n.vehicle_system_instance),
        vehicle_system=int(n.vehicle_system),
        function=int(n.function),
        function_instance=int(n.function_instance),
        ecu_instance=int(n.ecu_instance),
        manufacturer_code=int(n.manufacturer_code),
        identity_number=int(n.identity_number),
    )


def make_name(**fields: int) -> int:
    """Build a NAME from fields (names as in NAME_FIELDS; missing ones are 0)."""
    unknown = set(fields) - set(NAME_FIELDS)
    if unknown:
        raise ValueError(f"unknown NAME fields {sorted(unknown)}; expected some of {', '.join(NAME_FIELDS)}")
    value: int = j1939.Name(**fields).value
    return value


def pgn_and_destination(can_id: int) -> tuple[int, int, int]:
    """(PGN, destination address, source address) of a 29-bit J1939 identifier.

    For PDU1 (PF < 240) the PDU-specific byte is the destination and the PGN has it zeroed;
    for PDU2 it belongs to the PGN and the destination is global.
    """
    pgn = (can_id >> 8) & 0x3FFFF
    if (pgn >> 8) & 0xFF < 240:
        return pgn & 0x3FF00, pgn & 0xFF, can_id & 0xFF
    return pgn, ADDRESS_GLOBAL, can_id & 0xFF


def can_id_of(priority: int, pgn: int, source: int, destination: int = ADDRESS_GLOBAL) -> int:
    """The 29-bit identifier of a PGN sent by `source` (to `destination` for a PDU1 PGN)."""
    if (pgn >> 8) & 0xFF < 240:
        pgn = (pgn & 0x3FF00) | (destination & 0xFF)
    can_id: int = j1939.MessageId(priority=priority, parameter_group_number=pgn, source_address=source).can_id
    return can_id


def as_int(value: object, what: str, maximum: int) -> int:
    """An int option given as a number or a "0x.." string; raises ValueError naming `what`."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: expected an integer, found {value!r}")
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            number = int(text, 16) if text.startswith("0x") else int(text)
        except ValueError:
            raise ValueError(f"{what}: expected an integer or 0x hex string, found {value!r}") from None
    elif isinstance(value, int):
        number = value
    else:
        raise ValueError(f"{what}: expected an integer, found {type(value).__name__} {value!r}")
    if not 0 <= number <= maximum:
        raise ValueError(f"{what}: expected 0..{maximum:#x}, found {number:#x}")
    return number
