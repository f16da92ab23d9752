"""Cyclic command setpoints: a commanded value repeated every period until its ttl expires.

A setpoint is repeated only while its device is heard: the tick that finds the device LOST drops
every setpoint (no frame of that tick or any later one repeats it), and nothing brings them back
when the device returns. A new write starts a new setpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from emsbms.types import CommState


@dataclass(slots=True)
class Setpoint:
    """One active setpoint; `value` is in whatever form the protocol sends (physical or raw)."""

    value: float
    expires_us: int
    period_us: int
    next_us: int


class CyclicSetpoints(dict[str, Setpoint]):
    """The active setpoints of one device, by command name."""

    def start(self, name: str, value: float, now_us: int, ttl_s: float, period_ms: float) -> None:
        """Repeat `value` every `period_ms` from one period after `now_us`, for `ttl_s` seconds."""
        period = int(period_ms * 1000)
        self[name] = Setpoint(value, now_us + int(ttl_s * 1_000_000), period, now_us + period)

    def due(self, now_us: int, state: CommState) -> tuple[list[str], list[str]]:
        """(names due for a repetition now, names that just expired or were dropped).

        `state` is the device's CommState as of `now_us` (supervise before asking): when it is
        LOST every setpoint is dropped and none is due.
        """
        if state is CommState.LOST:
            dropped = list(self)
            self.clear()
            return [], dropped
        due: list[str] = []
        expired: list[str] = []
        for name, sp in list(self.items()):
            if now_us >= sp.expires_us:
                del self[name]
                expired.append(name)
            elif now_us >= sp.next_us:
                sp.next_us = now_us + sp.period_us
                due.append(name)
        return due, expired
