"""The monitor's channel table: one cell per channel (value and unit, age, quality, sparkline),
grouped under a header per device, flowed into columns and turned into pages when it does not fit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from rich.cells import cell_len
from rich.text import Span, Text

from emsbms.monitor._model import (
    ALARM_STYLE,
    ALARM_TEXT,
    COMM_STYLE,
    QUALITY_STYLE,
    QUALITY_TEXT,
    Scene,
    View,
    enum_text,
    level,
)
from emsbms.monitor._text import abbreviate, count, fit, fit_text, format_age, format_value, sparkline, styled
from emsbms.types import Quality, Reading

MIN_CELL = 40
"""Narrowest channel cell (two columns on 80 characters)."""

MAX_CELL = 64
"""Widest channel cell: wider terminals get more columns rather than longer sparklines."""

AGE_W = 4
NAME_MAX = 19
SPARK_MIN = 7

HEX_CHANNELS = {"EmcyCode": 4, "EmcyRegister": 2, "VendorId": 8, "ProductCode": 8, "Revision": 8}
"""Codes and identity numbers, shown in hex with this many digits (and without a sparkline)."""


@dataclass(frozen=True)
class CellPlan:
    """Widths inside one cell: name, value, age and sparkline."""

    width: int
    name: int
    value: int
    spark: int

    @staticmethod
    def for_width(width: int, longest_name: int) -> CellPlan:
        value = 10 if width < 46 else 12
        rest = max(0, width - value - AGE_W - 5)  # 5: the lead space and the gaps between fields
        name = max(min(10, rest), min(longest_name, NAME_MAX, rest - SPARK_MIN))
        return CellPlan(width, name, value, max(0, rest - name))


Part = tuple[str, str]
"""A piece of a line: (text, style)."""


@dataclass(frozen=True)
class Cell:
    """One place of the channel table: the device it belongs to, and how to draw it (called
    only if its page is shown) as parts exactly the cell's width."""

    device: str
    draw: Callable[[], list[Part]]
    header: bool = False


def exact(parts: list[Part], width: int) -> list[Part]:
    """`parts` padded, or cut with an ellipsis, to exactly `width` cells."""
    used = sum(len(t) if t.isascii() else cell_len(t) for t, _ in parts)
    if used == width:
        return parts
    if used < width:
        return [*parts, (" " * (width - used), "")]
    text = fit_text(styled(parts), width)
    return [(text.plain[span.start : span.end], str(span.style)) for span in _spans(text)]


def _spans(text: Text) -> list[Span]:
    """The spans of `text` covering every character (unstyled stretches get an empty style)."""
    out: list[Span] = []
    pos = 0
    for span in sorted(text.spans, key=lambda s: s.start):
        if span.start > pos:
            out.append(Span(pos, span.start, ""))
        out.append(Span(max(pos, span.start), span.end, span.style))
        pos = max(pos, span.end)
    if pos < len(text.plain):
        out.append(Span(pos, len(text.plain), ""))
    return out


def value_text(name: str, reading: Reading) -> str:
    """A reading as the table shows it: value and unit, a code in hex, or its quality if it has no value."""
    if reading.value is None:
        return QUALITY_TEXT[reading.quality] if reading.quality is not Quality.OK else "—"
    digits = HEX_CHANNELS.get(name)
    if digits and isinstance(reading.value, int) and not isinstance(reading.value, bool):
        return f"0x{reading.value:0{digits}X}"
    return format_value(reading.value, reading.unit)


def _value_cell(name: str, reading: Reading, scene: Scene, plan: CellPlan, prefix: str) -> list[Part]:
    quality = reading.quality
    text = value_text(name, reading)
    value_style = QUALITY_STYLE[quality]
    lead = " " + fit(abbreviate(name, plan.name), plan.name) + " "
    age = (" " + fit(format_age(scene.now_us, reading.timestamp_us), AGE_W, "right"),
           "yellow" if quality is Quality.STALE else "dim")
    if isinstance(reading.value, str) and len(text) > plan.value:
        # a long text (a state, an EMCY's meaning, a DTC list) takes the sparkline's place too
        wide = fit(text, plan.value + (plan.spark + 1 if plan.spark else 0))
        return exact([(lead, ""), (wide, value_style), age], plan.width)
    parts = [(lead, ""), (fit(text, plan.value, "right"), value_style), age]
    if plan.spark:
        if quality is not Quality.OK:
            if reading.value is not None:  # without a value, the value column says it already
                parts.append((" " + fit(QUALITY_TEXT[quality], plan.spark), value_style))
        elif name not in HEX_CHANNELS:
            points = scene.history.series(prefix + name)
            parts.append((" " + sparkline(points, scene.now_us, scene.history.window_us, plan.spark), "cyan"))
    return exact(parts, plan.width)


def _alarm_cell(name: str, reading: Reading, scene: Scene, plan: CellPlan) -> list[Part]:
    lv = level(reading.value)
    return exact([
        (" ", ""),
        (fit("!" + abbreviate(name.removeprefix("Alarm/"), plan.name - 1), plan.name), ALARM_STYLE[2]),
        (" " + fit(ALARM_TEXT.get(lv, str(lv)), plan.value, "right"), ALARM_STYLE.get(lv, "")),
        (" " + fit(format_age(scene.now_us, reading.timestamp_us), AGE_W, "right"), "dim"),
    ], plan.width)


