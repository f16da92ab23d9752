"""Bus health: SocketCAN error-frame decoding, frame bit lengths and bus load, latency percentiles.

Pure functions and small stateful meters; no I/O. The dispatcher feeds them.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

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
_RUN_TABLE: list[tuple[int, ...]] = []


def _run_table() -> tuple[int, ...]:
    """The hot path's table, built on first use (about 30 ms): entry [stuffed << 12 | state << 8 | byte]
    holds the next index, (stuffed + stuff bits of the byte) << 12 | new state << 8.

    One lookup per data byte. A byte adds at most 2 stuff bits, so 8 bytes stay far below the
    28 stuff bits the table has room for.
    """
    if not _RUN_TABLE:
        shared: dict[int, int] = {}
        table = [0] * (32 << 12)
        for stuffed in range(28):
            for state in range(10):
                base = (stuffed << 12) | (state << 8)
                row = _STUFF[state]
                for byte in range(256):
                    s, new = row[byte]
                    value = ((stuffed + s) << 12) | (new << 8)
                    table[base | byte] = shared.setdefault(value, value)
        _RUN_TABLE.append(tuple(table))
    return _RUN_TABLE[0]


_HEADER_CACHE: dict[int, tuple[int, int, int]] = {}


def _header(arbitration_id: int, is_extended: bool, dlc: int, remote: bool) -> tuple[int, int, int]:
    """(bits, stuff bits, stuff state) of SOF through DLC."""
    key = (arbitration_id << 7) | (is_extended << 6) | (dlc << 1) | remote
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
    key = (arbitration_id << 7) | (is_extended << 6) | ((n if n < 15 else 15) << 1) | remote
    head = _HEADER_CACHE.get(key) or _header(arbitration_id, is_extended, min(n, 15), remote)
    if remote:
        return head[0] + TRAILER_BITS + head[1] + CRC_STUFF_ESTIMATE
    if len(data) <= 8:
        table = _RUN_TABLE[0] if _RUN_TABLE else _run_table()
        index = head[2] << 8
        for byte in data:
            index = table[index | byte]
        stuffed = index >> 12
    else:  # longer than classic CAN: the plain table
        stuffed, state = 0, head[2]
        for byte in data:
            s, state = _STUFF[state][byte]
            stuffed += s
    return head[0] + 8 * len(data) + TRAILER_BITS + head[1] + stuffed + CRC_STUFF_ESTIMATE


def batch_bits(frames: Iterable[Any]) -> int:
    """Σ frame_bits of python-can messages, error frames left out: the dispatcher's per-batch load count."""
    table = _RUN_TABLE[0] if _RUN_TABLE else _run_table()
    cache = _HEADER_CACHE
    total = count = 0
    for m in frames:
        if m.is_error_frame:
            continue
        data = m.data
        aid, ext, remote, n = m.arbitration_id, m.is_extended_id, m.is_remote_frame, m.dlc
        if remote or len(data) > 8:
            total += frame_bits(aid, ext, data, remote, n)
            continue
        head = cache.get((aid << 7) | (ext << 6) | ((n if n < 15 else 15) << 1)) or _header(aid, ext, min(n, 15), False)
        index = head[2] << 8
        for byte in data:
            index = table[index | byte]
        total += head[0] + 8 * len(data) + head[1] + (index >> 12)
        count += 1
    return total + count * (TRAILER_BITS + CRC_STUFF_ESTIMATE)


def frame_bits_unstuffed(is_extended: bool, nbytes: int) -> int:
    """Bits without stuffing: 47 + 8n (11-bit) or 67 + 8n (29-bit), interframe space included."""
    return (67 if is_extended else 47) + 8 * nbytes


class LoadMeter:
    """Bus load in % over a sliding window: Σ frame bits / (bitrate × window).

    `start(now)` says when counting began; `full(now)` is True once a whole window has passed
    since, before which the load covers only part of the window and reads too low.
    """

    def __init__(self, bitrate: int, window_s: float = 1.0) -> None:
        self.bitrate = bitrate
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._bits = 0
        self.started: float | None = None

    def start(self, now: float) -> None:
        """Counting begins at `now` (the clock `add` and `load` use)."""
        self.started = now

    def full(self, now: float) -> bool:
        """True once the window ending at `now` lies wholly after `start`."""
        return self.started is not None and now - self.started >= self.window_s

    def add(self, t: float, bits: int) -> None:
        """Count `bits` sent or received at time `t` (one frame, or a batch of frames)."""
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

    def __post_init__(self) -> None:
        self._values = deque(self._values, maxlen=self.size)

    def add(self, latency_us: int) -> None:
        self._values.append(latency_us)

    def extend(self, latencies_us: Iterable[int]) -> None:
        """Add many latencies at once (the oldest fall out of the window)."""
        self._values.extend(latencies_us)

    def percentile(self, p: float) -> int | None:
        """The p-th percentile (nearest rank) of the window, or None when empty."""
        if not self._values:
            return None
        ordered = sorted(self._values)
        rank = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
        return ordered[rank]


