"""The monitor's frame: the header, the bus, device and event panes and the channel table, laid
out for the terminal's size (stacked when narrow, side by side from 80 columns, three panes
across from 150)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence

from rich.console import Group, RenderableType
from rich.text import Text

from emsbms.events import Event
from emsbms.monitor._channels import CellPlan, cell_count, channel_cells, choose_columns, flow, longest_name
from emsbms.monitor._history import History
from emsbms.monitor._model import DeviceMeta, Filters, Scene, View, classify
from emsbms.monitor._panes import Column, bus_columns, bus_pane, device_pane, event_pane
from emsbms.monitor._text import count, fit
from emsbms.types import Reading

SIDE_BY_SIDE_MIN = 78
"""From this width the bus and device panes stand side by side."""

WIDE_MIN = 150
"""From this width the event log stands beside them too."""

EVENTS_WIDE_MIN = 60
"""The event pane's narrowest width when it stands beside the others."""


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
) -> RenderableType:
    """Draw a snapshot (with its history and events) as at most `height` lines of `width` cells.

    Pure: it reads no clock and touches no bus; `now_us` is the time the ages are counted to.
    """
    scene = Scene(snapshot, now_us, history or History(), tuple(events), devices or {}, events_total)
    return render_scene(scene, width, height, filters or Filters(), title)


def render_scene(scene: Scene, width: int, height: int, filters: Filters, title: str) -> RenderableType:
    """`render` for a ready-made Scene."""
    view = classify(scene, filters)
    lines: list[Text] = [_header(view, scene.now_us, width, title, filters)]
    if not scene.snapshot:
        lines.append(Text(fit("waiting for data…", width), style="dim"))
        return _group(lines, width, height)
    lines.extend(_panes(scene, view, width, height))
    lines.extend(_channels(scene, view, width, height - len(lines), filters.page))
    return _group(lines, width, height)


def _header(view: View, now_us: int, width: int, title: str, filters: Filters) -> Text:
    clock = time.strftime("%H:%M:%S", time.gmtime(now_us / 1e6))
    parts = [title, count(len(view.devices), "device"), count(len(view.buses), "bus"), f"{clock} UTC"]
    if filters.devices or filters.buses:
        parts.append("filter: " + ",".join(filters.devices + filters.buses))
    return Text(fit("  ".join(parts), width), style="bold reverse")


def _natural(columns: Sequence[Column], most_drop: int) -> int:
    """Width of the columns whose `drop` is at most `most_drop`, without growing."""
    kept = [c.width for c in columns if c.drop <= most_drop]
    return sum(kept) + len(kept) - 1


def _panes(scene: Scene, view: View, width: int, height: int) -> list[Text]:
    rows = max(1, min(max(len(view.buses), len(view.devices), 1), max(2, height // 4)))
    event_rows = max(2, min(12, height // 7))
    if width >= WIDE_MIN:
        return _three_across(scene, view, width, max(rows, min(event_rows, 6)))
    if width >= SIDE_BY_SIDE_MIN:
        bus_w = _natural(bus_columns(view), 0)
        left = bus_pane(scene, view, bus_w, rows)
        right = device_pane(scene, view, width - bus_w - 1, rows)
        return [*_beside([left, right], [bus_w, width - bus_w - 1]),
                *event_pane(scene, view, width, min(event_rows, max(1, len(view.events))))]
    small = max(1, height // 6)
    return [*bus_pane(scene, view, width, min(rows, small)), *device_pane(scene, view, width, min(rows, small)),
            *event_pane(scene, view, width, min(2, max(1, len(view.events))))]


def _three_across(scene: Scene, view: View, width: int, rows: int) -> list[Text]:
    bus_w = _natural(bus_columns(view), 5)
    device_w = min(76, (width - bus_w - 2) // 2)
    event_w = width - bus_w - device_w - 2
    if event_w < EVENTS_WIDE_MIN:
        bus_w = max(_natural(bus_columns(view), 0), bus_w - (EVENTS_WIDE_MIN - event_w))
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


def _channels(scene: Scene, view: View, width: int, rows: int, page: int) -> list[Text]:
    if rows <= 0:
        return []
    columns = choose_columns(width, rows, cell_count(view))
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
