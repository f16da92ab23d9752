"""Shared value types: channel samples, qualities, states and command results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum, IntEnum, StrEnum
from typing import Any, NamedTuple

Value = float | int | bool | str | None


class Quality(StrEnum):
    """How far a channel's value can be trusted."""

    OK = "ok"
    STALE = "stale"
    NOT_AVAILABLE = "not available"
    INVALID = "invalid"


class CommState(StrEnum):
    """Communication state of a device, as seen by the edge."""

    WAITING = "WAITING"  # nothing received yet, still inside the start-up grace time
    OK = "OK"
    STALE = "STALE"
    LOST = "LOST"


class AlarmLevel(IntEnum):
    """Alarm channel levels (the value of every `Alarm/...` channel)."""

    OK = 0
    WARNING = 1
    ALARM = 2


class ChannelKind(StrEnum):
    """What a channel carries."""

    MEASUREMENT = "measurement"
    ALARM = "alarm"
    COMMAND = "command"
    STATE = "state"


class CommandStatus(StrEnum):
    """Outcome of a command written to a command channel."""

    ACKED = "acked"
    SENT = "sent"  # the profile defines no acknowledgement: sent, not confirmed
    REJECTED = "rejected"
    TIMEOUT = "timeout"


class Sample(NamedTuple):
    """One value of one channel, as produced by a protocol adapter."""

    address: str
    value: Value
    timestamp_us: int
    quality: Quality = Quality.OK


class Reading(NamedTuple):
    """The current state of a channel in the registry, with its unit."""

    value: Value
    unit: str
    timestamp_us: int
    quality: Quality

    def as_dict(self) -> dict[str, Value]:
        """JSON-ready form used by the CLI and the run log."""
        return {
            "value": self.value,
            "unit": self.unit,
            "timestamp_us": self.timestamp_us,
            "quality": self.quality.value,
        }


@dataclass(frozen=True, slots=True)
class ChannelInfo:
    """Metadata of one channel, declared once by a profile (or by the edge for state channels)."""

    address: str
    unit: str = ""
    kind: ChannelKind = ChannelKind.MEASUREMENT
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What became of a command."""

    address: str
    value: float
    status: CommandStatus
    detail: str = ""
    frames: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "value": self.value,
            "status": self.status.value,
            "detail": self.detail,
        }


def json_safe(value: Any) -> Any:
    """`value` as strict JSON data, for every JSON that leaves a process (``--json``, the uplink):
    NaN and infinities become None, Enums their value, in lists, tuples and dicts too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Enum):
        return json_safe(value.value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
