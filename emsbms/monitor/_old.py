"""The monitor's drawing code: a pure function from a registry snapshot to a rich renderable.

`render(snapshot, now_us, width, height, filters)` lays out a header line, a bus pane (the
``<bus>/State``, RxRate, ErrorFrames, Dropped and UnknownIds channels), a device pane (CommState,
time since the last frame, worst active alarm) and every other channel with its value, unit,
age and quality (as text and colour). Every line is built to an exact width, so the result
always fits `width` x `height` (80x24 included). It reads no clock and touches no bus: the
caller passes the snapshot and the time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from rich.console import Group, RenderableType
from rich.text import Text

from emsbms.types import Quality, Reading, Value

SIDE_BY_SIDE_MIN = 78
"""Below this width the bus and device panes are stacked instead of side by side."""

CELL = 40
"""Width of one channel cell; as many cells as fit share a line."""

BUS_MARKER = "RxFrames"
"""A prefix that publishes this channel is a bus; every other prefix is a device."""

DEVICE_PANE_CHANNELS = ("CommState", "LastSeen")
"""Shown in the device pane, so left out of the channel list."""

ORDER = (
    "Soc", "Soh", "Voltage", "Current", "Power", "Temperature", "ChargeMaxVoltage", "DischargeMinVoltage",
    "ChargeMaxCurrent", "DischargeMaxCurrent", "MinCellVoltage", "MaxCellVoltage", "MinCellTemperature",
    "MaxCellTemperature", "Capacity", "AllowCharge", "AllowDischarge",
)
"""Normalized channels first, in this order; then the others alphabetically; alarms last."""

QUALITY_TEXT = {Quality.OK: "ok", Quality.STALE: "stale", Quality.NOT_AVAILABLE: "n/a", Quality.INVALID: "inval"}
QUALITY_STYLE = {Quality.OK: "green", Quality.STALE: "yellow", Quality.NOT_AVAILABLE: "dim",
                 Quality.INVALID: "red"}
COMM_STYLE = {"OK": "green", "WAITING": "cyan", "STALE": "yellow", "LOST": "bold red"}
BUS_TEXT = {"ERROR_ACTIVE": "active", "ERROR_WARNING": "warning", "ERROR_PASSIVE": "passive",
            "BUS_OFF": "bus-off", "DOWN": "down", "UNKNOWN": "unknown"}
BUS_STYLE = {"ERROR_ACTIVE": "green", "UNKNOWN": "green", "ERROR_WARNING": "yellow",
             "ERROR_PASSIVE": "red", "BUS_OFF": "bold red", "DOWN": "bold red"}
ALARM_TEXT = {0: "ok", 1: "warning", 2: "ALARM"}
ALARM_STYLE = {0: "green", 1: "yellow", 2: "bold red"}


@dataclass(frozen=True)
class Filters:
    """What to show: only these devices and buses (empty: all), and which page of channels
    when they do not all fit (the caller turns the pages, e.g. every few seconds)."""

    devices: tuple[str, ...] = ()
    buses: tuple[str, ...] = ()
    page: int = 0

    def device(self, name: str) -> bool:
        return not self.devices or name in self.devices

    def bus(self, name: str) -> bool:
        return not self.buses or name in self.buses


# -- formatting helpers (pure) ---------------------------------------------------------------


def fit(text: str, width: int, align: str = "left") -> str:
    """`text` cut (with an ellipsis) or padded to exactly `width` characters."""
    if width <= 0:
        return ""
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if align == "right" else text.ljust(width)


def format_number(value: float) -> str:
    """A float with at most 3 decimals and no trailing zeros (77.0 -> 77, 3.3125 -> 3.312)."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 10_000:
        return f"{value:.0f}"
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_value(value: Value, unit: str = "") -> str:
    """A channel value with its unit, as the monitor shows it."""
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = format_number(value)
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def format_age(now_us: int, timestamp_us: int) -> str:
    """Time since `timestamp_us`: 0.4s, 12s, 5m, 3h."""
    if timestamp_us <= 0:
        return "—"
    seconds = max(0.0, (now_us - timestamp_us) / 1e6)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def _level(value: Value) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _enum_text(value: Value) -> str:
    return str(value.value if isinstance(value, Enum) else value)


def _channel_key(name: str) -> tuple[int, int, str]:
    if name.startswith("Alarm/"):
        return (2, 0, name)
    if name in ORDER:
        return (0, ORDER.index(name), name)
    return (1, 0, name)


# -- the model the panes draw from -----------------------------------------------------------


@dataclass
class _View:
    buses: list[str]
    devices: list[str]
    channels: dict[str, list[tuple[str, Reading]]]  # device -> [(name, reading)]


