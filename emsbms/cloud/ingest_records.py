"""The typed records of ingested uplink messages (docs/uplink.md), made by `ingest_parse.parse_message`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What an ingested topic carries (the last levels of `ems/{org}/{site}/...`)."""

    STATE = "state"
    BIRTH = "birth"
    TELEMETRY = "telemetry"
    HEALTH = "health"
    EVENTS = "events"
    CMD_RESULT = "cmd/result"
    CONFIG_STATUS = "config/status"
    ALARMS = "alarms"


STREAMS = (Kind.TELEMETRY, Kind.HEALTH, Kind.EVENTS, Kind.ALARMS)
"""The kinds numbered by (session, seq)."""


@dataclass(frozen=True)
class SampleRow:
    """One telemetry sample: numbers (and bools as 0/1) in `value`, strings and bools in `text_value`."""

    address: str
    timestamp_us: int
    value: float | None
    text_value: str | None
    quality: str


@dataclass(frozen=True)
class EventRow:
    """One event for the `events` table."""

    timestamp_us: int
    kind: str
    device: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class AlarmRow:
    """One alarm transition or acknowledgement of the `alarms` topic (notes: the alarms contract)."""

    rule: str
    device: str
    state: str
    previous: str
    severity: str
    acked: bool
    value: float | None
    timestamp_us: int
    text: str


@dataclass(frozen=True)
class Batch:
    """A telemetry, health, events or alarms message: one (stream, session, seq) with its samples, events or
    alarms."""

    org: str
    site: str
    stream: Kind
    session: int
    seq: int
    timestamp_us: int
    historical: bool
    samples: tuple[SampleRow, ...] = ()
    events: tuple[EventRow, ...] = ()
    alarms: tuple[AlarmRow, ...] = ()


@dataclass(frozen=True)
class State:
    org: str
    site: str
    online: bool
    bd_seq: int
    timestamp_us: int


@dataclass(frozen=True)
class DeviceRow:
    name: str
    bus: str
    protocol: str
    profile: str
    version: str
    hash: str


@dataclass(frozen=True)
class ChannelRow:
    address: str
    unit: str
    kind: str
    description: str
    min: float | None
    max: float | None


@dataclass(frozen=True)
class Birth:
    org: str
    site: str
    timestamp_us: int
    bd_seq: int
    session: int
    edge_version: str
    devices: tuple[DeviceRow, ...]
    channels: tuple[ChannelRow, ...]


@dataclass(frozen=True)
class CommandResult:
    org: str
    site: str
    id: str | None
    status: str
    detail: str
    took_us: int
    address: str | None
    value: float | None


@dataclass(frozen=True)
class ConfigStatus:
    org: str
    site: str
    version: str | None
    status: str
    detail: str
    switched: tuple[str, ...]


Record = Batch | State | Birth | CommandResult | ConfigStatus
