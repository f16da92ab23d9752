"""The "limit-enforcement" controller (SAFETY): no MANUAL or AUTO setpoint above a live BMS limit.

For every string and every pair command channel -> limit channel (default SetChargeCurrent ->
ChargeMaxCurrent, SetDischargeCurrent -> DischargeMaxCurrent) it sets a `Clamp` on the command:
maximum = the live limit the BMS reports (seen through the echo of the command held, see
`OwnLimits`: a BMS that reports the command as its limit would otherwise never let it rise), within
the profile's static range (the range stays the
outer bound: the maximum is never above the profile's max). The dispatcher applies it to MANUAL and
AUTO values: `mode = "clamp"` brings a value above down to the limit, `mode = "reject"` refuses it.
A live limit that cannot be trusted (device not CommState OK, reading missing, not quality ok, not a
number) gives maximum = the profile's min (0 for every shipped current command): nothing above the
floor until the BMS reports again; one event per change.
The strings are the option `strings`, or by default every device of the image that has the command.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from emsbms.core.controller import Clamp, ControllerOutput, Limits, ProcessImage, Source
from emsbms.core.controllers.common import Exclusions, Options, OwnLimits, command_bounds, number, why_unusable
from emsbms.core.registry import register
from emsbms.types import CommState

TYPE_NAME = "limit-enforcement"

PAIRS = {"SetChargeCurrent": "ChargeMaxCurrent", "SetDischargeCurrent": "DischargeMaxCurrent"}
"""Default command channel -> the live limit channel that bounds it (the shipped profiles' names)."""

MODES = ("clamp", "reject")


def bound(limit: float | None, static: Limits, reject: bool, reason: str) -> Clamp:
    """The clamp on one command: at most the live `limit` (None: untrusted, the static minimum), and
    never above the static maximum. No minimum: the edge's range check refuses a value below."""
    low, high = static
    if limit is None:
        maximum = low if low is not None else 0.0
    else:
        maximum = limit if high is None else min(limit, high)
    return Clamp(maximum=maximum, reject=reject, reason=reason)


@register(TYPE_NAME)
class LimitEnforcement:
    """Clamps (or rejects) MANUAL and AUTO setpoints above the BMS's live limits."""

    source = Source.SAFETY

    def __init__(self, name: str, *, strings: list[str] | None = None, mode: str = "clamp",
                 pairs: Mapping[str, str] | None = None, priority: int = 0) -> None:
        self.name = name
        self.priority = priority
        self.strings = strings
        self.reject = mode == "reject"
        self.pairs = dict(pairs or PAIRS)
        self.own_limits = OwnLimits()
        self.exclusions = Exclusions("held at its minimum", "bounded by the live limit again")

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> LimitEnforcement:
        opts = Options(name, TYPE_NAME, options, {"strings", "mode", "pairs", "priority"})
        strings = opts.names("strings") if "strings" in options else None
        return cls(name, strings=strings, mode=opts.choice("mode", MODES), pairs=opts.table("pairs", PAIRS),
                   priority=opts.integer("priority", 0))

    def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
        clamps: dict[str, Clamp] = {}
        reasons: dict[str, str | None] = {}
        for name in self.strings if self.strings is not None else sorted(image.devices):
            state = image.devices.get(name)
            for command, limit_channel in self.pairs.items():
                address = f"{name}/{command}"
                static = command_bounds(image, address)
                if static is None:
                    if self.strings is not None:
                        reasons[address] = "not a command channel"
                    continue
                reading = image.get(f"{name}/{limit_channel}")
                limit = number(reading) if state is CommState.OK else None
                why: str | None = why_unusable(reading, f"{name}/{limit_channel}")
                if state is not CommState.OK:
                    why = f"CommState {state.value}" if state is not None else "no such device"
                reasons[address] = why
                if limit is not None:
                    limit = self.own_limits.own(f"{name}/{limit_channel}", limit, number(image.get(address)))
                reason = (f"{name}/{limit_channel} = {limit:g}" if limit is not None
                          else f"{name}/{limit_channel} unknown ({why})")
                clamps[address] = bound(None if limit is None else max(0.0, limit), static, self.reject, reason)
        return ControllerOutput(clamps=clamps, events=self.exclusions.update(reasons))
