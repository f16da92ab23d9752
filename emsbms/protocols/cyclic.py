"""Cyclic command setpoints: a commanded value repeated every period until its ttl expires."""

from __future__ import annotations

from dataclasses import dataclass


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

    def due(self, now_us: int) -> tuple[list[str], list[str]]:
        """(names due for a repetition now, names that just expired and were dropped)."""
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
