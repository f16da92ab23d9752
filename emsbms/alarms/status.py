"""An alarm instance's state (`AlarmState`, `AlarmStatus`) and one change of it (`Transition`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from emsbms.alarms.rules import Severity


class AlarmState(StrEnum):
    OK = "ok"
    PENDING = "pending"  # condition true, on-delay running
    ACTIVE = "active"
    CLEARING = "clearing"  # clear condition true, off-delay running
    LATCHED = "latched"  # condition cleared, a latched alarm not yet acknowledged
    NO_DATA = "no_data"  # an operand missing or not quality ok
    INHIBITED = "inhibited"  # the device's CommState is LOST


@dataclass(frozen=True, slots=True)
class AlarmStatus:
    """One instance: its state, since when (the on- or off-delay's start), the state it holds while
    no_data or inhibited (active or ok), and the reported value at its last state change."""

    rule: str
    device: str
    state: AlarmState
    severity: Severity
    acked: bool = False
    since_us: int = 0
    held: AlarmState = AlarmState.OK
    value: float | None = None

    @property
    def id(self) -> str:
        return f"{self.rule}/{self.device}"


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change or acknowledgement, as uplinked (`as_dict`) and logged (`text`)."""

    id: str
    rule: str
    device: str
    state: AlarmState
    previous: AlarmState
    severity: Severity
    acked: bool
    value: float | None
    timestamp_us: int
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "rule": self.rule, "device": self.device, "state": self.state.value,
                "previous": self.previous.value, "severity": self.severity.name, "acked": self.acked,
                "value": self.value, "timestamp_us": self.timestamp_us, "text": self.text}