def _classify(snapshot: Mapping[str, Reading], filters: Filters) -> _View:
    prefixes: dict[str, list[tuple[str, Reading]]] = {}
    for address, reading in snapshot.items():
        prefix, _, name = address.partition("/")
        prefixes.setdefault(prefix, []).append((name, reading))
    buses = sorted(p for p, rows in prefixes.items() if any(n == BUS_MARKER for n, _ in rows))
    devices = sorted(p for p in prefixes if p not in buses and filters.device(p))
    channels = {
        d: sorted(((n, r) for n, r in prefixes[d] if n not in DEVICE_PANE_CHANNELS), key=lambda x: _channel_key(x[0]))
        for d in devices
    }
    return _View([b for b in buses if filters.bus(b)], devices, channels)


# -- panes -------------------------------------------------------------------------------------


def _header(view: _View, now_us: int, width: int, title: str, filters: Filters) -> Text:
    clock = time.strftime("%H:%M:%S", time.gmtime(now_us / 1e6))
    parts = [title, _count(len(view.devices), "device"), _count(len(view.buses), "bus"), f"{clock} UTC"]
    if filters.devices or filters.buses:
        parts.append("filter: " + ",".join(filters.devices + filters.buses))
    return Text(fit("  ".join(parts), width), style="bold reverse")


def _bus_lines(snapshot: Mapping[str, Reading], buses: list[str], width: int, rows: int) -> list[Text]:
    name_w = max(4, width - 30)
    head = Text(fit("Bus", name_w) + " " + fit("State", 7) + fit("Rx/s", 7, "right")
                + fit("Err", 5, "right") + fit("Drop", 5, "right") + fit("Unk", 5, "right"), style="bold")
    lines = [head]
    for bus in _cut(buses, rows):
        if bus.startswith("+"):
            lines.append(Text(fit(f"{bus} more buses", width), style="dim"))
            continue

        def val(name: str, b: str = bus) -> Value:
            r = snapshot.get(f"{b}/{name}")
            return None if r is None else r.value

        state = _enum_text(val("State")).upper()
        rate = val("RxRate")
        line = Text(fit(bus, name_w) + " ")
        line.append(fit(BUS_TEXT.get(state, state.lower()), 7), style=BUS_STYLE.get(state, ""))
        line.append(fit(format_value(rate) if isinstance(rate, int | float) else "—", 7, "right"))
        for name in ("ErrorFrames", "Dropped", "UnknownIds"):
            v = val(name)
            style = "red" if name != "UnknownIds" and isinstance(v, int) and v > 0 else ""
            line.append(fit(format_value(v), 5, "right"), style=style)
        lines.append(line)
    return lines


def _worst_alarm(channels: list[tuple[str, Reading]]) -> tuple[int, str]:
    worst, label = 0, ""
    for name, r in channels:
        if name.startswith("Alarm/") and _level(r.value) > worst:
            worst, label = _level(r.value), name.removeprefix("Alarm/")
    return worst, label


def _device_lines(snapshot: Mapping[str, Reading], view: _View, now_us: int, width: int, rows: int) -> list[Text]:
    name_w = max(4, min(16, width - 25))
    alarm_w = max(4, width - name_w - 14)
    head = Text(fit("Device", name_w) + " " + fit("Comm", 7) + " " + fit("Seen", 4, "right") + " "
                + fit("Alarm", alarm_w), style="bold")
    lines = [head]
    for device in _cut(view.devices, rows):
        if device.startswith("+"):
            lines.append(Text(fit(f"{device} more devices", width), style="dim"))
            continue
        comm = snapshot.get(f"{device}/CommState")
        seen = snapshot.get(f"{device}/LastSeen")
        state = _enum_text(comm.value) if comm is not None else "—"
        seen_us = seen.value if seen is not None and isinstance(seen.value, int) else 0
        level, alarm = _worst_alarm(view.channels.get(device, []))
        line = Text(fit(device, name_w) + " ")
        line.append(fit(state, 7), style=COMM_STYLE.get(state, ""))
        line.append(" " + fit(format_age(now_us, seen_us), 4, "right") + " ")
        line.append(fit(alarm or ALARM_TEXT[0], alarm_w), style=ALARM_STYLE.get(level, ""))
        lines.append(line)
    return lines


def _cut(items: list[str], rows: int) -> list[str]:
    """At most `rows` items; when some are left out, the last row says how many ("+N")."""
    if len(items) <= rows:
        return items
    keep = max(rows - 1, 0)
    return [*items[:keep], f"+{len(items) - keep}"]


def _channel_cell(name: str, reading: Reading, now_us: int, width: int) -> Text:
    value_w, age_w, q_w = 9, 4, 5
    name_w = max(4, width - value_w - age_w - q_w - 4)
    alarm = name.startswith("Alarm/")
    shown = "!" + name.removeprefix("Alarm/") if alarm else name
    if alarm:
        level = _level(reading.value)
        value_text, value_style = ALARM_TEXT.get(level, str(level)), ALARM_STYLE.get(level, "")
    else:
        value_text, value_style = format_value(reading.value, reading.unit), QUALITY_STYLE[reading.quality]
    cell = Text(" " + fit(shown, name_w) + " ")
    cell.append(fit(value_text, value_w, "right"), style=value_style)
    cell.append(" " + fit(format_age(now_us, reading.timestamp_us), age_w, "right") + " ")
    cell.append(fit(QUALITY_TEXT[reading.quality], q_w), style=QUALITY_STYLE[reading.quality])
    return cell


