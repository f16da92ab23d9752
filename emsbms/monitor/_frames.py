"""The monitor's frames page: per bus and ID what was received (count, measured period, DLC, the
last bytes with the changed ones highlighted, as text too, the age of the frame and of the last
change) and which device claims it, unknown IDs first."""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

from emsbms.monitor._model import Filters, FrameRow, Scene
from emsbms.monitor._panes import Column, table
from emsbms.monitor._text import fit, format_age

CHANGE_HOLD_US = 2_000_000
"""A byte that changed in the last change of its frame is highlighted for this long."""

CHANGED_STYLE = "bold reverse yellow"
UNKNOWN = "unknown"


def id_text(row: FrameRow) -> str:
    """``0x355`` for an 11-bit ID, ``0x18FF50E5`` for a 29-bit one."""
    stat = row.stat
    return f"0x{stat.arbitration_id:08X}" if stat.extended else f"0x{stat.arbitration_id:03X}"


def period_text(period_s: float) -> str:
    """A measured period: ``2.5 ms``, ``100 ms``, ``1.00 s``; ``—`` before a second frame."""
    if period_s <= 0 or not math.isfinite(period_s):
        return "—"
    ms = period_s * 1000
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{period_s:.2f} s"


def count_text(n: int) -> str:
    """A frame count in at most 6 characters: 123456, 12.3M, 4.2G."""
    if n < 1_000_000:
        return str(n)
    if n < 1_000_000_000:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e9:.1f}G"


def data_text(row: FrameRow, now_us: int) -> Text:
    """The last bytes in hex; those that differ from the data before the last change are
    highlighted while that change is recent (`CHANGE_HOLD_US`)."""
    stat = row.stat
    recent = stat.changed_s > 0 and now_us - stat.changed_s * 1e6 < CHANGE_HOLD_US
    out = Text()
    for i, byte in enumerate(stat.data):
        changed = recent and (i >= len(stat.previous) or stat.previous[i] != byte)
        out.append((" " if i else "") + f"{byte:02X}")
        if changed:
            out.stylize(CHANGED_STYLE, out.cell_len - 2, out.cell_len)
    return out if stat.data else Text("(none)", style="dim")


def matching(scene: Scene, filters: Filters) -> list[FrameRow]:
    """The rows of the buses shown that match the filter text (bus, ID or device), unknown IDs
    first, then by bus and ID."""
    rows = [r for r in scene.frames if filters.bus(r.bus) and filters.matches(r.bus, id_text(r), r.device or UNKNOWN)]
    return sorted(rows, key=lambda r: (r.device != "", r.bus, r.stat.key))


def frame_columns(rows: Sequence[FrameRow]) -> list[Column]:
    bus_w = max(3, min(12, max((len(r.bus) for r in rows), default=3)))
    device_w = max(7, min(24, max((len(r.device) for r in rows), default=7)))
    id_w = 10 if any(r.stat.extended for r in rows) else 5
    longest = max((len(r.stat.data) for r in rows), default=8)
    return [Column("Bus", bus_w), Column("ID", id_w), Column("Device", device_w, drop=2),
            Column("Count", 6, "right"), Column("Period", 7, "right"), Column("DLC", 3, "right"),
            Column("Seen", 4, "right", drop=1), Column("Data", max(23, 3 * longest - 1)),
            Column("ASCII", max(8, longest), drop=3), Column("Changed", 7, "right", drop=4)]


def _row(row: FrameRow, now_us: int) -> list[Text | str]:
    stat = row.stat
    device = Text(row.device, style="bold") if row.device else Text(UNKNOWN, style="bold yellow")
    seen = format_age(now_us, int(stat.last_s * 1e6))
    return [row.bus, Text(id_text(row), style="bold"), device, count_text(stat.frames), period_text(stat.period_s),
            str(stat.dlc), Text(seen, style="dim"), data_text(row, now_us), Text(ascii_text(stat.data), style="dim"),
            Text(format_age(now_us, int(stat.changed_s * 1e6)) if stat.changed_s else "never", style="dim")]


def ascii_text(data: bytes) -> str:
    """The bytes as characters, ``.`` for those that are not printable ASCII (``PYTES...``)."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in data)


def frames_page(scene: Scene, filters: Filters, width: int, rows: int) -> list[Text]:
    """The frames table in at most `rows` lines of `width` cells: a title line and one line per
    ID; when they do not fit, page `filters.page` (modulo the page count) and a last line saying so."""
    if rows <= 0:
        return []
    shown = matching(scene, filters)
    columns = frame_columns(shown)
    if not shown:
        what = f"no frame ID matches /{filters.text}" if filters.text else "no frames received yet"
        return [*table(columns, [], width), Text(fit(what, width), style="dim")][:rows]
    per_page = rows - 1
    note: Text | None = None
    if len(shown) > per_page:
        per_page = max(1, rows - 2)
        pages = math.ceil(len(shown) / per_page)
        page = filters.page % pages
        total = len(shown)
        shown = shown[page * per_page : (page + 1) * per_page]
        note = Text(fit(f" page {page + 1}/{pages} · {total - len(shown)} more IDs on the other pages", width),
                    style="reverse")
    lines = table(columns, [_row(r, scene.now_us) for r in shown], width)
    return [*lines, note] if note is not None else lines