class RateMeter:
    """Events per second over a sliding window, from a running total read now and then.

    `rate(now, total)` records the total and answers the rate over the readings that span at
    least one whole window, or None while they do not yet (the first readings after start cover
    an almost empty window: a rate of 0.0 there would be a false value, not a measurement).
    """

    def __init__(self, window_s: float = 1.0) -> None:
        self.window_s = window_s
        self._points: deque[tuple[float, int]] = deque()

    def rate(self, now: float, total: int) -> float | None:
        points = self._points
        points.append((now, total))
        cutoff = now - self.window_s
        while len(points) > 1 and points[1][0] <= cutoff:
            points.popleft()
        t0, n0 = points[0]
        if t0 > cutoff:
            return None
        return (total - n0) / (now - t0)


EXTENDED_KEY = 1 << 29
"""Set in a frame table key for an extended (29-bit) ID: the dispatch key of `emsbms.protocols.base`."""

MAX_IDS = 4096
"""IDs a frame table keeps per bus; frames of further IDs are only counted (`FrameTable.overflow`)."""

PERIOD_WEIGHT = 0.125
"""Weight of the newest interval in a frame's measured period (an exponential mean of 8 intervals)."""


class FrameStat(NamedTuple):
    """What a bus received of one ID: `key` is the arbitration ID (bit 29 set for an extended one)."""

    key: int
    frames: int
    last_s: float
    """Timestamp of the last frame (seconds, the frames' clock)."""
    period_s: float
    """Measured period: a mean of the last intervals; 0.0 until a second frame came."""
    dlc: int
    data: bytes
    previous: bytes
    """The data before its last change (equal to `data` while it never changed)."""
    changed_s: float
    """When the data last changed (0.0: never)."""

    @property
    def extended(self) -> bool:
        return bool(self.key & EXTENDED_KEY)

    @property
    def arbitration_id(self) -> int:
        return self.key & ~EXTENDED_KEY


class FrameTable:
    """The IDs one bus received, for the monitor's frames page, kept by the reader thread.

    `note(msg)` costs one dict lookup and a few stores per frame (measured in docs/bus-health.md);
    the data is kept by reference (python-can gives every frame its own bytearray), compared,
    and copied only by `stats()`. At most `max_ids` IDs are kept, so random IDs cannot grow it.
    """

    def __init__(self, max_ids: int = MAX_IDS) -> None:
        self.max_ids = max_ids
        self.overflow = 0
        self._seen: dict[int, list[Any]] = {}  # key -> [count, last_s, period_s, dlc, data, previous, changed_s]

    def note(self, msg: Any) -> None:
        """Count one received frame (error frames are not IDs: left out)."""
        if msg.is_error_frame:
            return
        aid = msg.arbitration_id
        key = aid | EXTENDED_KEY if msg.is_extended_id else aid
        entry = self._seen.get(key)
        ts = msg.timestamp
        data = msg.data
        if entry is None:
            if len(self._seen) >= self.max_ids:
                self.overflow += 1
                return
            self._seen[key] = [1, ts, 0.0, msg.dlc, data, data, 0.0]
            return
        n = entry[0]
        dt = ts - entry[1]
        entry[2] = dt if n == 1 else entry[2] + (dt - entry[2]) * PERIOD_WEIGHT
        entry[0] = n + 1
        entry[1] = ts
        entry[3] = msg.dlc
        if data != entry[4]:
            entry[5] = entry[4]
            entry[4] = data
            entry[6] = ts

    def stats(self) -> list[FrameStat]:
        """A copy of every ID's figures, by key (safe to call from another thread)."""
        items = list(self._seen.items())  # one C-level copy: atomic with respect to note()
        out = []
        for key, entry in items:
            n, last, period, dlc, data, previous, changed = tuple(entry)
            out.append(FrameStat(key, n, last, period, dlc, bytes(data), bytes(previous), changed))
        out.sort(key=lambda s: s.key)
        return out

    def __len__(self) -> int:
        return len(self._seen)
