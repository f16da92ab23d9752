"""The controller contract: a process image in, setpoints (and virtual channels, events) out.

Controllers are pure: no I/O, no clock (time comes as an argument), so a hand-made
`ProcessImage` is all a test needs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Protocol

from emsbms.errors import UnknownAddressError
from emsbms.types import CommState, Reading, Value

_EMPTY: Mapping[str, float] = MappingProxyType({})


class Source(StrEnum):
    """Who asks for a value; the dispatcher's priority is SAFETY > MANUAL > AUTO."""

    SAFETY = "safety"
    MANUAL = "manual"
    AUTO = "auto"


@dataclass(frozen=True)
class Setpoint:
    """A value a controller asks for on a command channel (`bms_0/SetChargeCurrent`)."""

    address: str
    value: float


@dataclass(frozen=True)
class Clamp:
    """Bounds a SAFETY controller sets on a command channel for MANUAL and AUTO values.

    `reject` False: a value outside is brought to the nearest bound; True: it is refused.
    """

    minimum: float | None = None
    maximum: float | None = None
    reject: bool = False
    reason: str = ""

    def merge(self, other: Clamp) -> Clamp:
        """The tighter of two clamps (highest minimum, lowest maximum; reject if either does)."""
        lo = [b for b in (self.minimum, other.minimum) if b is not None]
        hi = [b for b in (self.maximum, other.maximum) if b is not None]
        why = "; ".join(r for r in (self.reason, other.reason) if r)
        return Clamp(max(lo) if lo else None, min(hi) if hi else None, self.reject or other.reject, why)


@dataclass
class ControllerOutput:
    """What one controller returns for one cycle.

    `channels` are virtual channels (`ess0/Soc`) published to the registry with quality ok, with
    their units in `units`; `clamps` (SAFETY controllers only) bound MANUAL and AUTO values.
    """

    setpoints: list[Setpoint] = field(default_factory=list)
    channels: dict[str, Value] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    clamps: dict[str, Clamp] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)


Limits = tuple[float | None, float | None]


class ProcessImage(Mapping[str, Reading]):
    """The snapshot of every channel at the start of a cycle (read-only), plus:

    - `setpoints_so_far`: address -> value set this cycle by the controllers that ran before;
    - `limits(address)`: the profile's (min, max) of a command channel;
    - `devices`: device name -> CommState.
    """

    __slots__ = ("_limits", "_readings", "devices", "setpoints_so_far", "taken_us")

    def __init__(self, readings: Mapping[str, Reading], taken_us: int = 0,
                 limits: Mapping[str, Limits] | None = None, devices: Mapping[str, CommState] | None = None,
                 setpoints_so_far: Mapping[str, float] = _EMPTY) -> None:
        self._readings = readings
        self.taken_us = taken_us
        self._limits: Mapping[str, Limits] = limits or {}
        if devices is None:
            states = {s.value: s for s in CommState}
            devices = {a[: -len("/CommState")]: states[str(r.value)] for a, r in readings.items()
                       if a.endswith("/CommState") and str(r.value) in states}
        self.devices: Mapping[str, CommState] = MappingProxyType(dict(devices))
        self.setpoints_so_far = setpoints_so_far

    def __getitem__(self, address: str) -> Reading:
        return self._readings[address]

    def __iter__(self) -> Iterator[str]:
        return iter(self._readings)

    def __len__(self) -> int:
        return len(self._readings)

    def value(self, address: str) -> Value:
        """The value of a channel, or None if it has none."""
        r = self._readings.get(address)
        return None if r is None else r.value

    def limits(self, address: str) -> Limits:
        """The profile's (min, max) of command channel `address`."""
        try:
            return self._limits[address]
        except KeyError:
            known = ", ".join(sorted(self._limits)) or "none"
            raise UnknownAddressError(f"{address} is not a command channel with limits; known: {known}") from None

    def with_setpoints(self, setpoints: Mapping[str, float]) -> ProcessImage:
        """The same image with `setpoints_so_far` = `setpoints` (a read-only copy)."""
        return ProcessImage(self._readings, self.taken_us, self._limits, self.devices,
                            MappingProxyType(dict(setpoints)))


class Controller(Protocol):
    """A control algorithm. `source` is SAFETY or AUTO; lower `priority` runs first within a source."""

    name: str
    source: Source
    priority: int

    def run(self, image: ProcessImage, now_us: int) -> ControllerOutput: ...