def _channel_cells(snapshot: Mapping[str, Reading], view: _View, now_us: int, width: int) -> list[Text]:
    cells: list[Text] = []
    for device in view.devices:
        comm = snapshot.get(f"{device}/CommState")
        state = _enum_text(comm.value) if comm is not None else ""
        rule = "─ " + fit(device, width - 12).rstrip() + " "
        head = Text(rule + "─" * max(0, width - len(rule) - len(state) - 2) + " ", style="bold")
        head.append(state, style=COMM_STYLE.get(state, ""))
        head.append(" ")
        cells.append(head)
        quiet = 0
        for name, reading in view.channels[device]:
            if name.startswith("Alarm/") and _level(reading.value) == 0:
                quiet += 1  # inactive alarms are summed up in one line
                continue
            cells.append(_channel_cell(name, reading, now_us, width))
        if quiet:
            cells.append(Text(fit(f" {_count(quiet, 'alarm')} ok", width), style="green"))
    return cells


def _flow(cells: list[Text], columns: int, rows: int, cell_w: int, page: int = 0) -> list[Text]:
    """Lay cells out column by column. If they do not fit, show page `page` (modulo the page
    count) and let the last cell say how many are not shown."""
    capacity = columns * rows
    if rows <= 0:
        return []
    if len(cells) > capacity:
        per_page = max(1, capacity - 1)
        pages = math.ceil(len(cells) / per_page)
        first = (page % pages) * per_page
        shown = cells[first : first + per_page]
        note = f" +{len(cells) - len(shown)} more · page {page % pages + 1}/{pages}"
        cells = [*shown, Text(fit(note, cell_w), style="dim")][:capacity]
    lines: list[Text] = []
    used_rows = min(rows, math.ceil(len(cells) / columns)) if columns else 0
    for r in range(used_rows):
        line = Text()
        for c in range(columns):
            i = c * used_rows + r
            if i < len(cells):
                line.append_text(cells[i])
        lines.append(line)
    return lines


def _side_by_side(left: list[Text], right: list[Text], left_w: int) -> list[Text]:
    lines = []
    for i in range(max(len(left), len(right))):
        line = Text()
        a = left[i] if i < len(left) else Text()
        line.append_text(a)
        if a.cell_len < left_w:
            line.append(" " * (left_w - a.cell_len))
        line.append(" ")
        if i < len(right):
            line.append_text(right[i])
        lines.append(line)
    return lines


def _top_panes(snapshot: Mapping[str, Reading], view: _View, now_us: int, width: int, height: int) -> list[Text]:
    rows = max(1, min(max(len(view.buses), len(view.devices), 1), height // 3))
    if width >= SIDE_BY_SIDE_MIN:
        left_w = (width - 1) // 2
        right_w = width - 1 - left_w
        left = _bus_lines(snapshot, view.buses, left_w, rows)
        right = _device_lines(snapshot, view, now_us, right_w, rows)
        return _side_by_side(left, right, left_w)
    bus_rows = max(1, min(len(view.buses), height // 4))
    dev_rows = max(1, min(len(view.devices), height // 4))
    return [*_bus_lines(snapshot, view.buses, width, bus_rows),
            *_device_lines(snapshot, view, now_us, width, dev_rows)]


def render(
    snapshot: Mapping[str, Reading],
    now_us: int,
    width: int = 80,
    height: int = 24,
    filters: Filters | None = None,
    title: str = "emsbms monitor",
) -> RenderableType:
    """Draw a snapshot as at most `height` lines of at most `width` characters."""
    filters = filters or Filters()
    view = _classify(snapshot, filters)
    lines: list[Text] = [_header(view, now_us, width, title, filters)]
    if not snapshot:
        lines.append(Text(fit("waiting for data…", width), style="dim"))
        return _group(lines, width, height)
    lines.extend(_top_panes(snapshot, view, now_us, width, height))
    rows = height - len(lines)
    columns = max(1, width // CELL)
    cell_w = CELL if columns > 1 else width
    lines.extend(_flow(_channel_cells(snapshot, view, now_us, cell_w), columns, rows, cell_w, filters.page))
    return _group(lines, width, height)


def _group(lines: Iterable[Text], width: int, height: int) -> Group:
    out = []
    for line in list(lines)[:height]:
        line.no_wrap = True
        line.overflow = "crop"
        line.truncate(width)
        out.append(line)
    return Group(*out)
