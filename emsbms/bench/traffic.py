"""Load generators: realistic BMS frames with sequence numbers, paced at a fraction of the bus's frame rate.

The traffic is the ``bench-lv.json`` profile (a Pylontech-like LV BMS, five 8-byte messages per
device, a 16-bit sequence number in bytes 6-7 of every frame, one counter per message of each
device). Devices on one bus differ by ``id_offset`` (0x100 apart). The rate is a fraction of the
bus's physical ceiling, computed from the real bit lengths of the frames sent
(:func:`emsbms.can.health.frame_bits`, stuffing included). ``LossCounter`` counts lost, duplicated and
reordered frames from the sequence numbers.

Run as a module, it is the generator process of the ``udp_multicast`` variant::

    python -m emsbms.bench.traffic --ports 45000,45001 --devices 4 --bitrate 1000000 --load 1.0 --duration 3

It opens the buses, prints ``ready``, waits for a line on stdin, sends, and prints one JSON line
with what it sent.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from emsbms.bench import BenchError
from emsbms.can.health import frame_bits

PROFILE_PATH = Path(__file__).with_name("bench-lv.json")
"""The load profile the end-to-end scenarios run."""

MESSAGES: tuple[tuple[str, int], ...] = (
    ("Limits", 0x351), ("SocSoh", 0x355), ("Measurements", 0x356), ("Alarms", 0x359), ("Cells", 0x373),
)
"""(sequence channel suffix, CAN ID) of every message of a bench-lv device."""

ID_STEP = 0x100
MAX_DEVICES_PER_BUS = 5  # 0x373 + 4 * 0x100 is the last 11-bit ID that fits
SEQ_MOD = 1 << 16
VARIANTS = 64  # payload variants per stream (values change, as a real BMS's do)
MULTICAST_GROUP = "239.74.163.7"


def device_name(bus: int, device: int) -> str:
    """The bench's name of device `device` on bus `bus`."""
    return f"b{bus}d{device}"


@dataclass(frozen=True, slots=True)
class Stream:
    """One message of one device: its CAN ID and the channel its sequence number goes to."""

    bus: int
    device: int
    arbitration_id: int
    address: str


def _payloads(message: str, rng: random.Random) -> list[bytes]:
    """Bytes 0-5 of a message: plausible LV BMS values with noise (the sequence number follows)."""

    def u16(v: float) -> bytes:
        return (round(v) & 0xFFFF).to_bytes(2, "little")

    out = []
    for _ in range(VARIANTS):
        if message == "Limits":  # CVL 56.0 V, CCL ~100 A, DCL ~-120 A (0.1 units)
            p = u16(560) + u16(1000 + rng.randint(-50, 50)) + u16(-1200 + rng.randint(-50, 50))
        elif message == "SocSoh":
            soc = rng.uniform(20, 95)
            p = u16(soc) + u16(98) + u16(soc * 100)
        elif message == "Measurements":  # 52 V, -80..80 A, 20-35 °C
            p = u16(rng.uniform(5000, 5400)) + u16(rng.uniform(-800, 800)) + u16(rng.uniform(200, 350))
        elif message == "Alarms":  # no alarms, 8 modules
            p = bytes([0, 0, 0, 0, 8, 0])
        else:  # Cells: 3.28-3.36 V, 296-305 K
            lo = rng.randint(3280, 3320)
            p = u16(lo) + u16(lo + rng.randint(5, 40)) + u16(rng.randint(296, 305))
        out.append(p)
    return out


class Traffic:
    """The frames of `devices_per_bus` bench-lv devices on each of `buses` buses."""

    def __init__(self, buses: int, devices_per_bus: int, seed: int = 1) -> None:
        if not 1 <= devices_per_bus <= MAX_DEVICES_PER_BUS:
            raise BenchError(f"devices per bus: expected 1..{MAX_DEVICES_PER_BUS}, found {devices_per_bus}")
        rng = random.Random(seed)
        self.buses = buses
        self.devices_per_bus = devices_per_bus
        self.streams: list[list[Stream]] = []
        self.payloads: list[list[list[bytes]]] = []
        for b in range(buses):
            streams, payloads = [], []
            for d in range(devices_per_bus):
                for suffix, can_id in MESSAGES:
                    address = f"{device_name(b, d)}/Seq/{suffix}"
                    streams.append(Stream(b, d, can_id + ID_STEP * d, address))
                    payloads.append(_payloads(suffix, rng))
            self.streams.append(streams)
            self.payloads.append(payloads)

    def devices(self, bus_names: Sequence[str], profile: str = str(PROFILE_PATH)) -> list[dict[str, Any]]:
        """Site-file device tables for these devices, on the named buses."""
        return [
            {"name": device_name(b, d), "bus": bus_names[b], "profile": profile, "id_offset": ID_STEP * d}
            for b in range(self.buses) for d in range(self.devices_per_bus)
        ]

    def data(self, bus: int, stream: int, seq: int) -> bytes:
        """The payload of frame `seq` of a stream: its values, then the sequence number."""
        variants = self.payloads[bus][stream]
        return variants[seq % VARIANTS] + (seq % SEQ_MOD).to_bytes(2, "little")

    def mean_frame_bits(self) -> float:
        """Mean wire length of the traffic's frames (stuffing counted from their real bits)."""
        total = count = 0
        for b, streams in enumerate(self.streams):
            for i, s in enumerate(streams):
                for seq in range(VARIANTS):
                    total += frame_bits(s.arbitration_id, False, self.data(b, i, seq))
                    count += 1
        return total / count

    def frame_rate(self, bitrate: int, load: float) -> float:
        """Frames per second, per bus, that make `load` (1.0 = 100 %) of a bus at `bitrate`."""
        return load * bitrate / self.mean_frame_bits()


