"""Pieces of the CANopen adapter: object channels, the edge-side bus of its Network, EMCY alarms, identity checks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import can
from canopen.emcy import EmcyError
from canopen.objectdictionary import ODVariable

from emsbms.errors import EmsbmsError
from emsbms.protocols.base import AdapterIO
from emsbms.protocols.canopen_codes import emcy_text
from emsbms.protocols.canopen_od import CanopenOptions, IdentitySpec, emcy_ranges
from emsbms.types import AlarmLevel, ChannelInfo, ChannelKind, Sample, Value

IDENTITY_SUBS = (("VendorId", 1, "vendor_id"), ("ProductCode", 2, "product_code"),
                 ("Revision", 3, "revision"), ("SerialNumber", 4, "serial"))
"""(channel name, 0x1018 sub-index, IdentitySpec field) of the identity object."""


@dataclass(frozen=True, slots=True)
class ObjectChannel:
    """A profile channel read from one OD variable: value = raw * Factor * scale + offset."""

    name: str
    address: str
    var: ODVariable
    scale: float
    offset: float
    take_abs: bool
    kind: str
    unit: str

    @property
    def key(self) -> tuple[int, int]:
        return self.var.index, self.var.subindex

    def convert(self, phys: Any) -> Value:
        """The channel value of a physical OD value (raw * Factor)."""
        if not isinstance(phys, int | float):
            return str(phys)
        v: float = phys * self.scale + self.offset if (self.scale != 1.0 or self.offset != 0.0) else phys
        if self.take_abs:
            v = abs(v)
        if self.kind == "bool":
            return bool(v)
        if self.kind == "int":
            return int(v)
        return round(float(v), 10)  # 568 * 0.1 is 56.800000000000004


class EdgeBus:
    """The bus the adapter's canopen Network sends on: frames go out through the edge, shifted by id_offset.

    The edge gives it an AdapterIO when the adapter's worker starts; before that, sending fails.
    """

    channel_info = "emsbms edge"

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.io: AdapterIO | None = None

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        io = self.io
        if io is None:
            raise can.CanOperationError("the edge is not running: no bus to send on")
        can_id = msg.arbitration_id + self.offset
        out = can.Message(arbitration_id=can_id, data=msg.data, is_extended_id=can_id > 0x7FF,
                          is_remote_frame=msg.is_remote_frame)
        try:
            io.send(out)
        except EmsbmsError as e:
            raise can.CanOperationError(str(e)) from e


class EmcyAlarms:
    """Turns the active emergencies of a node into alarm channels with levels.

    `Alarm/Emcy` is the highest level among active EMCYs; options.emcy_alarms maps codes (or
    code ranges) to normalized alarms (e.g. 0x4210 -> Alarm/OverTemperature) with a level.
    """

    def __init__(self, prefix: str, options: CanopenOptions) -> None:
        self.prefix = prefix
        self.ranges = emcy_ranges(options)
        self.default_level = options.emcy_level
        self.alarms = sorted({r[2].alarm for r in self.ranges})

    def channels(self) -> list[ChannelInfo]:
        p, state, alarm = self.prefix, ChannelKind.STATE, ChannelKind.ALARM
        return [
            ChannelInfo(p + "EmcyCode", "", state, "active emergency error code (0 = none)"),
            ChannelInfo(p + "EmcyRegister", "", state, "error register (0x1001) of the last EMCY"),
            ChannelInfo(p + "EmcyText", "", state, "meaning of the active emergency"),
            ChannelInfo(p + "Alarm/Emcy", "", alarm, "an emergency (EMCY) is active"),
            *(ChannelInfo(p + "Alarm/" + a, "", alarm, "raised by EMCY") for a in self.alarms),
        ]

    def level(self, code: int) -> tuple[int, str | None]:
        """(level, normalized alarm or None) of an EMCY code."""
        for lo, hi, alarm in self.ranges:
            if lo <= code <= hi:
                return alarm.level, alarm.alarm
        return self.default_level, None

    def samples(self, active: Sequence[EmcyError], register: int, ts: int) -> list[Sample]:
        """The alarm channels for the list of active EMCYs (canopen's EmcyConsumer.active)."""
        p = self.prefix
        levels = dict.fromkeys(self.alarms, 0)
        overall = 0
        for e in active:
            level, alarm = self.level(e.code)
            overall = max(overall, level)
            if alarm is not None:
                levels[alarm] = max(levels[alarm], level)
        code = active[-1].code if active else 0
        samples = [
            Sample(p + "EmcyCode", code, ts),
            Sample(p + "EmcyRegister", register, ts),
            Sample(p + "EmcyText", emcy_text(code) if active else "", ts),
            Sample(p + "Alarm/Emcy", AlarmLevel(overall), ts),
        ]
        samples += [Sample(p + "Alarm/" + a, AlarmLevel(lv), ts) for a, lv in levels.items()]
        return samples

    def cleared(self, ts: int) -> list[Sample]:
        """Every EMCY channel at its no-emergency value."""
        return [s for s in self.samples([], 0, ts) if not s.address.endswith("EmcyRegister")]


def identity_problems(spec: IdentitySpec | None, found: dict[str, int | None]) -> list[str]:
    """What differs between the identity a profile expects and what the device reported."""
    if spec is None:
        return []
    problems = []
    device_type = found.get("device_type")
    if spec.device_profile is not None and (device_type is None or device_type & 0xFFFF != spec.device_profile):
        shown = "nothing" if device_type is None else str(device_type & 0xFFFF)
        problems.append(f"device profile (0x1000) expected {spec.device_profile}, found {shown}")
    for _, sub, key in IDENTITY_SUBS:
        want = getattr(spec, key)
        got = found.get(key)
        if want is not None and got != want:
            shown = "nothing" if got is None else f"0x{got:08X}"
            problems.append(f"{key} (0x1018 sub {sub}) expected 0x{want:08X}, found {shown}")
    return problems
