"""The monitor's panes as lines of text: buses, devices and the event log, on a column layout that
drops the least important columns when the pane is narrow and gives spare width to the growing ones."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.text import Text

from emsbms.edge.events import Event
from emsbms.monitor._model import (
    ALARM_STYLE,
    BUS_STYLE,
    BUS_TEXT,
    COMM_STYLE,
    SEVERITY_STYLE,
    DeviceMeta,
    Scene,
    View,
    enum_text,
    level,
)
from emsbms.monitor._text import fit, fit_text, format_age, format_rate, shorten, sparkline
from emsbms.types import Reading, Value

Cell = Text | str


@dataclass(frozen=True)
class Column:
    """A pane column: `width` cells; `drop` > 0 may be left out when the pane is narrow (the
    highest first); `grow` is how many spare cells it may take."""

    title: str
    width: int
    align: str = "left"
    drop: int = 0
    grow: int = 0


def plan(columns: Sequence[Column], width: int) -> list[tuple[int, int]]:
    """(index, width) of the columns kept in `width` cells (one space between columns)."""
    kept = list(range(len(columns)))

    def used() -> int:
        return sum(columns[i].width for i in kept) + max(0, len(kept) - 1)

    while used() > width and any(columns[i].drop for i in kept):
        kept.remove(max(kept, key=lambda i: (columns[i].drop, i)))
    widths = {i: columns[i].width for i in kept}
    spare = max(0, width - used())  # too narrow even so: the lines are cut at the right
    for i in kept:
        extra = min(spare, columns[i].grow)
        widths[i] += extra
        spare -= extra
    return [(i, widths[i]) for i in kept]


def table(columns: Sequence[Column], rows: Sequence[Sequence[Cell]], width: int) -> list[Text]:
    """A bold title line and one line per row, every line exactly `width` cells wide."""
    layout = plan(columns, width)
    head = Text(style="bold")
    for n, (i, w) in enumerate(layout):
        head.append((" " if n else "") + fit(columns[i].title, w, columns[i].align))
    lines = [head]
    for row in rows:
        line = Text()
        for n, (i, w) in enumerate(layout):
            if n:
                line.append(" ")
            cell = row[i]
            line.append_text(fit_text(cell if isinstance(cell, Text) else Text(cell), w, columns[i].align))
        lines.append(line)
    return [fit_text(line, width) for line in lines]


def cut(items: Sequence[str], rows: int) -> tuple[list[str], int]:
    """At most `rows` items; when some are left out, the last row is given to saying how many."""
    if len(items) <= rows:
        return list(items), 0
    keep = max(rows - 1, 0)
    return list(items[:keep]), len(items) - keep


def format_count(n: Value) -> str:
    """A counter in at most 4 characters: 42, 9999, 12k, 1.2M; — for none."""
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "—"
    n = int(n)
    if n < 10_000:
        return str(n)
    if n < 1_000_000:
        return f"{n // 1000}k"
    return f"{n / 1e6:.1f}M"


def _value(scene: Scene, address: str) -> Value:
    reading = scene.snapshot.get(address)
    return None if reading is None else reading.value


# -- buses -------------------------------------------------------------------------------------


def bus_columns(view: View) -> list[Column]:
    name_w = max(3, min(12, max((len(b) for b in view.buses), default=3)))
    return [
        Column("Bus", name_w), Column("State", 7), Column("Load", 6, "right"), Column("Rx/s", 6, "right"),
        Column("Err", 4, "right"), Column("Drop", 4, "right"), Column("Unk", 4, "right", drop=3),
        Column("Bad", 4, "right", drop=4), Column("Load 1 min", 12, drop=5, grow=12),
        Column("Last error", 10, drop=6, grow=40),
    ]


def _bus_row(scene: Scene, bus: str, spark_w: int) -> list[Cell]:
    state = enum_text(_value(scene, f"{bus}/State")).upper()
    load, rate = _value(scene, f"{bus}/BusLoad"), _value(scene, f"{bus}/RxRate")
    load_style = "" if not isinstance(load, int | float) else "red" if load >= 80 else "yellow" if load >= 50 else ""
    counters: list[Cell] = []
    for name, bad in (("ErrorFrames", "red"), ("Dropped", "red"), ("UnknownIds", ""), ("BadFrames", "yellow")):
        v = _value(scene, f"{bus}/{name}")
        counters.append(Text(format_count(v), style=bad if isinstance(v, int) and v > 0 else "dim"))
    points = scene.history.series(f"{bus}/BusLoad")
    spark = sparkline(points, scene.now_us, scene.history.window_us, spark_w, scale=(0.0, 100.0))
    last_error = _value(scene, f"{bus}/LastError")
    return [
        Text(bus, style="bold"),
        Text(BUS_TEXT.get(state, state.lower()), style=BUS_STYLE.get(state, "")),
        Text(f"{load:.1f}%" if isinstance(load, int | float) else "—", style=load_style),
        format_rate(rate) if isinstance(rate, int | float) else "—",
        *counters,
        Text(spark, style="cyan"),
        Text(str(last_error or ""), style="yellow"),
    ]


def bus_pane(scene: Scene, view: View, width: int, rows: int) -> list[Text]:
    """The bus pane: a title line and at most `rows` lines."""
    columns = bus_columns(view)
    layout = dict(plan(columns, width))
    spark_w = layout.get(8, 0)
    shown, more = cut(view.buses, rows)
    lines = table(columns, [_bus_row(scene, b, spark_w) for b in shown], width)
    if more:
        lines.append(Text(fit(f"+{more} more buses (--bus NAME)", width), style="dim"))
    return lines


# -- devices -----------------------------------------------------------------------------------


def _alarms(channels: Sequence[tuple[str, Reading]], width: int) -> Text:
    """The active alarms, worst first, coloured by level, in `width` cells: names are shortened,
    and those that do not fit are counted (``+2``)."""
    active = sorted(((level(r.value), n.removeprefix("Alarm/")) for n, r in channels
                     if n.startswith("Alarm/") and level(r.value) > 0), key=lambda x: (-x[0], x[1]))
    if not active:
        return Text("none", style="green")
    names = [name for _, name in active]
    if len(" ".join(names)) > width:
        names = [shorten(name) for name in names]
    out = Text()
    for i, ((lv, _), name) in enumerate(zip(active, names, strict=True)):
        rest = len(names) - i - 1
        marker = f" +{rest}" if rest else ""
        sep = " " if i else ""
        if out.cell_len + len(sep + name + marker) > width:
            if i == 0:  # not even the worst one fits whole: cut it
                out.append(fit(name, max(1, width - len(marker))), style=ALARM_STYLE.get(lv, ""))
                out.append(marker, style="bold")
            else:
                out.append(f" +{rest + 1}", style="bold")
            break
        out.append(sep + name, style=ALARM_STYLE.get(lv, ""))
    return out


ALARMS_COLUMN = Column("Alarms", 12, grow=60)


def _comm(scene: Scene, device: str) -> Text:
    comm = _value(scene, f"{device}/CommState")
    state = enum_text(comm) if comm is not None else "—"
    return Text(state, style=COMM_STYLE.get(state, ""))


def _seen(scene: Scene, device: str) -> str:
    seen = _value(scene, f"{device}/LastSeen")
    return format_age(scene.now_us, seen if isinstance(seen, int) and not isinstance(seen, bool) else 0)


def _device_spec(scene: Scene, view: View) -> list[tuple[Column, Callable[[str], Cell]]]:
    """The device pane's columns before Alarms, each with how to fill it for a device."""
    metas = {d: scene.devices.get(d, DeviceMeta()) for d in view.devices}
    name_w = max(6, min(16, max((len(d) for d in view.devices), default=6)))
    spec: list[tuple[Column, Callable[[str], Cell]]] = [(Column("Device", name_w), lambda d: Text(d, style="bold"))]
    bus_w = max((len(m.bus) for m in metas.values()), default=0)
    if bus_w:
        spec.append((Column("Bus", max(3, bus_w), drop=1), lambda d: metas[d].bus))
    profile_w = min(24, max((len(m.profile_text) for m in metas.values()), default=0))
    if profile_w:
        spec.append((Column("Profile", max(7, profile_w), drop=2),
                     lambda d: Text(metas[d].profile_text, style="dim")))
    return [*spec, (Column("Comm", 7), lambda d: _comm(scene, d)),
            (Column("Seen", 4, "right"), lambda d: _seen(scene, d))]


