"""A bench bus that makes its own traffic, paced, in the process that reads it (no generator process).

`paced_bus` is a `BusFactory`: the bus it opens answers `recv` with the bench traffic of one bus
(`Traffic`, sequence numbers and all) at a set frame rate, each frame stamped with the time it
was due, as if it had just arrived on the wire. It starts when the gate file (its options name
it) holds the start time, so every bus of every process starts on the same instant. A reader
that falls behind gets the frames it missed at once (a backlog, as a socket buffer would hold),
and the edge's bounded queue drops what it cannot take (counted lost).

Its cost per frame is building one `can.Message`, which python-can's own `recv` pays too; what it
leaves out is the system call and the copy from the kernel, and any generator on the cores.
Picklable by name, so worker processes open it as well as the main process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import can

from emsbms.bench.traffic import Traffic
from emsbms.can.config import BusConfig


class PacedBus:
    """The traffic of bench bus `options["bench_bus"]`, at `options["rate"]` frames/s for `options["frames"]`."""

    def __init__(self, config: BusConfig) -> None:
        o = config.options
        self.bus = int(o["bench_bus"])
        self.traffic = Traffic(self.bus + 1, int(o["devices"]))
        self.streams = self.traffic.streams[self.bus]
        self.rate = float(o["rate"])
        self.frames = int(o["frames"])
        self.gate = Path(str(o["gate"]))
        self.start: float | None = None
        self.n = 0

    def _wait_gate(self, timeout: float) -> bool:
        try:
            self.start = float(json.loads(self.gate.read_text(encoding="ascii"))["start"])
            return True
        except (OSError, ValueError, KeyError):
            time.sleep(min(timeout, 0.01))
            return False

    def recv(self, timeout: float | None = None) -> can.Message | None:
        wait = 0.1 if timeout is None else timeout
        if self.start is None and not self._wait_gate(wait):
            return None
        assert self.start is not None
        if self.n >= self.frames:
            time.sleep(min(wait, 0.05))
            return None
        due = self.start + self.n / self.rate
        ahead = due - time.time()
        if ahead > 0:
            if ahead > wait:
                time.sleep(wait)
                return None
            time.sleep(ahead)
        n = self.n
        self.n = n + 1
        k = n % len(self.streams)
        return can.Message(arbitration_id=self.streams[k].arbitration_id, is_extended_id=False,
                           data=self.traffic.data(self.bus, k, n // len(self.streams)), timestamp=due)

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        """The edge's own frames go nowhere."""

    def shutdown(self) -> None:
        """Nothing to close."""


def paced_bus(config: BusConfig) -> Any:
    """The `BusFactory` of paced buses."""
    return PacedBus(config)


def sent_counts(traffic: Traffic, bus: int, frames: int) -> dict[str, int]:
    """Frames per stream address of bus `bus` after `frames` frames (streams take turns)."""
    streams = traffic.streams[bus]
    return {s.address: (frames - k + len(streams) - 1) // len(streams) for k, s in enumerate(streams)}
