"""The dispatcher's pure arbitration: SAFETY > MANUAL override > AUTO, clamps, and what is due.

No I/O, no clock: every method takes the time as an argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from emsbms.core.controller import Clamp, Source

DEFAULT_EXPIRES_S = 900.0
"""A manual override's default lifetime: 15 minutes, then control returns to AUTO."""
RETRY_US = 10_000_000
"""A value whose write failed is tried again after this long, even if it has not changed."""


@dataclass(frozen=True)
class Override:
    """An active manual override of a command channel."""

    address: str
    value: float
    expires_us: int
    source_text: str = "manual"

    def as_dict(self) -> dict[str, object]:
        return {"address": self.address, "value": self.value, "expires_us": self.expires_us,
                "source": self.source_text}


@dataclass(frozen=True)
class Write:
    """A value the arbiter decided to send."""

    address: str
    value: float
    source: Source


@dataclass
class Plan:
    """One cycle's writes, in address order, and the events the arbitration raised."""

    writes: list[Write] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Sent:
    value: float
    at_us: int
    ok: bool


def bound(clamp: Clamp | None, value: float) -> tuple[float, str | None]:
    """(the value inside `clamp`, None) or (value, why it is refused) for a rejecting clamp."""
    if clamp is None:
        return value, None
    lo, hi = clamp.minimum, clamp.maximum
    outside = (lo is not None and value < lo) or (hi is not None and value > hi)
    if not outside:
        return value, None
    why = f" ({clamp.reason})" if clamp.reason else ""
    if clamp.reject:
        return value, f"{value:g} is outside the live limits [{lo}, {hi}]{why}"
    if hi is not None and value > hi:
        return hi, None
    assert lo is not None
    return lo, None


class Arbiter:
    """Per address: SAFETY value if any, else an active MANUAL override, else AUTO.

    A SAFETY clamp bounds MANUAL and AUTO values. A value is sent only when it changed, when a
    failed write is `RETRY_US` old, or when half the profile's cyclic TTL has passed since it
    was sent (so the device's own repetition never lapses).
    """

    def __init__(self, retry_us: int = RETRY_US) -> None:
        self.retry_us = retry_us
        self.clamps: dict[str, Clamp] = {}
        self.safety: dict[str, float] = {}
        self._overrides: dict[str, Override] = {}
        self._sent: dict[str, _Sent] = {}
        self._refused: dict[str, float] = {}

    # -- overrides --------------------------------------------------------------------------

    def set_override(self, address: str, value: float, now_us: int, expires_s: float = DEFAULT_EXPIRES_S,
                     source_text: str = "manual") -> Override:
        o = Override(address, value, now_us + round(expires_s * 1_000_000), source_text)
        self._overrides[address] = o
        return o

    def override(self, address: str, now_us: int) -> Override | None:
        """The override of `address` active at `now_us` (active while now_us < expires_us)."""
        o = self._overrides.get(address)
        return o if o is not None and now_us < o.expires_us else None

    def overrides(self, now_us: int) -> list[Override]:
        """The overrides active at `now_us`, by address."""
        return [o for a, o in sorted(self._overrides.items()) if now_us < o.expires_us]

    def cancel(self, address: str) -> Override | None:
        """Drop the override of `address`; returns it (None: there was none)."""
        return self._overrides.pop(address, None)

    def expire(self, now_us: int) -> list[Override]:
        """Drop and return the overrides that expired at or before `now_us`."""
        gone = [o for o in self._overrides.values() if now_us >= o.expires_us]
        for o in gone:
            del self._overrides[o.address]
        return gone

    # -- sending ----------------------------------------------------------------------------

    def due(self, address: str, value: float, now_us: int, ttl_us: int | None) -> bool:
        """Whether `value` should go to `address` now: changed, a failed write to retry, or TTL-due."""
        last = self._sent.get(address)
        if last is None or last.value != value:
            return True
        if not last.ok:
            return now_us - last.at_us >= self.retry_us
        return ttl_us is not None and now_us - last.at_us >= ttl_us // 2

    def record(self, address: str, value: float, at_us: int, ok: bool) -> None:
        """Remember that `value` went (`ok`) or failed to go to `address` at `at_us`."""
        self._sent[address] = _Sent(value, at_us, ok)

    def plan(self, setpoints: Mapping[Source, Mapping[str, float]], clamps: Mapping[str, Clamp], now_us: int,
             ttl_us: Mapping[str, int | None] | None = None) -> Plan:
        """Resolve one cycle's setpoints against the overrides and clamps, keep what is due."""
        plan = Plan()
        ttl = ttl_us or {}
        self.clamps = dict(clamps)
        self.safety = dict(setpoints.get(Source.SAFETY, {}))
        for o in self.expire(now_us):
            plan.events.append(f"override of {o.address} = {o.value:g} expired; control returns to auto")
        auto = setpoints.get(Source.AUTO, {})
        for address in sorted({*self.safety, *self._overrides, *auto}):
            chosen = self._choose(address, auto, now_us, plan)
            if chosen is None:
                continue
            value, source = chosen
            if self.due(address, value, now_us, ttl.get(address)):
                plan.writes.append(Write(address, value, source))
        return plan

    def _choose(self, address: str, auto: Mapping[str, float], now_us: int,
                plan: Plan) -> tuple[float, Source] | None:
        if address in self.safety:
            return self.safety[address], Source.SAFETY
        o = self._overrides.get(address)
        if o is not None:
            value, why = bound(self.clamps.get(address), o.value)
            if why is None:
                return value, Source.MANUAL
            del self._overrides[address]
            plan.events.append(f"override of {address} cancelled: {why}; control returns to auto")
        if address not in auto:
            return None
        value, why = bound(self.clamps.get(address), auto[address])
        if why is None:
            self._refused.pop(address, None)
            return value, Source.AUTO
        if self._refused.get(address) != auto[address]:
            self._refused[address] = auto[address]
            plan.events.append(f"auto setpoint {address} = {auto[address]:g} refused: {why}")
        return None
