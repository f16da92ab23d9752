"""Core scenario: the cycle's time with `devices` strings and the three shipped controllers, against the snapshot
alone.

A `Registry` holds `devices` strings of `CHANNELS` channels each (the ones the controllers read, the rest
like a BMS's other measurements) plus their two current commands with profile limits, all CommState OK, SoCs
spread 20-80 %. Measured, thread CPU time per call, the median of `rounds`: `Registry.snapshot()` alone; the
process image (`CycleRunner.image`: the snapshot and the command limits); `Cycle.step` (the controllers on a
ready image); and one whole cycle (`CycleRunner.run_once`: image, step, the virtual channels and
core/CycleTime published to the registry) with a real `CommandDispatcher` whose writer acks at once (its
arbitration runs on the cycle's thread; writes go to the devices' workers, and in the steady state nothing has
changed, so nothing is sent). Ratios are against the snapshot alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from emsbms.core.cycle import Cycle, CycleRunner
from emsbms.core.dispatcher import CommandDispatcher
from emsbms.core.registry import build_controllers
from emsbms.edge.registry import Registry
from emsbms.types import ChannelInfo, ChannelKind, CommandResult, CommandStatus, CommState, Sample

READ = {"Soc": ("%", 50.0), "Capacity": ("Ah", 100.0), "ChargeMaxCurrent": ("A", 50.0),
        "DischargeMaxCurrent": ("A", 80.0), "ChargeMaxVoltage": ("V", 56.8), "DischargeMinVoltage": ("V", 44.8)}
CHANNELS = 24
"""Channels per string (the controllers read 6 of them, plus 2 commands and CommState)."""


class Acker:
    """A writer that acknowledges every write at once, and counts them."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, address: str, value: float, timeout: float = 2.0) -> CommandResult:
        self.writes += 1
        return CommandResult(address, value, CommandStatus.ACKED, "bench")


@dataclass
class CoreResult:
    devices: int
    channels: int
    snapshot_us: float  # Registry.snapshot()
    image_us: float  # CycleRunner.image: snapshot + command limits
    step_us: float  # Cycle.step on a ready image: the three controllers
    cycle_us: float  # CycleRunner.run_once: image, step, publish
    cycle_vs_snapshot: float
    setpoints: int  # setpoints of one cycle
    writes: int  # writes the dispatcher carried out (the first cycle's, then only changes)


def registry(devices: int) -> Registry:
    reg = Registry()
    infos: list[ChannelInfo] = []
    samples: list[Sample] = []
    now = time.time_ns() // 1000
    for i in range(devices):
        d = f"bms_{i}"
        infos.append(ChannelInfo(f"{d}/CommState", "", ChannelKind.STATE))
        samples.append(Sample(f"{d}/CommState", CommState.OK, now))
        for name, (unit, value) in READ.items():
            infos.append(ChannelInfo(f"{d}/{name}", unit))
            samples.append(Sample(f"{d}/{name}", 20.0 + 60.0 * i / max(1, devices - 1) if name == "Soc" else value,
                                  now))
        for n in range(CHANNELS - len(READ)):
            infos.append(ChannelInfo(f"{d}/Other{n}", "V"))
            samples.append(Sample(f"{d}/Other{n}", 3.3, now))
        for name, top in (("SetChargeCurrent", 200.0), ("SetDischargeCurrent", 250.0)):
            infos.append(ChannelInfo(f"{d}/{name}", "A", ChannelKind.COMMAND, minimum=0.0, maximum=top))
    reg.declare(infos)
    reg.apply(samples)
    return reg


def controllers(devices: int) -> Cycle:
    strings = [f"bms_{i}" for i in range(devices)]
    return Cycle(build_controllers([
        {"name": "site", "type": "site-limits", "strings": strings},
        {"name": "limits", "type": "limit-enforcement", "strings": strings},
        {"name": "balance", "type": "soc-balance", "strings": strings, "current_a": 1000.0},
    ]))


def _cpu_us(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.thread_time_ns()
        fn()
        times.append((time.thread_time_ns() - t0) / 1000)
    return round(statistics.median(times), 1)


class _Edge:
    def __init__(self, reg: Registry) -> None:
        self.registry = reg


def cost(devices: int = 128, rounds: int = 200) -> CoreResult:
    reg = registry(devices)
    acker = Acker()
    dispatcher = CommandDispatcher(acker, publish=reg.apply)
    runner = CycleRunner(_Edge(reg), controllers(devices), dispatcher)
    runner.run_once()  # declares the virtual channels
    now = time.time_ns() // 1000
    image = runner.image(now)
    count = sum(len(v) for v in runner.cycle.step(image, now).setpoints.values())
    snapshot_us = _cpu_us(reg.snapshot, rounds)
    image_us = _cpu_us(lambda: runner.image(now), rounds)
    step_us = _cpu_us(lambda: runner.cycle.step(image, now), rounds)
    cycle_us = _cpu_us(runner.run_once, rounds)
    dispatcher.stop()
    return CoreResult(devices, len(reg.addresses()), snapshot_us, image_us, step_us, cycle_us,
                      round(cycle_us / snapshot_us, 1), count, acker.writes)


def rows(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = [cost(8, 5)] if quick else [cost(32), cost(128)]
    table = [{"devices": r.devices, "channels": r.channels, "snapshot µs": r.snapshot_us, "image µs": r.image_us,
              "controllers µs": r.step_us, "cycle µs": r.cycle_us, "cycle ÷ snapshot": r.cycle_vs_snapshot,
              "setpoints": r.setpoints, "writes": r.writes} for r in results]
    return [asdict(r) for r in results], table