def device_header(scene: Scene, device: str, width: int, note: str = "") -> list[Part]:
    """``─ cia418_bms  cia418-bms 1.0.0 · can2 ───── OK``, exactly `width` wide: the profile and
    bus are left out (the bus first) when they do not fit."""
    comm = scene.snapshot.get(f"{device}/CommState")
    state = enum_text(comm.value) if comm is not None else ""
    meta = scene.devices.get(device)
    room = width - len(state) - 6  # "─ " before, " ─ " and a space around the state
    name = fit(device + note, min(len(device + note), max(room, 4)))
    parts: list[Part] = [("─ " + name, "bold")]
    if meta is not None and not note:
        for detail in (" · ".join(x for x in (meta.profile_text, meta.bus) if x), meta.profile_text):
            if detail and len(name) + 2 + len(detail) <= room:
                parts += [("  ", ""), (detail, "dim")]
                break
    fill = width - sum(len(t) for t, _ in parts) - len(state) - 2
    parts += [(" " + "─" * max(0, fill - 1) + " ", "bold"), (state, COMM_STYLE.get(state, ""))]
    return exact(parts, width)


def channel_cells(scene: Scene, view: View, plan: CellPlan) -> list[Cell]:
    """Every cell of the table: per device a header, its channels, active alarms, and one line
    summing up the alarms that are ok. Nothing is drawn yet."""
    cells: list[Cell] = []
    for device, rows in view.channels.items():  # the devices in display order (a text filter leaves some out)
        cells.append(Cell(device, partial(device_header, scene, device, plan.width), header=True))
        quiet = 0
        prefix = device + "/"
        for name, reading in rows:
            if name.startswith("Alarm/"):
                if level(reading.value) == 0:
                    quiet += 1
                else:
                    cells.append(Cell(device, partial(_alarm_cell, name, reading, scene, plan)))
                continue
            cells.append(Cell(device, partial(_value_cell, name, reading, scene, plan, prefix)))
        if quiet:
            summary = [(fit(f" {count(quiet, 'alarm')} ok", plan.width), "green")]
            cells.append(Cell(device, partial(list, summary)))
    return cells


def cell_count(view: View) -> int:
    """How many cells `channel_cells` makes for `view` (without drawing them)."""
    total = 0
    for rows in view.channels.values():
        quiet = sum(1 for n, r in rows if n.startswith("Alarm/") and level(r.value) == 0)
        total += 1 + len(rows) - quiet + (1 if quiet else 0)
    return total


def longest_name(view: View) -> int:
    return max((len(n) for rows in view.channels.values() for n, _ in rows if not n.startswith("Alarm/")),
               default=10)


def choose_columns(width: int, rows: int, cells: int) -> int:
    """The fewest columns (each at most MAX_CELL wide) that show every cell in `rows` lines; as
    many as fit (each at least MIN_CELL wide) when none does."""
    most = max(1, width // MIN_CELL)
    for columns in range(1, most + 1):
        if width // columns <= MAX_CELL and columns * rows >= cells:
            return columns
    return most


def paginate(cells: Sequence[Cell], capacity: int, scene: Scene, width: int) -> list[list[Cell]]:
    """Split `cells` into pages of at most `capacity` cells; a page that starts inside a device
    repeats its header."""
    if len(cells) <= capacity:
        return [list(cells)]
    per_page = max(2, capacity)
    pages: list[list[Cell]] = [[]]
    for cell in cells:
        if len(pages[-1]) >= per_page:
            pages.append([])
            if not cell.header:
                pages[-1].append(Cell(cell.device, partial(device_header, scene, cell.device, width, " (cont.)"),
                                      header=True))
        pages[-1].append(cell)
    return pages


def flow(cells: Sequence[Cell], columns: int, rows: int, cell_w: int, page: int, scene: Scene) -> list[Text]:
    """Lay cells out column by column in at most `rows` lines, drawing only those shown. When
    they do not fit, show page `page` (modulo the page count) and say so on a last line."""
    if rows <= 0 or not cells:
        return []
    pages = paginate(cells, columns * rows, scene, cell_w)
    note: Text | None = None
    if len(pages) > 1:
        pages = paginate(cells, columns * max(1, rows - 1), scene, cell_w)
        shown = pages[page % len(pages)]
        hidden = sum(1 for c in cells if not c.header) - sum(1 for c in shown if not c.header)
        note = Text(f" page {page % len(pages) + 1}/{len(pages)} · {hidden} more lines on the other pages ",
                    style="reverse")
    shown = pages[page % len(pages)]
    drawn = [cell.draw() for cell in shown]
    used_rows = min(rows, math.ceil(len(drawn) / columns))
    lines: list[Text] = []
    for r in range(used_rows):
        parts: list[Part] = []
        for c in range(columns):
            i = c * used_rows + r
            if i < len(drawn):
                parts += drawn[i]
        lines.append(styled(parts))
    return [*lines, note] if note is not None else lines
