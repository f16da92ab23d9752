"""The monitor's frame: the header, the bus, device and event panes and the channel table, laid
out for the terminal's size (stacked when narrow, side by side from 80 columns, three panes
across from 150); or the frames page, or the event details page."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum

from rich.console import Group, RenderableType
from rich.text import Text

from emsbms.edge.events import Event
from emsbms.monitor._alarms import alarm_pane, alarm_rows
from emsbms.monitor._channels import CellPlan, cell_count, channel_cells, choose_columns, flow, longest_name
from emsbms.monitor._core import core_pane
from emsbms.monitor._details import details_page
from emsbms.monitor._frames import frames_page
from emsbms.monitor._history import History
from emsbms.monitor._model import DeviceMeta, Filters, FrameRow, Scene, Show, View, classify
from emsbms.monitor._panes import Column, bus_columns, bus_pane, device_pane, device_width, event_pane
from emsbms.monitor._text import count, fit
from emsbms.monitor._uplink import uplink_pane
from emsbms.types import Reading

SIDE_BY_SIDE_MIN = 78
"""From this width the bus and device panes stand side by side."""

WIDE_MIN = 150
"""From this width the event log stands beside them too."""

EVENTS_WIDE_MAX = 100
"""Beyond this width the event pane gives room back to the bus pane (for its load sparkline)."""


def render(
    snapshot: Mapping[str, Reading],
    now_us: int,
    width: int = 80,
    height: int = 24,
    filters: Filters | None = None,
    title: str = "emsbms monitor",
    *,
    history: History | None = None,
    events: Sequence[Event] = (),
    devices: Mapping[str, DeviceMeta] | None = None,
    events_total: int = 0,
    status: str = "",
    frames: Sequence[FrameRow] = (),
) -> RenderableType:
    """Draw a snapshot (with its history, events and frame IDs) as at most `height` lines of
    `width` cells: the page `filters.show` says.

    Pure: it reads no clock and touches no bus; `now_us` is the time the ages are counted to.
    `status` goes at the right of the header line (key hints, "PAUSED"), as much of it as fits
    (its last " · " parts go first).
    """
    scene = Scene(snapshot, now_us, history or History(), tuple(events), devices or {}, events_total, tuple(frames))
    return render_scene(scene, width, height, filters or Filters(), title, status)


def render_scene(scene: Scene, width: int, height: int, filters: Filters, title: str,
                 status: str = "") -> RenderableType:
    """`render` for a ready-made Scene."""
    view = classify(scene, filters)
    lines: list[Text] = [_header(view, scene.now_us, width, title, filters, status)]
    body = height - 1
    if filters.show is Show.FRAMES:
        lines.extend(frames_page(scene, filters, width, body))
        return _group(lines, width, height)
    if filters.show is Show.EVENTS:
        lines.extend(details_page(scene, view, width, body, filters.page))
        return _group(lines, width, height)
    if not scene.snapshot:
        lines.append(Text(fit("waiting for data…", width), style="dim"))
        return _group(lines, width, height)
    uplink = uplink_pane(view, width)  # between the panes and the channel table, when there is an uplink
    uplink = [*uplink, *alarm_pane(alarm_rows(scene.snapshot), scene.now_us, width)]  # rule alarms not ok
    uplink = [*uplink, *core_pane(scene.snapshot, scene.now_us, width)]  # the core cycle and its overrides
    body -= len(uplink)
    pane_rows = max(1, min(max(len(view.buses), len(view.devices), 1), max(2, body // 3)))
    event_rows = max(2, min(12, height // 7))
    mode = _mode(width)
    pane_lines = _pane_lines(view, width, height, pane_rows, event_rows, mode)
    columns, needed = _table_shape(view, width, body - pane_lines)
    spare = body - pane_lines - needed
    if spare > 0 and len(view.events) > event_rows:  # the table does not need every line: more events
        if mode is Mode.ACROSS:
            # the free lines lie under the bus and device panes: the events go there, full width
            head = _pane_lines(view, width, height, pane_rows, 0, Mode.BESIDE)
            free = body - head - needed
            if free > pane_lines - 1:
                mode, event_rows = Mode.BESIDE, free
            else:
                event_rows += spare
        else:
            event_rows += spare
    panes = _panes(scene, view, width, height, pane_rows, event_rows, mode)
    lines.extend(panes)
    lines.extend(uplink)
    columns, _ = _table_shape(view, width, body - len(panes))
    lines.extend(_channels(scene, view, width, body - len(panes), columns, filters.page))
    return _group(lines, width, height)


class Mode(Enum):
    """How the bus, device and event panes are laid out."""

    STACKED = "stacked"  # one above the other (narrow terminals)
    BESIDE = "beside"  # buses and devices side by side, the events under them at full width
    ACROSS = "across"  # the three side by side


def _mode(width: int) -> Mode:
    return Mode.ACROSS if width >= WIDE_MIN else Mode.BESIDE if width >= SIDE_BY_SIDE_MIN else Mode.STACKED


def _header(view: View, now_us: int, width: int, title: str, filters: Filters, status: str) -> Text:
    """Title, counts, clock and filter on the left, `status` on the right; the counts go first
    when both do not fit, then the status."""
    clock = time.strftime("%H:%M:%S", time.gmtime(now_us / 1e6))
    counts = [count(len(view.devices), "device"), count(len(view.buses), "bus")]
    extra = ["filter: " + ",".join(filters.devices + filters.buses)] if filters.narrowed else []
    if filters.text:
        extra.append(f"/{filters.text}")
    if filters.show is not Show.CHANNELS:
        extra.insert(0, filters.show.value)
    statuses = [" · ".join(status.split(" · ")[:n]) for n in range(status.count(" · ") + 1, 0, -1)] if status else []
    for shown in statuses:
        for parts in ([title, *counts, f"{clock} UTC", *extra], [title, f"{clock} UTC", *extra]):
            left = "  ".join(parts)
            if len(left) + len(shown) + 3 <= width:
                return Text(left + " " * (width - len(left) - len(shown) - 1) + shown + " ", style="bold reverse")
    return Text(fit("  ".join([title, *counts, f"{clock} UTC", *extra]), width), style="bold reverse")


def _natural(columns: Sequence[Column], most_drop: int) -> int:
    """Width of the columns whose `drop` is at most `most_drop`, without growing."""
    kept = [c.width for c in columns if c.drop <= most_drop]
    return sum(kept) + len(kept) - 1


def _pane_lines(view: View, width: int, height: int, rows: int, event_rows: int, mode: Mode | None = None) -> int:
    """How many lines `_panes` takes, without drawing it: each pane is a title and its rows
    (the last of which may say how many more there are); an empty event log says so in one."""
    mode = mode or _mode(width)
    shown_events = min(event_rows, max(1, len(view.events)))
    buses, devices = len(view.buses), len(view.devices)
    if mode is Mode.ACROSS:
        across = max(rows, shown_events)
        return 1 + max(min(buses, across), min(devices, across), min(across, max(1, len(view.events))))
    if mode is Mode.BESIDE:
        return 1 + max(min(buses, rows), min(devices, rows)) + 1 + shown_events
    small = min(rows, max(1, height // 6))
    return 1 + min(buses, small) + 1 + min(devices, small) + 1 + min(2, shown_events)


def _panes(scene: Scene, view: View, width: int, height: int, rows: int, event_rows: int,
           mode: Mode | None = None) -> list[Text]:
    """The bus, device and event panes: `rows` lines of buses and devices (plus titles), up
    to `event_rows` events."""
    mode = mode or _mode(width)
    shown_events = min(event_rows, max(1, len(view.events)))
    if mode is Mode.ACROSS:
        return _three_across(scene, view, width, max(rows, shown_events))
    if mode is Mode.BESIDE:
        # the bus pane keeps its required columns and takes what the device pane does not need
        columns = bus_columns(view)
        bus_w = max(_natural(columns, 0), min(_natural(columns, 4), width - device_width(scene, view) - 1))
        left = bus_pane(scene, view, bus_w, rows)
        right = device_pane(scene, view, width - bus_w - 1, rows)
        return [*_beside([left, right], [bus_w, width - bus_w - 1]), *event_pane(scene, view, width, shown_events)]
    small = max(1, height // 6)
    return [*bus_pane(scene, view, width, min(rows, small)), *device_pane(scene, view, width, min(rows, small)),
            *event_pane(scene, view, width, min(2, shown_events))]


def _three_across(scene: Scene, view: View, width: int, rows: int) -> list[Text]:
    """Buses, devices and events side by side: the bus pane keeps its counters (its load
    sparkline only if the others have room), the device and event panes share the rest."""
    columns = bus_columns(view)
    bus_w = _natural(columns, 4)
    device_w = (width - bus_w - 2) // 2
    event_w = width - bus_w - device_w - 2
    if event_w > EVENTS_WIDE_MAX:
        with_spark = _natural(columns, 5)
        bus_w = min(with_spark + 12, bus_w + 2 * (event_w - EVENTS_WIDE_MAX))
        device_w = (width - bus_w - 2) // 2
        event_w = width - bus_w - device_w - 2
    panes = [bus_pane(scene, view, bus_w, rows), device_pane(scene, view, device_w, rows),
             event_pane(scene, view, event_w, rows)]
    return _beside(panes, [bus_w, device_w, event_w])


def _beside(panes: Sequence[Sequence[Text]], widths: Sequence[int]) -> list[Text]:
    """Panes side by side, one space apart, each padded to its width."""
    lines = []
    for i in range(max(len(p) for p in panes)):
        line = Text()
        for n, (pane, w) in enumerate(zip(panes, widths, strict=True)):
            if n:
                line.append(" ")
            part = pane[i] if i < len(pane) else Text()
            line.append_text(part)
            if part.cell_len < w:
                line.append(" " * (w - part.cell_len))
        lines.append(line)
    return lines


def _table_shape(view: View, width: int, rows: int) -> tuple[int, int]:
    """(columns, lines) the channel table takes in `rows` lines of `width` cells."""
    if rows <= 0:
        return 1, 0
    cells = cell_count(view)
    columns = choose_columns(width, rows, cells)
    return columns, min(rows, math.ceil(cells / columns))


def _channels(scene: Scene, view: View, width: int, rows: int, columns: int, page: int) -> list[Text]:
    if rows <= 0:
        return []
    cell_w = width // columns
    cells = channel_cells(scene, view, CellPlan.for_width(cell_w, longest_name(view)))
    return flow(cells, columns, rows, cell_w, page, scene)


def _group(lines: Iterable[Text], width: int, height: int) -> Group:
    out = []
    for line in list(lines)[:height]:
        line.no_wrap = True
        line.overflow = "crop"
        line.truncate(width)
        out.append(line)
    return Group(*out)
