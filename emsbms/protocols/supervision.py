"""Per-message and per-device supervision: stale after 2.5 periods, lost after the timeout."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from emsbms.types import AlarmLevel, ChannelInfo, ChannelKind, CommState, Sample

STALE_FACTOR = 2.5


@dataclass
class _Watched:
    period_us: int
    addresses: tuple[str, ...]
    last_us: int = 0
    stale: bool = False


class Supervisor:
    """Tracks when each supervised message was last seen and derives the device's CommState.

    Publishes `<dev>/CommState`, `<dev>/LastSeen` (µs) and `<dev>/Alarm/CommLoss`.
    """

    def __init__(self, device: str, timeout_us: int, start_us: int = 0) -> None:
        self.prefix = device + "/"
        self.timeout_us = timeout_us
        self.start_us = start_us
        self.last_seen_us = 0
        self._published_seen = 0
        self.state = CommState.WAITING
        self._watched: dict[object, _Watched] = {}
        self._all: tuple[str, ...] = ()
        self._quiet_until: float = 0  # no deadline falls before this: tick has nothing to check (a lower bound)
        self._quiet_state = self.state  # ... as long as the state is still this one

    def watch(self, key: object, period_us: int | None, addresses: Sequence[str]) -> None:
        """Supervise message `key` (period None: only counts toward the device timeout)."""
        if period_us is not None:
            self._watched[key] = _Watched(int(period_us), tuple(addresses))
            self._quiet_until = 0
        self._all = tuple(dict.fromkeys(self._all + tuple(addresses)))

    def channels(self) -> list[ChannelInfo]:
        p = self.prefix
        return [
            ChannelInfo(p + "CommState", "", ChannelKind.STATE, "communication state"),
            ChannelInfo(p + "LastSeen", "µs", ChannelKind.STATE, "time of the last frame"),
            ChannelInfo(p + "Alarm/CommLoss", "", ChannelKind.ALARM, "device silent"),
        ]

    def begin(self, now_us: int) -> list[Sample]:
        """Start the clock (the start-up grace time runs from here)."""
        self.start_us = now_us
        self._quiet_until = 0
        for w in self._watched.values():
            w.last_us = now_us  # a message not yet seen goes stale 2.5 periods after start
        return self._state_samples(now_us)

    def seen(self, key: object, ts_us: int) -> list[Sample] | None:
        """Note a valid frame of message `key`; returns state samples on a transition."""
        self.last_seen_us = ts_us
        w = self._watched.get(key)
        if w is not None:
            w.last_us = ts_us
            if w.stale:
                w.stale = False
                self._quiet_until = 0  # its deadline counts again
        if self.state is CommState.OK:
            return None
        if any(x.stale for x in self._watched.values()):
            new = CommState.STALE
        else:
            new = CommState.OK
        if new is self.state:
            return None
        self.state = new
        self._quiet_until = 0
        return self._state_samples(ts_us)

    def tick(self, now_us: int) -> tuple[list[Sample], list[str]]:
        """Check every deadline; returns (state samples, addresses that just went stale)."""
        if now_us < self._quiet_until and self.state is self._quiet_state:  # the hot case: no deadline reached
            if self.last_seen_us == self._published_seen:
                return [], []
            self._published_seen = self.last_seen_us
            return [Sample(self.prefix + "LastSeen", self.last_seen_us, now_us)], []
        samples: list[Sample] = []
        stale: list[str] = []
        for w in self._watched.values():
            if not w.stale and now_us - w.last_us > STALE_FACTOR * w.period_us:
                w.stale = True
                stale.extend(w.addresses)
        reference = self.last_seen_us or self.start_us
        if now_us - reference > self.timeout_us:
            new = CommState.LOST
        elif self.last_seen_us == 0:
            new = CommState.WAITING
        elif any(w.stale for w in self._watched.values()):
            new = CommState.STALE
        else:
            new = CommState.OK
        if new is not self.state:
            if new is CommState.LOST:
                stale = list(self._all)
            self.state = new
            samples.extend(self._state_samples(now_us))
        if self.last_seen_us != self._published_seen:
            self._published_seen = self.last_seen_us
            samples.append(Sample(self.prefix + "LastSeen", self.last_seen_us, now_us))
        self._quiet_until = self._next_deadline()
        self._quiet_state = self.state
        return samples, stale

    def _next_deadline(self) -> float:
        """The earliest time tick could change something, as things stand (frames only move it later)."""
        deadlines = [w.last_us + STALE_FACTOR * w.period_us for w in self._watched.values() if not w.stale]
        if self.state is not CommState.LOST:
            deadlines.append((self.last_seen_us or self.start_us) + self.timeout_us)
        return min(deadlines, default=float("inf"))

    def _state_samples(self, now_us: int) -> list[Sample]:
        level = {
            CommState.LOST: AlarmLevel.ALARM,
            CommState.STALE: AlarmLevel.WARNING,
        }.get(self.state, AlarmLevel.OK)
        return [
            Sample(self.prefix + "CommState", self.state, now_us),
            Sample(self.prefix + "Alarm/CommLoss", level, now_us),
        ]
