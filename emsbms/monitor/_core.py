"""The core pane: one line of the core cycle's figures (``core/CycleTime``, ``Overruns``, ``Writes/*``,
``Rejected/*``, ``Overrides``) and a line per active manual override (from ``core/OverrideList``: address,
value, time left, who wrote it), shown when the snapshot holds ``core/`` channels (an edge running the core).
The virtual devices the controllers publish (``ess0/*``) are devices of the other panes."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from rich.text import Text

from emsbms.monitor._panes import Cell, Column, format_count, table
from emsbms.monitor._text import fit, format_number
from emsbms.types import Reading, Value

PREFIX = "core/"
SOURCES = ("safety", "manual", "auto")

COLUMNS = (
    Column("Override", 24, grow=30), Column("Value", 8, "right"), Column("Left", 6, "right"),
    Column("Source", 6, drop=1, grow=20),
)


@dataclass(frozen=True)
class OverrideRow:
    """One active override as the edge lists it."""

    address: str
    value: float
    expires_us: int
    source: str


def _number(value: Value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def override_rows(snapshot: Mapping[str, Reading]) -> list[OverrideRow]:
    """The overrides of ``core/OverrideList`` (JSON text), soonest to expire first; none when absent or unreadable."""
    reading = snapshot.get(PREFIX + "OverrideList")
    try:
        items = json.loads(str(reading.value)) if reading is not None else []
    except ValueError:
        return []
    rows = [OverrideRow(str(o["address"]), float(o["value"]), int(o["expires_us"]), str(o.get("source", "")))
            for o in items if isinstance(items, list) and isinstance(o, dict)
            and {"address", "value", "expires_us"} <= o.keys()]
    return sorted(rows, key=lambda r: (r.expires_us, r.address))


def core_summary(snapshot: Mapping[str, Reading]) -> str:
    """``cycle 0.4 ms · overruns 0 · writes 12 · rejected 1``: the cycle's figures, "—" for one not known yet."""
    def value(name: str) -> Value:
        reading = snapshot.get(PREFIX + name)
        return None if reading is None else reading.value

    cycle = _number(value("CycleTime"))
    writes = [_number(value(f"Writes/{s}")) for s in SOURCES]
    rejected = [_number(value(f"Rejected/{s}")) for s in SOURCES]
    parts = ["cycle " + ("—" if cycle is None else f"{format_number(cycle)} ms"),
             f"overruns {format_count(value('Overruns'))}",
             f"writes {format_count(sum(w for w in writes if w is not None))}",
             f"rejected {format_count(sum(r for r in rejected if r is not None))}"]
    return " · ".join(parts)


def _left(now_us: int, expires_us: int) -> str:
    seconds = max(0.0, (expires_us - now_us) / 1e6)
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def core_pane(snapshot: Mapping[str, Reading], now_us: int, width: int, limit: int = 4) -> list[Text]:
    """A title line (the cycle's figures at its right) and up to `limit` overrides (the last says how many
    more), or one line saying there is none; nothing at all without ``core/`` channels."""
    if not any(a.startswith(PREFIX) for a in snapshot):
        return []
    rows = override_rows(snapshot)
    shown = rows if len(rows) <= limit else rows[:limit - 1]
    cells: list[list[Cell]] = [[r.address, format_number(r.value), _left(now_us, r.expires_us), r.source]
                               for r in shown]
    if len(shown) < len(rows):
        cells.append([f"… {len(rows) - len(shown)} more", "", "", ""])
    if not rows:
        cells.append([Text("no manual override", style="dim"), "", "", ""])
    lines = table(COLUMNS, cells, width)  # its column titles give way to the pane's title and the figures
    title = f"Overrides ({len(rows)})"
    room = width - len(title) - 1
    text = fit(title, width) if room < 12 else title + " " + fit(core_summary(snapshot), room, "right")
    return [Text(text, style="bold"), *lines[1:]]
