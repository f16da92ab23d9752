"""CANopen code tables: NMT states, SDO abort codes and EMCY error codes with their meanings (CiA 301)."""

from __future__ import annotations

from enum import StrEnum

from canopen.emcy import EmcyError
from canopen.sdo.exceptions import SdoAbortedError


class NmtState(StrEnum):
    """NMT state of a CANopen node, from its heartbeat state byte (the `NmtState` channel)."""

    UNKNOWN = "UNKNOWN"  # no heartbeat seen yet
    INITIALISING = "INITIALISING"  # boot-up (0x00)
    STOPPED = "STOPPED"  # 0x04
    OPERATIONAL = "OPERATIONAL"  # 0x05
    PRE_OPERATIONAL = "PRE-OPERATIONAL"  # 0x7F

    @classmethod
    def from_byte(cls, state: int) -> NmtState:
        """The state of a heartbeat state byte (the toggle bit masked off)."""
        return _HEARTBEAT_STATES.get(state & 0x7F, cls.UNKNOWN)


_HEARTBEAT_STATES = {
    0x00: NmtState.INITIALISING,
    0x04: NmtState.STOPPED,
    0x05: NmtState.OPERATIONAL,
    0x7F: NmtState.PRE_OPERATIONAL,
}

NMT_START = 0x01
NMT_STOP = 0x02
NMT_PRE_OPERATIONAL = 0x80
NMT_RESET_NODE = 0x81
NMT_RESET_COMMUNICATION = 0x82

# COB-ID bases of the predefined connection set (CiA 301); add the node ID.
COB_EMCY = 0x080
COB_TPDO = (0x180, 0x280, 0x380, 0x480)
COB_RPDO = (0x200, 0x300, 0x400, 0x500)
COB_SDO_TX = 0x580  # server -> client (responses)
COB_SDO_RX = 0x600  # client -> server (requests)
COB_HEARTBEAT = 0x700

ABORT_TIMEOUT = 0x05040000
ABORT_READ_ONLY = 0x06010002
ABORT_WRITE_ONLY = 0x06010001
ABORT_NO_OBJECT = 0x06020000
ABORT_LENGTH = 0x06070010
ABORT_NO_SUBINDEX = 0x06090011
ABORT_RANGE = 0x06090030
ABORT_TOO_HIGH = 0x06090031
ABORT_TOO_LOW = 0x06090032
ABORT_DEVICE_STATE = 0x08000022

SDO_ABORT_TEXTS: dict[int, str] = {
    ABORT_TIMEOUT: "SDO protocol timed out",
    0x05040001: "unknown SDO command",
    0x06010000: "unsupported access to an object",
    ABORT_WRITE_ONLY: "read of a write-only object",
    ABORT_READ_ONLY: "write to a read-only object",
    ABORT_NO_OBJECT: "object does not exist",
    0x06040041: "object cannot be mapped to a PDO",
    0x06040042: "PDO length exceeded",
    0x06060000: "hardware error",
    ABORT_LENGTH: "data type or length mismatch",
    0x06070012: "data too long",
    0x06070013: "data too short",
    ABORT_NO_SUBINDEX: "sub-index does not exist",
    ABORT_RANGE: "value range exceeded",
    ABORT_TOO_HIGH: "value too high",
    ABORT_TOO_LOW: "value too low",
    0x060A0023: "resource not available",
    0x08000000: "general error",
    0x08000020: "data cannot be stored",
    0x08000021: "data cannot be stored (local control)",
    ABORT_DEVICE_STATE: "wrong device state",
}


def abort_text(code: int) -> str:
    """An SDO abort code and its meaning, e.g. ``0x06090031 value too high``."""
    meaning = SDO_ABORT_TEXTS.get(code) or SdoAbortedError.CODES.get(code, "unknown abort code").lower()
    return f"0x{code:08X} {meaning}"


EMCY_TEXTS: dict[int, str] = {
    0x1000: "generic error",
    0x2000: "current",
    0x2100: "current, device input side",
    0x2200: "current inside the device",
    0x2300: "current, device output side",
    0x2310: "continuous over-current",
    0x3000: "voltage",
    0x3100: "mains voltage",
    0x3110: "mains over-voltage",
    0x3120: "mains under-voltage",
    0x3200: "voltage inside the device",
    0x3210: "over-voltage inside the device",
    0x3220: "under-voltage inside the device",
    0x4000: "temperature",
    0x4100: "ambient temperature",
    0x4110: "excess ambient temperature",
    0x4120: "too low ambient temperature",
    0x4200: "device temperature",
    0x4210: "excess device temperature",
    0x4220: "too low device temperature",
    0x5000: "device hardware",
    0x6000: "device software",
    0x7000: "additional modules",
    0x8000: "monitoring",
    0x8100: "communication",
    0x8110: "CAN overrun (objects lost)",
    0x8120: "CAN in error passive mode",
    0x8130: "life guard or heartbeat error",
    0x8140: "recovered from bus off",
    0x8150: "CAN-ID collision",
    0x8200: "protocol error",
    0x8210: "PDO not processed due to length error",
    0x8220: "PDO length exceeded",
    0x8250: "RPDO timeout",
    0x9000: "external error",
    0xF000: "additional functions",
    0xFF00: "device specific",
}

# Error register (0x1001) bits
REGISTER_GENERIC = 0x01
REGISTER_CURRENT = 0x02
REGISTER_VOLTAGE = 0x04
REGISTER_TEMPERATURE = 0x08
REGISTER_COMMUNICATION = 0x10
REGISTER_PROFILE = 0x20
REGISTER_MANUFACTURER = 0x80


def emcy_text(code: int) -> str:
    """The meaning of an EMCY error code: exact when known, else its class (CiA 301)."""
    if code & 0xFF00 == 0:
        return "no error"
    text = EMCY_TEXTS.get(code)
    if text is None:
        text = EMCY_TEXTS.get(code & 0xFF00) or EmcyError(code, 0, b"", 0.0).get_desc().lower() or "unknown"
    return text


def register_bits(code: int) -> int:
    """The error register (0x1001) bits a device sets for an EMCY code of this class."""
    if code & 0xFF00 == 0:
        return 0
    bits = REGISTER_GENERIC
    cls = code & 0xF000
    if cls == 0x2000:
        bits |= REGISTER_CURRENT
    elif cls == 0x3000:
        bits |= REGISTER_VOLTAGE
    elif cls == 0x4000:
        bits |= REGISTER_TEMPERATURE
    elif code & 0xFF00 in (0x8100, 0x8200):
        bits |= REGISTER_COMMUNICATION
    elif code & 0xFF00 == 0xFF00:
        bits |= REGISTER_MANUFACTURER
    return bits
