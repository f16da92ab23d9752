"""The "soc-balance" controller (AUTO): splits a site current over parallel strings so their SoCs converge.

The site current is signed, positive = charging (the profiles' Current convention). It comes from
the option `current_a` (a fixed value) or from the channel named by `request` (read from the cycle's
snapshot, e.g. a PCS's or a virtual channel; a setpoint a higher-priority controller set on that
address this cycle wins). Exactly one of the two is given.

Split. Charging, string i weighs C_i * (100 - Soc_i) (the Ah it still takes); discharging,
C_i * Soc_i (the Ah it still holds). The current is split in proportion to the weights, so every
string's distance to full (or empty) shrinks by the same factor: the SoC gaps shrink with it, and the
lower-SoC strings charge faster (the higher-SoC ones discharge faster) in %/h. A string is never given
more than its own live limit (CCL charging, DCL discharging; seen through the echo of the command
held, see `OwnLimits`) nor the command channel's profile maximum: a string at its cap keeps it and
the rest is split again among the others (water-filling). When no weight is left (all full, or all
empty) the rest is split by the remaining caps. Values are rounded down to `resolution_a`, so
rounding never lifts a string past its cap.

Each cycle every string that takes part gets both setpoints: the active direction's command its
part, the other direction's command 0 (when the device has that command). A string that is not
CommState OK, whose readings are not quality ok, or that lacks the active command gets no setpoint
and is left out (one event per change).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emsbms.core.controller import ControllerOutput, ProcessImage, Setpoint, Source
from emsbms.core.controllers.common import Exclusions, Options, OwnLimits, command_bounds, number, why_unusable
from emsbms.core.registry import register
from emsbms.errors import ConfigError
from emsbms.types import CommState

TYPE_NAME = "soc-balance"

NAME_DEFAULTS = {
    "charge_command": "SetChargeCurrent",
    "discharge_command": "SetDischargeCurrent",
    "soc_channel": "Soc",
    "capacity_channel": "Capacity",
    "charge_limit_channel": "ChargeMaxCurrent",
    "discharge_limit_channel": "DischargeMaxCurrent",
}
"""Options naming each string's command and reading channels, with their defaults (the shipped profiles)."""


@dataclass(frozen=True, slots=True)
class Part:
    """What the split needs of one string: its SoC, capacity, cap (live limit within the profile
    maximum) and the command's profile minimum."""

    name: str
    soc: float
    capacity_ah: float
    cap: float
    low: float


def balance_weights(socs: Sequence[float], capacities: Sequence[float], charging: bool) -> list[float]:
    """C_i * (100 - Soc_i) charging, C_i * Soc_i discharging (Soc taken within 0..100)."""
    clipped = [min(100.0, max(0.0, soc)) for soc in socs]
    if charging:
        return [c * (100.0 - s) for c, s in zip(capacities, clipped, strict=True)]
    return [c * s for c, s in zip(capacities, clipped, strict=True)]


def split_current(total: float, weights: Sequence[float], caps: Sequence[float]) -> list[float]:
    """Split `total` (>= 0) in proportion to `weights`, none above its cap (water-filling).

    A string whose part reaches its cap keeps its cap, and the rest is split again among the others.
    When the others have no weight, the rest is split by their remaining caps.
    """
    parts = [0.0] * len(weights)
    active = [i for i, cap in enumerate(caps) if cap > 0]
    remaining = max(0.0, total)
    while active and remaining > 1e-9:
        use = list(weights)
        if sum(use[i] for i in active) <= 0:
            use = list(caps)
        wsum = sum(use[i] for i in active)
        saturated = [i for i in active if remaining * use[i] / wsum >= caps[i]]
        if not saturated:
            for i in active:
                parts[i] = remaining * use[i] / wsum
            break
        for i in saturated:
            parts[i] = caps[i]
            remaining -= caps[i]
        active = [i for i in active if i not in saturated]
    return parts


def round_down(value: float, resolution: float) -> float:
    """`value` rounded down to a multiple of `resolution` (a tiny tolerance absorbs float noise)."""
    return round(math.floor(value / resolution + 1e-9) * resolution, 9)


