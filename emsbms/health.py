"""Bus health: SocketCAN error-frame decoding, frame bit lengths and bus load, latency percentiles.

Pure functions and small stateful meters; no I/O. The dispatcher feeds them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum

# linux/can/error.h: error classes in the CAN ID of an error frame
CAN_ERR_TX_TIMEOUT = 0x001
CAN_ERR_LOSTARB = 0x002
CAN_ERR_CRTL = 0x004
CAN_ERR_PROT = 0x008
CAN_ERR_TRX = 0x010
CAN_ERR_ACK = 0x020
CAN_ERR_BUSOFF = 0x040
CAN_ERR_BUSERROR = 0x080
CAN_ERR_RESTARTED = 0x100
CAN_ERR_CNT = 0x200

# data[1]: controller problems
CAN_ERR_CRTL_RX_OVERFLOW = 0x01
CAN_ERR_CRTL_TX_OVERFLOW = 0x02
CAN_ERR_CRTL_RX_WARNING = 0x04
CAN_ERR_CRTL_TX_WARNING = 0x08
CAN_ERR_CRTL_RX_PASSIVE = 0x10
CAN_ERR_CRTL_TX_PASSIVE = 0x20
CAN_ERR_CRTL_ACTIVE = 0x40

_CLASS_NAMES = {
    CAN_ERR_TX_TIMEOUT: "tx timeout", CAN_ERR_LOSTARB: "lost arbitration", CAN_ERR_CRTL: "controller",
    CAN_ERR_PROT: "protocol violation", CAN_ERR_TRX: "transceiver", CAN_ERR_ACK: "no ack",
    CAN_ERR_BUSOFF: "bus-off", CAN_ERR_BUSERROR: "bus error", CAN_ERR_RESTARTED: "restarted",
    CAN_ERR_CNT: "error counters",
}
_CRTL_NAMES = {
    CAN_ERR_CRTL_RX_OVERFLOW: "rx overflow", CAN_ERR_CRTL_TX_OVERFLOW: "tx overflow",
    CAN_ERR_CRTL_RX_WARNING: "rx warning", CAN_ERR_CRTL_TX_WARNING: "tx warning",
    CAN_ERR_CRTL_RX_PASSIVE: "rx passive", CAN_ERR_CRTL_TX_PASSIVE: "tx passive",
    CAN_ERR_CRTL_ACTIVE: "back to error active",
}
_PROT_TYPES = {
    0x01: "single bit error", 0x02: "frame format error", 0x04: "bit stuffing error",
    0x08: "unable to send dominant bit", 0x10: "unable to send recessive bit", 0x20: "bus overload",
    0x40: "active error announcement", 0x80: "error while transmitting",
}


class ErrorState(StrEnum):
    """Controller error state (the same names as BusState's CAN states)."""

    ERROR_ACTIVE = "ERROR_ACTIVE"
    ERROR_WARNING = "ERROR_WARNING"
    ERROR_PASSIVE = "ERROR_PASSIVE"
    BUS_OFF = "BUS_OFF"


@dataclass(frozen=True)
class ErrorFrame:
    """A decoded SocketCAN error frame."""

    classes: tuple[str, ...]
    details: tuple[str, ...]
    state: ErrorState | None  # the state the frame announces, if any
    tx_errors: int | None
    rx_errors: int | None
    lost_arbitration_bit: int | None = None

    @property
    def text(self) -> str:
        parts = list(self.classes) + list(self.details)
        if self.tx_errors is not None:
            parts.append(f"tec={self.tx_errors} rec={self.rx_errors}")
        return ", ".join(parts) or "error frame"


def state_from_counters(tec: int, rec: int) -> ErrorState:
    """CAN fault confinement: warning from 96, passive from 128, bus-off when TEC passes 255."""
    if tec > 255:
        return ErrorState.BUS_OFF
    worst = max(tec, rec)
    if worst >= 128:
        return ErrorState.ERROR_PASSIVE
    if worst >= 96:
        return ErrorState.ERROR_WARNING
    return ErrorState.ERROR_ACTIVE


def decode_error_frame(can_id: int, data: bytes | bytearray) -> ErrorFrame:
    """Decode an error frame's class bits (CAN ID) and data bytes as linux/can/error.h defines them."""
    d = bytes(data).ljust(8, b"\0")
    classes = tuple(name for bit, name in _CLASS_NAMES.items() if can_id & bit)
    details: list[str] = []
    state: ErrorState | None = None
    if can_id & CAN_ERR_CRTL:
        details += [name for bit, name in _CRTL_NAMES.items() if d[1] & bit]
        if d[1] & (CAN_ERR_CRTL_RX_PASSIVE | CAN_ERR_CRTL_TX_PASSIVE):
            state = ErrorState.ERROR_PASSIVE
        elif d[1] & (CAN_ERR_CRTL_RX_WARNING | CAN_ERR_CRTL_TX_WARNING):
            state = ErrorState.ERROR_WARNING
        elif d[1] & CAN_ERR_CRTL_ACTIVE:
            state = ErrorState.ERROR_ACTIVE
    if can_id & CAN_ERR_PROT:
        details += [name for bit, name in _PROT_TYPES.items() if d[2] & bit]
        if d[3]:
            details.append(f"location 0x{d[3]:02X}")
    if can_id & CAN_ERR_RESTARTED:
        state = ErrorState.ERROR_ACTIVE
    if can_id & CAN_ERR_BUSOFF:
        state = ErrorState.BUS_OFF
    tec = rec = None
    if can_id & CAN_ERR_CNT:
        tec, rec = d[6], d[7]
        if state is None:
            state = state_from_counters(tec, rec)
    lost = d[0] if can_id & CAN_ERR_LOSTARB else None
    return ErrorFrame(classes, tuple(details), state, tec, rec, lost)


# -- frame bit lengths ----------------------------------------------------------------------------

def _stuff_table() -> list[list[tuple[int, int]]]:
    """For a state (last bit, run length 1-5) and a byte (MSB first): (stuff bits, new state)."""
    table: list[list[tuple[int, int]]] = []
    for state in range(10):
        row = []
        for byte in range(256):
            last, run = state // 5, state % 5 + 1
            stuffed = 0
            for i in range(7, -1, -1):
                bit = (byte >> i) & 1
                if bit == last:
                    run += 1
                else:
                    last, run = bit, 1
                if run == 5:
                    stuffed += 1
                    last, run = 1 - last, 1  # the stuff bit starts a new run
            row.append((stuffed, last * 5 + run - 1))
        table.append(row)
    return table


_STUFF = _stuff_table()
_HEADER_CACHE: dict[tuple[int, bool, int, bool], tuple[int, int, int]] = {}


def _header(arbitration_id: int, is_extended: bool, dlc: int, remote: bool) -> tuple[int, int, int]:
    """(bits, stuff bits, stuff state) of SOF through DLC."""
    key = (arbitration_id, is_extended, dlc, remote)
    cached = _HEADER_CACHE.get(key)
    if cached is not None:
        return cached
    rtr = 1 if remote else 0
    if is_extended:
        bits = [0] + [(arbitration_id >> (28 - i)) & 1 for i in range(11)] + [1, 1]  # SOF, base ID, SRR, IDE
        bits += [(arbitration_id >> (17 - i)) & 1 for i in range(18)] + [rtr, 0, 0]  # ext ID, RTR, r1, r0
    else:
        bits = [0] + [(arbitration_id >> (10 - i)) & 1 for i in range(11)] + [rtr, 0, 0]  # SOF, ID, RTR, IDE, r0
    bits += [(dlc >> (3 - i)) & 1 for i in range(4)]
    stuffed, last, run = 0, bits[0], 0
    for bit in bits:
        if bit == last:
            run += 1
        else:
            last, run = bit, 1
        if run == 5:
            stuffed += 1
            last, run = 1 - last, 1
    result = (len(bits), stuffed, last * 5 + run - 1)
    if len(_HEADER_CACHE) < 65536:
        _HEADER_CACHE[key] = result
    return result


CRC_STUFF_ESTIMATE = 2  # CRC-15 is not computed; about 15/8 stuff bits on average
TRAILER_BITS = 15 + 1 + 1 + 1 + 7 + 3  # CRC, CRC delimiter, ACK slot, ACK delimiter, EOF, interframe space


def frame_bits(arbitration_id: int, is_extended: bool, data: bytes | bytearray, remote: bool = False,
               dlc: int | None = None) -> int:
    """Bits a classic CAN frame occupies on the wire, interframe space included.

    Header and data stuffing are counted exactly from the frame's own bits; the CRC's stuffing is
    estimated. Without stuffing an 8-byte 11-bit frame is 111 bits and a 29-bit one 131.
    """
    n = len(data) if dlc is None else dlc
    head_bits, stuffed, state = _header(arbitration_id, is_extended, min(n, 15), remote)
    if not remote:
        table = _STUFF
        for byte in data:
            s, state = table[state][byte]
            stuffed += s
    data_bits = 0 if remote else 8 * len(data)
    return head_bits + data_bits + TRAILER_BITS + stuffed + CRC_STUFF_ESTIMATE


def frame_bits_unstuffed(is_extended: bool, nbytes: int) -> int:
    """Bits without stuffing: 47 + 8n (11-bit) or 67 + 8n (29-bit), interframe space included."""
    return (67 if is_extended else 47) + 8 * nbytes


class LoadMeter:
    """Bus load in % over a sliding window: Σ frame bits / (bitrate × window)."""

    def __init__(self, bitrate: int, window_s: float = 1.0) -> None:
        self.bitrate = bitrate
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._bits = 0

    def add(self, t: float, bits: int) -> None:
        self._events.append((t, bits))
        self._bits += bits

    def load(self, now: float) -> float:
        """Load in % over the window ending at `now` (seconds, the clock `add` used)."""
        cutoff = now - self.window_s
        ev = self._events
        while ev and ev[0][0] <= cutoff:
            self._bits -= ev.popleft()[1]
        return 100.0 * self._bits / (self.bitrate * self.window_s)


@dataclass
class LatencyMeter:
    """Rolling percentiles of frame-timestamp → registry-update latency, in µs."""

    size: int = 4096
    _values: deque[int] = field(default_factory=deque)

    def add(self, latency_us: int) -> None:
        if len(self._values) >= self.size:
            self._values.popleft()
        self._values.append(latency_us)

    def percentile(self, p: float) -> int | None:
        """The p-th percentile (nearest rank) of the window, or None when empty."""
        if not self._values:
            return None
        ordered = sorted(self._values)
        rank = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
        return ordered[rank]
