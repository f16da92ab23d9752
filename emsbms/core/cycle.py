"""The core cycle: a process image, the controllers in order, setpoints to the dispatcher.

`Cycle.step` is pure (image and time in, `CycleResult` out); `CycleRunner` runs it on a thread
once per period against an edge's registry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from emsbms.core.controller import Clamp, Controller, ControllerOutput, Limits, ProcessImage, Source
from emsbms.edge.registry import Registry
from emsbms.errors import ConfigError
from emsbms.types import ChannelInfo, ChannelKind, Quality, Sample, Value

log = logging.getLogger(__name__)

ORDER = (Source.SAFETY, Source.AUTO)
"""The sources that run in a cycle, in this order (MANUAL values come from writes, not controllers)."""


@dataclass
class CycleResult:
    """One cycle's outcome: setpoints per source, clamps, virtual channels, events, its time."""

    now_us: int
    setpoints: dict[Source, dict[str, float]] = field(default_factory=dict)
    clamps: dict[str, Clamp] = field(default_factory=dict)
    channels: dict[str, Value] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


class Cycle:
    """The controllers of a site in their running order: SAFETY first, then AUTO, each by priority."""

    def __init__(self, controllers: Sequence[Controller], period_s: float = 1.0) -> None:
        if not period_s > 0:
            raise ConfigError(f"cycle period: expected a positive number of seconds, found {period_s!r}")
        names = [c.name for c in controllers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"controller names must be unique; used twice: {', '.join(twice)}")
        for c in controllers:
            if c.source not in ORDER:
                raise ConfigError(f"controller {c.name!r}: source must be safety or auto, found {c.source!r}")
        self.period_s = period_s
        self.controllers = sorted(controllers, key=lambda c: (ORDER.index(c.source), c.priority))

    def step(self, image: ProcessImage, now_us: int) -> CycleResult:
        """Run every controller once on `image`; a controller that raises loses its output for this cycle.

        Each controller sees in `setpoints_so_far` what the controllers before it set; the first
        value set for an address this cycle is the one kept.
        """
        result = CycleResult(now_us, {s: {} for s in ORDER})
        so_far: dict[str, float] = {}
        for c in self.controllers:
            try:
                out = c.run(image.with_setpoints(so_far), now_us)
                if not isinstance(out, ControllerOutput):
                    raise TypeError(f"run() returned {type(out).__name__}, expected ControllerOutput")
                mine = {sp.address: float(sp.value) for sp in out.setpoints}
            except Exception as e:
                log.debug("controller %s raised", c.name, exc_info=True)
                result.events.append(f"controller {c.name} raised {type(e).__name__}: {e}:"
                                     " its setpoints dropped this cycle")
                continue
            for address, value in mine.items():
                so_far.setdefault(address, value)
                result.setpoints[c.source].setdefault(address, value)
            if c.source is Source.SAFETY:
                for address, clamp in out.clamps.items():
                    old = result.clamps.get(address)
                    result.clamps[address] = clamp if old is None else old.merge(clamp)
            elif out.clamps:
                result.events.append(f"controller {c.name}: clamps ignored (only safety controllers set clamps)")
            result.channels.update(out.channels)
            result.units.update(out.units)
            result.events.extend(f"controller {c.name}: {e}" for e in out.events)
        return result


class EdgeLike(Protocol):
    """What the runner needs of an edge: its registry."""

    @property
    def registry(self) -> Registry: ...


class SetpointSink(Protocol):
    """What the runner hands the setpoints to (the CommandDispatcher)."""

    def submit(self, setpoints: Mapping[Source, Mapping[str, float]], clamps: Mapping[str, Clamp],
               now_us: int) -> object: ...

    def channels(self) -> list[ChannelInfo]: ...


def wall_us() -> int:
    return time.time_ns() // 1000


def monotonic_us() -> int:
    return time.monotonic_ns() // 1000


class CycleRunner:
    """Runs `cycle` once per period on its own thread against `edge.registry`.

    Each cycle: one registry snapshot as the process image, `cycle.step`, setpoints to the
    dispatcher, virtual channels to the registry, `core/CycleTime` (ms) and `core/Overruns`
    (cycles that took longer than the period) published, events to `on_event`.
    """

    def __init__(self, edge: EdgeLike, cycle: Cycle, dispatcher: SetpointSink, period_s: float | None = None,
                 on_event: Callable[[str], None] | None = None, clock: Callable[[], int] = monotonic_us,
                 wall: Callable[[], int] = wall_us) -> None:
        self.registry = edge.registry
        self.cycle, self.dispatcher = cycle, dispatcher
        self.period_us = int((cycle.period_s if period_s is None else period_s) * 1_000_000)
        if self.period_us <= 0:
            raise ConfigError(f"cycle period: expected a positive number of seconds, found {period_s!r}")
        self.on_event = on_event
        self._clock, self._wall = clock, wall
        self.cycles = 0
        self.overruns = 0
        self._declared: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.registry.declare([
            ChannelInfo("core/CycleTime", "ms", ChannelKind.STATE, "time the last core cycle took"),
            ChannelInfo("core/Overruns", "", ChannelKind.STATE, "core cycles that took longer than the period"),
            *dispatcher.channels(),
        ])

    def image(self, now_us: int) -> ProcessImage:
        """The process image: one registry snapshot, with the command channels' limits."""
        snap = self.registry.snapshot()
        limits: dict[str, Limits] = {}
        for address in self.registry.addresses():
            info = self.registry.info(address)
            if info.kind is ChannelKind.COMMAND:
                limits[address] = (info.minimum, info.maximum)
        return ProcessImage(snap, snap.taken_us, limits)

    def run_once(self) -> float:
        """One cycle now; returns the time it took in ms."""
        started = self._clock()
        now = self._wall()
        result = self.cycle.step(self.image(now), now)
        try:
            self.dispatcher.submit(result.setpoints, result.clamps, now)
        except Exception as e:  # the cycle goes on
            log.exception("the dispatcher refused the setpoints")
            result.events.append(f"dispatcher raised {type(e).__name__}: {e}")
        self._publish(result, now)
        took_us = self._clock() - started
        self.cycles += 1
        if took_us > self.period_us:
            self.overruns += 1
        took_ms = took_us / 1000
        self.registry.apply([Sample("core/CycleTime", round(took_ms, 3), now),
                             Sample("core/Overruns", self.overruns, now)])
        if self.on_event is not None:
            for text in result.events:
                try:
                    self.on_event(text)
                except Exception:
                    log.exception("core event callback raised for %r", text)
        return took_ms

    def _publish(self, result: CycleResult, now_us: int) -> None:
        new = [a for a in result.channels if a not in self._declared]
        if new:
            self.registry.declare([ChannelInfo(a, result.units.get(a, ""), ChannelKind.MEASUREMENT,
                                               "virtual channel of the core cycle") for a in new])
            self._declared.update(new)
        if result.channels:
            self.registry.apply([Sample(a, v, now_us, Quality.OK) for a, v in result.channels.items()])

    def start(self) -> CycleRunner:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="emsbms-core-cycle", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def _loop(self) -> None:
        next_us = self._clock()
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("core cycle failed; next cycle in one period")
            next_us += self.period_us
            now = self._clock()
            if next_us < now:  # overran: start the next cycle now, skip the lost ones
                next_us = now
            self._stop.wait((next_us - now) / 1_000_000)

    def __enter__(self) -> CycleRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
