"""The "site-limits" controller (SAFETY): one set of site channels (ess0/...) over parallel BMS strings.

Derivation of the site current limits. N strings in parallel carry the site current I, string i the
part I * s_i, where s_i is its share (s_i >= 0, sum s_i = 1). No string goes past its own limit L_i
(its CCL or DCL) when I * s_i <= L_i for every i, i.e. when I <= L_i / s_i for every string that takes
a share (s_i > 0). The largest safe site current is therefore

    I_max = min over i with s_i > 0 of L_i / s_i

- share = "capacity" (default): passive parallel strings share current roughly by capacity,
  s_i = C_i / sum C, so I_max = sum C * min(L_i / C_i). One string whose limit is 0 stops the site.
- share = "limit": the strings are steered to take current in proportion to their own limits (the
  soc-balance controller or per-string converters), s_i = L_i / sum L, so I_max = sum L.

Only strings whose CommState is OK and whose readings are all of quality ok take part (their shares
are normalised among them). Leaving a string out is on the safe side for the others: if it is in fact
still connected, it takes current too, and the strings that take part carry less than computed.
A string that is left out, or comes back, gives one event per change.
Voltages: ChargeMaxVoltage = min of the strings' charge voltage limits, DischargeMinVoltage = max of
their discharge voltage limits. Soc = sum(C_i * Soc_i) / sum(C_i). With no string taking part, both
current limits are 0 and Soc and the voltages have no value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from emsbms.core.controller import ControllerOutput, ProcessImage, Source
from emsbms.core.controllers.common import Exclusions, Options, number, why_unusable
from emsbms.core.registry import register
from emsbms.types import CommState, Value

TYPE_NAME = "site-limits"

CHANNEL_DEFAULTS = {
    "soc_channel": "Soc",
    "capacity_channel": "Capacity",
    "charge_current_channel": "ChargeMaxCurrent",
    "discharge_current_channel": "DischargeMaxCurrent",
    "charge_voltage_channel": "ChargeMaxVoltage",
    "discharge_voltage_channel": "DischargeMinVoltage",
}
"""The option naming each string channel read, and its default (the shipped profiles' channel names)."""

SHARES = ("capacity", "limit")

UNITS = {"Soc": "%", "ChargeMaxCurrent": "A", "DischargeMaxCurrent": "A", "ChargeMaxVoltage": "V",
         "DischargeMinVoltage": "V", "Strings": ""}


@dataclass(frozen=True, slots=True)
class StringValues:
    """The numbers of one string that takes part."""

    soc: float
    capacity_ah: float
    charge_max_current: float
    discharge_max_current: float
    charge_max_voltage: float
    discharge_min_voltage: float


def site_current_limit(limits: Sequence[float], shares: Sequence[float]) -> float:
    """min over strings with a share of limit_i / s_i, with s_i = share_i / sum(shares); 0 with none."""
    total = sum(shares)
    bounds = [limit * total / share for limit, share in zip(limits, shares, strict=True) if share > 0]
    return max(0.0, min(bounds)) if bounds else 0.0


def site_values(strings: Sequence[StringValues], share: str) -> dict[str, Value]:
    """The site channels (names without the site prefix) from the strings that take part."""
    if not strings:
        return {"Soc": None, "ChargeMaxCurrent": 0.0, "DischargeMaxCurrent": 0.0,
                "ChargeMaxVoltage": None, "DischargeMinVoltage": None, "Strings": 0}
    capacities = [s.capacity_ah for s in strings]
    charge = [s.charge_max_current for s in strings]
    discharge = [s.discharge_max_current for s in strings]
    return {
        "Soc": sum(s.soc * s.capacity_ah for s in strings) / sum(capacities),
        "ChargeMaxCurrent": site_current_limit(charge, capacities if share == "capacity" else charge),
        "DischargeMaxCurrent": site_current_limit(discharge, capacities if share == "capacity" else discharge),
        "ChargeMaxVoltage": min(s.charge_max_voltage for s in strings),
        "DischargeMinVoltage": max(s.discharge_min_voltage for s in strings),
        "Strings": len(strings),
    }


@register(TYPE_NAME)
class SiteLimits:
    """Publishes <site>/Soc, ChargeMaxCurrent, DischargeMaxCurrent, ChargeMaxVoltage,
    DischargeMinVoltage and Strings (how many strings take part) from the strings."""

    source = Source.SAFETY

    def __init__(self, name: str, strings: list[str], *, site: str = "ess0", share: str = "capacity",
                 channels: Mapping[str, str] | None = None, capacity_ah: Mapping[str, float] | None = None,
                 priority: int = 0) -> None:
        self.name = name
        self.priority = priority
        self.strings = list(strings)
        self.site = site
        self.share = share
        self.channels = {**CHANNEL_DEFAULTS, **(channels or {})}
        self.capacity_ah = dict(capacity_ah or {})
        self.exclusions = Exclusions(f"left out of {site}", f"back in {site}")

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> SiteLimits:
        known = {"strings", "site", "share", "capacity_ah", "priority", *CHANNEL_DEFAULTS}
        opts = Options(name, TYPE_NAME, options, known)
        strings = opts.names("strings")
        return cls(name, strings, site=opts.text("site", "ess0"), share=opts.choice("share", SHARES),
                   channels={key: opts.text(key, default) for key, default in CHANNEL_DEFAULTS.items()},
                   capacity_ah=opts.per_name("capacity_ah", strings), priority=opts.integer("priority", 0))

    def read_string(self, image: ProcessImage, name: str) -> StringValues | str:
        """The string's numbers, or why it takes no part."""
        state = image.devices.get(name)
        if state is not CommState.OK:
            return f"CommState {state.value}" if state is not None else "no such device"
        values: dict[str, float] = {}
        for key in CHANNEL_DEFAULTS:
            if key == "capacity_channel" and name in self.capacity_ah:
                values[key] = self.capacity_ah[name]
                continue
            address = f"{name}/{self.channels[key]}"
            reading = image.get(address)
            value = number(reading)
            if value is None:
                return why_unusable(reading, address) or address
            values[key] = value
        if values["capacity_channel"] <= 0:
            return f"{name}/{self.channels['capacity_channel']} is not positive ({values['capacity_channel']})"
        return StringValues(
            soc=values["soc_channel"], capacity_ah=values["capacity_channel"],
            charge_max_current=max(0.0, values["charge_current_channel"]),
            discharge_max_current=max(0.0, values["discharge_current_channel"]),
            charge_max_voltage=values["charge_voltage_channel"],
            discharge_min_voltage=values["discharge_voltage_channel"],
        )

    def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
        taking_part: list[StringValues] = []
        reasons: dict[str, str | None] = {}
        for name in self.strings:
            result = self.read_string(image, name)
            reasons[name] = result if isinstance(result, str) else None
            if not isinstance(result, str):
                taking_part.append(result)
        events = self.exclusions.update(reasons)
        channels = {f"{self.site}/{key}": value for key, value in site_values(taking_part, self.share).items()}
        units = {f"{self.site}/{key}": unit for key, unit in UNITS.items()}
        return ControllerOutput(channels=channels, events=events, units=units)