def device_width(scene: Scene, view: View) -> int:
    """The device pane's width with every column at its own width, and room for two alarms."""
    columns = [c for c, _ in _device_spec(scene, view)] + [ALARMS_COLUMN]
    return sum(c.width for c in columns) + len(columns) - 1 + ALARMS_ROOM


ALARMS_ROOM = 8
"""What the device pane asks beyond the Alarms column's minimum, before the bus pane grows."""


def device_pane(scene: Scene, view: View, width: int, rows: int) -> list[Text]:
    """The device pane: a title line and at most `rows` lines. Bus and profile (from the
    scene's device metadata) are the first columns to go when the pane is narrow."""
    spec = _device_spec(scene, view)
    alarms_w = dict(plan([c for c, _ in spec] + [ALARMS_COLUMN], width)).get(len(spec), ALARMS_COLUMN.width)
    spec.append((ALARMS_COLUMN, lambda d: _alarms(view.channels.get(d, []), alarms_w)))
    shown, more = cut(view.devices, rows)
    lines = table([c for c, _ in spec], [[f(d) for _, f in spec] for d in shown], width)
    if more:
        lines.append(Text(fit(f"+{more} more devices (--device NAME)", width), style="dim"))
    return lines


# -- events ------------------------------------------------------------------------------------


def event_pane(scene: Scene, view: View, width: int, rows: int) -> list[Text]:
    """The event log: a title line and the last `rows` events, oldest first."""
    events = view.events[-rows:] if rows > 0 else []
    source_w = max(6, min(16, max((len(e.source) for e in view.events), default=6)))
    total = scene.events_total or len(view.events)
    title = f"Events ({total}, newest last)" if total else "Events"
    columns = [Column("Time UTC", 8, drop=1), Column("Source", source_w), Column(title, 10, grow=200)]
    if not events:
        return table(columns, [["", "", Text("none yet", style="dim")]], width)
    return table(columns, [_event_row(e) for e in events], width)


def _event_row(event: Event) -> list[Cell]:
    clock = time.strftime("%H:%M:%S", time.gmtime(event.timestamp_us / 1e6))
    style = SEVERITY_STYLE.get(event.severity, "")
    text = Text(event.text, style=style)
    if event.repeat > 1:
        text.append(f" ×{event.repeat}", style="bold")
    return [Text(clock, style="dim"), Text(event.source, style="bold"), text]
