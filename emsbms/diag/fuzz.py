"""Fuzzing: random frames through every shipped profile's adapter and the registry, with counts.

``emsbms fuzz --frames 1000000`` runs it long; the test suite runs it short. Invariants checked:
no adapter raises (the dispatcher catches and counts what one raises, and the report lists it),
every frame is accounted for (decoded, bad, unknown, error, or a protocol frame the adapter
consumed), and no device channel is updated by a malformed frame.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import can

from emsbms.can.bus import BusRunner
from emsbms.edge.dispatch import Dispatcher
from emsbms.edge.registry import Registry
from emsbms.profile import list_shipped, load_profile
from emsbms.protocols import adapter_class
from emsbms.protocols.base import Adapter, DeviceConfig
from emsbms.site import BusConfig
from emsbms.types import ChannelKind

log = logging.getLogger(__name__)

FD_LENGTHS = (12, 16, 20, 24, 32, 48, 64)


@dataclass
class FuzzReport:
    """What a fuzz run fed and how the edge counted it."""

    frames: int = 0
    remote: int = 0
    error_frames_sent: int = 0
    fd_frames: int = 0
    device_ids: int = 0
    counted_error_frames: int = 0
    counted_bad: int = 0
    counted_unknown: int = 0
    counted_ok: int = 0
    measurement_updates: int = 0
    adapter_exceptions: int = 0
    """Exceptions the dispatchers caught from adapters (on_frame, tick): each one is a finding."""
    exceptions: list[str] = field(default_factory=list)
    """What raised: "<device>.<method>: <type> (<n>x)" per kind the dispatchers caught, and any
    exception that escaped a dispatcher."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fuzz_adapters() -> list[Adapter]:
    """One adapter per shipped profile (each gets a bus of its own in `run`)."""
    adapters: list[Adapter] = []
    for i, name in enumerate(list_shipped()):
        profile = load_profile(name)
        options = profile.model.options.get("demo_device", {})
        params = dict(options) if isinstance(options, dict) else {}
        device = DeviceConfig(name=f"dev{i}", bus="fuzz", profile=name, **params)
        try:
            adapters.append(adapter_class(profile.protocol)(device, profile))
        except Exception as e:  # a profile that cannot build an adapter is a finding, not a crash
            log.warning("fuzz: cannot build adapter for %s: %s", name, e)
    return adapters


def random_frame(rng: random.Random, keys: list[int]) -> can.Message:
    """A random frame: often a device's ID with a random length, else anything."""
    kind = rng.random()
    if kind < 0.05:
        return can.Message(arbitration_id=rng.choice([0x40, 0x204, 0x8, 0x20]), is_error_frame=True,
                           data=bytes(rng.getrandbits(8) for _ in range(8)), is_extended_id=False)
    if kind < 0.55 and keys:
        key = rng.choice(keys)
        ext = bool(key & (1 << 29))
        can_id = key & 0x1FFFFFFF
    else:
        ext = rng.random() < 0.5
        can_id = rng.getrandbits(29 if ext else 11)
    if rng.random() < 0.05:
        return can.Message(arbitration_id=can_id, is_extended_id=ext, is_remote_frame=True, dlc=rng.randrange(9))
    if rng.random() < 0.05:
        n = rng.choice(FD_LENGTHS)
        return can.Message(arbitration_id=can_id, is_extended_id=ext, is_fd=True,
                           data=bytes(rng.getrandbits(8) for _ in range(n)))
    n = rng.randrange(9)
    return can.Message(arbitration_id=can_id, is_extended_id=ext, data=bytes(rng.getrandbits(8) for _ in range(n)))


def run(frames: int = 10_000, seed: int = 0, batch: int = 256) -> FuzzReport:
    """Feed `frames` random frames through every shipped profile's adapter (one bus each) and a registry."""
    rng = random.Random(seed)
    adapters = fuzz_adapters()
    registry = Registry()
    dispatchers = []
    for i, a in enumerate(adapters):
        registry.declare(a.channels())
        runner = BusRunner(BusConfig(f"fuzz{i}", "virtual", f"fuzz{i}", 500_000))  # never opened
        dispatchers.append((Dispatcher(runner, [a], registry), sorted(a.frame_keys())))
    measurement = {i.address for a in adapters for i in a.channels() if i.kind is ChannelKind.MEASUREMENT}
    report = FuzzReport()

    def count(address: str, reading: object) -> None:
        if address in measurement:
            report.measurement_updates += 1

    registry.subscribe("*", count)
    t0 = 1_800_000_000.0
    for start in range(0, frames, batch):
        dispatcher, keys = rng.choice(dispatchers)
        msgs = [random_frame(rng, keys) for _ in range(min(batch, frames - start))]
        for j, m in enumerate(msgs):
            m.timestamp = t0 + (start + j) * 1e-4
            report.frames += 1
            report.remote += m.is_remote_frame
            report.error_frames_sent += m.is_error_frame
            report.fd_frames += m.is_fd
            report.device_ids += (m.arbitration_id | ((1 << 29) if m.is_extended_id else 0)) in keys
        try:
            dispatcher.handle(msgs)
            dispatcher.tick(int((t0 + start * 1e-4) * 1e6))
        except Exception as e:  # must never happen: the receive path swallows and counts
            report.exceptions.append(f"{type(e).__name__}: {e}")
    for d, _ in dispatchers:
        report.counted_error_frames += d.error_frames
        report.counted_bad += d.bad_frames
        report.counted_unknown += d.unknown_ids
        report.counted_ok += d.frames_ok
        report.adapter_exceptions += d.adapter_errors
        report.exceptions.extend(f"{kind} ({n}x)" for kind, n in d.caught.items())
    return report