@register(TYPE_NAME)
class SocBalance:
    """Writes each string's charge and discharge current setpoints from a site current."""

    source = Source.AUTO

    def __init__(self, name: str, strings: list[str], *, current_a: float | None = None,
                 request: str | None = None, names: Mapping[str, str] | None = None,
                 capacity_ah: Mapping[str, float] | None = None, resolution_a: float = 0.1,
                 priority: int = 0) -> None:
        self.name = name
        self.priority = priority
        self.strings = list(strings)
        self.current_a = current_a
        self.request = request
        self.names = {**NAME_DEFAULTS, **(names or {})}
        self.capacity_ah = dict(capacity_ah or {})
        self.resolution_a = resolution_a
        self.exclusions = Exclusions("left out of the balance", "back in the balance")
        self.request_problem: str | None = None
        self.own_limits = OwnLimits()

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> SocBalance:
        known = {"strings", "current_a", "request", "capacity_ah", "resolution_a", "priority", *NAME_DEFAULTS}
        opts = Options(name, TYPE_NAME, options, known)
        strings = opts.names("strings")
        current = opts.number("current_a", None)
        request = options.get("request")
        if request is not None and (not isinstance(request, str) or request.count("/") != 1
                                    or not all(request.split("/"))):
            raise opts.refuse("request", "a channel address device/Channel", request)
        if (current is None) == (request is None):
            raise ConfigError(f"{opts.where}: options 'current_a' and 'request': expected exactly one, found "
                              f"{'both' if request is not None else 'neither'}")
        return cls(name, strings, current_a=current, request=request,
                   names={key: opts.text(key, default) for key, default in NAME_DEFAULTS.items()},
                   capacity_ah=opts.per_name("capacity_ah", strings),
                   resolution_a=opts.number("resolution_a", 0.1, positive=True) or 0.1,
                   priority=opts.integer("priority", 0))

    def site_current(self, image: ProcessImage) -> float | str:
        """The signed site current, or why there is none."""
        if self.current_a is not None:
            return self.current_a
        assert self.request is not None
        if self.request in image.setpoints_so_far:
            return image.setpoints_so_far[self.request]
        reading = image.get(self.request)
        value = number(reading)
        return value if value is not None else (why_unusable(reading, self.request) or self.request)

    def read_string(self, image: ProcessImage, name: str, charging: bool) -> Part | str:
        """What the split needs of a string, or why it takes no part."""
        state = image.devices.get(name)
        if state is not CommState.OK:
            return f"CommState {state.value}" if state is not None else "no such device"
        command = f"{name}/{self.names['charge_command' if charging else 'discharge_command']}"
        bounds = command_bounds(image, command)
        if bounds is None:
            return f"{command} is not a command channel"
        keys = ["soc_channel", "charge_limit_channel" if charging else "discharge_limit_channel"]
        if name not in self.capacity_ah:
            keys.append("capacity_channel")
        values: list[float] = []
        for key in keys:
            address = f"{name}/{self.names[key]}"
            value = number(image.get(address))
            if value is None:
                return why_unusable(image.get(address), address) or address
            values.append(value)
        capacity = self.capacity_ah.get(name, values[-1])
        if capacity <= 0:
            return f"{name}/{self.names['capacity_channel']} is not positive ({capacity})"
        limit_address = f"{name}/{self.names[keys[1]]}"
        limit = self.own_limits.own(limit_address, values[1], number(image.get(command)))
        low, high = bounds
        cap = max(0.0, limit if high is None else min(limit, high))
        return Part(name, values[0], capacity, cap, low or 0.0)

    def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
        current = self.site_current(image)
        problem = current if isinstance(current, str) else None
        events: list[str] = []
        if problem != self.request_problem:
            events.append(f"no setpoints: {problem}" if problem is not None else f"{self.request} usable again")
            self.request_problem = problem
        if isinstance(current, str):
            return ControllerOutput(events=events)
        charging = current >= 0
        active, other = ("charge_command", "discharge_command") if charging else ("discharge_command", "charge_command")
        parts: list[Part] = []
        reasons: dict[str, str | None] = {}
        for name in self.strings:
            result = self.read_string(image, name, charging)
            reasons[name] = result if isinstance(result, str) else None
            if not isinstance(result, str):
                parts.append(result)
        events += self.exclusions.update(reasons)
        weights = balance_weights([p.soc for p in parts], [p.capacity_ah for p in parts], charging)
        currents = split_current(abs(current), weights, [p.cap for p in parts])
        setpoints: list[Setpoint] = []
        for part, amps in zip(parts, currents, strict=True):
            value = min(max(round_down(amps, self.resolution_a), part.low), part.cap)
            setpoints.append(Setpoint(f"{part.name}/{self.names[active]}", value))
            idle = f"{part.name}/{self.names[other]}"
            idle_bounds = command_bounds(image, idle)
            if idle_bounds is not None:
                setpoints.append(Setpoint(idle, max(0.0, idle_bounds[0] or 0.0)))
        return ControllerOutput(setpoints=setpoints, events=events)
