"""What the monitor draws from: filters, device metadata, styles, and a snapshot split by device and bus."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

from emsbms.can.health import FrameStat
from emsbms.edge.events import Event, Severity
from emsbms.monitor._history import History
from emsbms.types import Quality, Reading, Value

BUS_MARKER = "RxFrames"
"""A prefix that publishes this channel is a bus; every other prefix is a device."""

UPLINK_PREFIX = "uplink"
"""The uplink's counters (``uplink/State``, ``uplink/Queued``...): the uplink pane, not a device."""

CORE_PREFIX = "core"
"""The core cycle's channels (``core/CycleTime``, ``core/OverrideList``...): the core pane, not a device."""

ALARMS_PREFIX = "alarms"
"""The alarm runner's ``alarms/<rule>/<device>/State`` channels: the alarm pane, not a device."""

DEVICE_PANE_CHANNELS = ("CommState", "LastSeen")
"""Shown in the device pane, so left out of the channel table."""

ORDER = (
    "Soc", "Soh", "Voltage", "Current", "Power", "Temperature", "ChargeMaxVoltage", "DischargeMinVoltage",
    "ChargeMaxCurrent", "DischargeMaxCurrent", "MinCellVoltage", "MaxCellVoltage", "MinCellTemperature",
    "MaxCellTemperature", "Capacity", "AllowCharge", "AllowDischarge",
)
"""Normalized channels first, in this order; then the others alphabetically; then `LATE`; alarms last."""

LATE = ("DeviceType", "VendorId", "ProductCode", "Revision", "SerialNumber", "EmcyCode", "EmcyRegister",
        "EmcyText", "Dm1/")
"""Identity and diagnostic detail (told by the event log too): after the other channels."""

QUALITY_STYLE = {Quality.OK: "green", Quality.STALE: "yellow", Quality.NOT_AVAILABLE: "dim",
                 Quality.INVALID: "red"}
QUALITY_TEXT = {Quality.OK: "ok", Quality.STALE: "stale", Quality.NOT_AVAILABLE: "n/a", Quality.INVALID: "invalid"}
COMM_STYLE = {"OK": "green", "WAITING": "cyan", "STALE": "yellow", "LOST": "bold red"}
BUS_TEXT = {"ERROR_ACTIVE": "ACTIVE", "ERROR_WARNING": "WARNING", "ERROR_PASSIVE": "PASSIVE",
            "BUS_OFF": "BUS_OFF", "DOWN": "DOWN", "UNKNOWN": "unknown"}
BUS_STYLE = {"ERROR_ACTIVE": "green", "UNKNOWN": "dim", "ERROR_WARNING": "yellow",
             "ERROR_PASSIVE": "red", "BUS_OFF": "bold red", "DOWN": "bold red"}
ALARM_TEXT = {0: "ok", 1: "warning", 2: "ALARM"}
ALARM_STYLE = {0: "green", 1: "yellow", 2: "bold red"}
SEVERITY_STYLE = {Severity.OK: "green", Severity.INFO: "cyan", Severity.WARNING: "yellow",
                  Severity.ALARM: "bold red"}


class Show(Enum):
    """Which page the monitor shows."""

    CHANNELS = "channels"
    FRAMES = "frames"
    EVENTS = "events"


@dataclass(frozen=True)
class Filters:
    """What to show: only these devices and buses (empty: all), only the channels and frame IDs
    whose text contains `text` (any case; the `/` key), which page (`show`), and which part of
    it when it does not fit: the page of channels or frames, or for the events how many pages
    back from the newest (the caller turns them, e.g. every few seconds)."""

    devices: tuple[str, ...] = ()
    buses: tuple[str, ...] = ()
    page: int = 0
    text: str = ""
    show: Show = Show.CHANNELS

    def device(self, name: str) -> bool:
        return not self.devices or name in self.devices

    def bus(self, name: str) -> bool:
        return not self.buses or name in self.buses

    def matches(self, *texts: str) -> bool:
        """True if `text` is empty or any of `texts` contains it (any case)."""
        needle = self.text.strip().lower()
        return not needle or any(needle in t.lower() for t in texts)

    @property
    def narrowed(self) -> bool:
        return bool(self.devices or self.buses)


@dataclass(frozen=True)
class DeviceMeta:
    """What the snapshot does not say about a device: its bus and its profile."""

    bus: str = ""
    profile: str = ""
    version: str = ""

    @property
    def profile_text(self) -> str:
        return f"{self.profile} {self.version}".strip()


@dataclass(frozen=True)
class FrameRow:
    """One ID a bus received: its figures and the device that claims it ("" for none)."""

    bus: str
    stat: FrameStat
    device: str = ""


@dataclass(frozen=True)
class Scene:
    """Everything one frame is drawn from (the monitor builds one per redraw)."""

    snapshot: Mapping[str, Reading]
    now_us: int
    history: History = field(default_factory=History)
    events: tuple[Event, ...] = ()
    devices: Mapping[str, DeviceMeta] = field(default_factory=dict)
    events_total: int = 0
    frames: tuple[FrameRow, ...] = ()


@dataclass
class View:
    """The scene filtered and split: the buses, devices and channels to show."""

    buses: list[str]
    devices: list[str]
    channels: dict[str, list[tuple[str, Reading]]]  # device -> [(name, reading)], in display order
    events: list[Event]
    uplink: dict[str, Reading] = field(default_factory=dict)  # the uplink's counters by name; {} without one


def level(value: Value) -> int:
    """An alarm level as an int (0 for anything that is not one)."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def enum_text(value: Value) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def channel_key(name: str) -> tuple[int, int, str]:
    """Sort key of a channel within its device."""
    if name.startswith("Alarm/"):
        return (3, 0, name)
    if name in ORDER:
        return (0, ORDER.index(name), name)
    if name.startswith(LATE[-1]) or name in LATE:
        return (2, 0, name)
    return (1, 0, name)


def classify(scene: Scene, filters: Filters) -> View:
    """Split the snapshot into buses and devices, apply the filters and sort: devices by bus
    (so a bus and its device share a line when each bus has one) and name, channels by `channel_key`."""
    prefixes: dict[str, list[tuple[str, Reading]]] = {}
    for address, reading in scene.snapshot.items():
        prefix, _, name = address.partition("/")
        prefixes.setdefault(prefix, []).append((name, reading))
    uplink = dict(prefixes.pop(UPLINK_PREFIX, []))
    prefixes.pop(CORE_PREFIX, None)  # the core pane's (emsbms/monitor/_core.py), not a device
    prefixes.pop(ALARMS_PREFIX, None)  # the alarm pane's (emsbms/monitor/_alarms.py), not a device
    buses = sorted(p for p, rows in prefixes.items() if any(n == BUS_MARKER for n, _ in rows))
    bus_of = {name: meta.bus for name, meta in scene.devices.items()}
    devices = sorted((p for p in prefixes if p not in buses and filters.device(p)),
                     key=lambda d: (d not in bus_of, bus_of.get(d, ""), d))
    channels = {
        d: sorted(((n, r) for n, r in prefixes[d] if n not in DEVICE_PANE_CHANNELS and filters.matches(f"{d}/{n}")),
                  key=lambda x: channel_key(x[0]))
        for d in devices
    }
    if filters.text:  # a device none of whose channels match is left out of the table
        channels = {d: rows for d, rows in channels.items() if rows}
    shown_buses = [b for b in buses if filters.bus(b)]
    sources = set(devices) | set(shown_buses)
    events = [e for e in scene.events if not filters.narrowed or e.source in sources]
    return View(shown_buses, devices, channels, events, uplink)