@dataclass
class Sent:
    """What a generator sent: per stream address, how many frames (sequence numbers 0..n-1)."""

    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    behind: int = 0  # frames the schedule wanted but the generator could not send in time (not sent)
    cpu_s: float = 0.0  # CPU time of the generator thread

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def rate(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0


Sender = Callable[[int, int, bytes], None]
"""send(bus index, arbitration id, data)."""

MAX_CATCH_UP_S = 0.01
"""A generator more than this far behind its schedule skips frames (a bus cannot go faster either)."""


def pace(traffic: Traffic, send: Sender, rate_per_bus: float, duration: float,
         stop: threading.Event | None = None, skip: Callable[[str, int], bool] | None = None) -> Sent:
    """Send the traffic on every bus at `rate_per_bus` frames/s for `duration` seconds, from one thread.

    Each bus cycles through its streams; every frame carries its stream's next sequence number.
    `skip(address, seq)` may leave a frame out on purpose (its number is used, the frame is not
    sent: a loss the counter must find).
    """
    cpu0 = time.thread_time()
    streams = traffic.streams
    seqs = [[0] * len(s) for s in streams]
    position = [0] * traffic.buses
    sent_per_bus = [0] * traffic.buses
    behind = 0
    max_behind = max(1, int(rate_per_bus * MAX_CATCH_UP_S))
    start = time.perf_counter()
    elapsed = 0.0
    while elapsed < duration and not (stop is not None and stop.is_set()):
        due = int(rate_per_bus * elapsed)
        idle = True
        for b in range(traffic.buses):
            n = due - sent_per_bus[b]
            if n > max_behind:  # behind schedule: skip what a real bus would not have carried either
                behind += n - max_behind
                sent_per_bus[b] += n - max_behind
                n = max_behind
            if n <= 0:
                continue
            idle = False
            bus_streams, bus_seqs = streams[b], seqs[b]
            k = position[b]
            for _ in range(n):
                s = bus_streams[k]
                seq = bus_seqs[k]
                bus_seqs[k] = seq + 1
                if skip is None or not skip(s.address, seq):
                    send(b, s.arbitration_id, traffic.data(b, k, seq))
                k = (k + 1) % len(bus_streams)
            position[b] = k
            sent_per_bus[b] += n
        if idle:
            time.sleep(0.0005)
        elapsed = time.perf_counter() - start
    counts = {s.address: seqs[b][i] for b, bus_streams in enumerate(streams) for i, s in enumerate(bus_streams)}
    return Sent(counts, elapsed, behind, time.thread_time() - cpu0)


def bus_sender(buses: Sequence[can.BusABC], extended: bool = False) -> Sender:
    """A Sender through python-can buses (one reusable Message per call site; send copies it)."""
    msg = can.Message(is_extended_id=extended)

    def send(bus: int, arbitration_id: int, data: bytes) -> None:
        msg.arbitration_id = arbitration_id
        msg.data = bytearray(data)
        msg.dlc = len(data)
        buses[bus].send(msg)

    return send


class LossCounter:
    """Counts frames per stream from their sequence numbers: received, lost, duplicated, reordered.

    Feed it ``(stream, seq)`` in arrival order; ``finish(sent)`` adds the frames missing after the
    last one received (a stream never seen lost everything it sent).
    """

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.received = 0
        self.gaps = 0  # frames missing between two received ones
        self.duplicates = 0
        self.reordered = 0
        self.tail_lost = 0

    def see(self, stream: str, seq: int) -> None:
        self.received += 1
        last = self.last.get(stream)
        if last is None:
            self.gaps += seq  # frames 0..seq-1 never arrived
            self.last[stream] = seq
            return
        step = (seq - last) % SEQ_MOD
        if step == 1:
            self.last[stream] = seq
        elif step == 0:
            self.duplicates += 1
        elif step > SEQ_MOD // 2:  # an older number arriving late
            self.reordered += 1
        else:
            self.gaps += step - 1
            self.last[stream] = seq

    def finish(self, sent: dict[str, int]) -> int:
        """Add the tail losses against what was sent; returns the total lost."""
        self.tail_lost = 0
        for stream, count in sent.items():
            if count == 0:
                continue
            last = self.last.get(stream)
            if last is None:
                self.tail_lost += count
            else:
                self.tail_lost += (count - 1 - last) % SEQ_MOD
        return self.lost

    @property
    def lost(self) -> int:
        return self.gaps + self.tail_lost


def _main(argv: list[str] | None = None) -> int:
    """The generator process of the udp_multicast variant."""
    parser = argparse.ArgumentParser(prog="python -m emsbms.bench.traffic")
    parser.add_argument("--ports", required=True, help="comma-separated udp_multicast ports, one per bus")
    parser.add_argument("--group", default=MULTICAST_GROUP)
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--bitrate", type=int, default=1_000_000)
    parser.add_argument("--load", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=3.0)
    args = parser.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",")]
    traffic = Traffic(len(ports), args.devices)
    buses = [can.Bus(interface="udp_multicast", channel=args.group, port=p) for p in ports]
    try:
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        sys.stdin.readline()
        rate = traffic.frame_rate(args.bitrate, args.load)
        # a udp_multicast bus also receives its own frames; nobody reads them here: the kernel drops
        # them once this socket's buffer is full, which costs the edge's sockets nothing
        sent = pace(traffic, bus_sender(buses), rate, args.duration)
        sys.stdout.write(json.dumps({"counts": sent.counts, "seconds": sent.seconds, "behind": sent.behind,
                                     "cpu_s": sent.cpu_s}) + "\n")
        sys.stdout.flush()
    finally:
        for bus in buses:
            bus.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
