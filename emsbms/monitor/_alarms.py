"""The alarm pane: the rule alarms that are not ok (FAULT first, then WARNING, INFO; newest first),
with their severity, state and acknowledgement, and what they are about.

Rows come from the alarm runner (`AlarmRunner.active()`: severity and acknowledgement known), or
from a snapshot's ``alarms/<rule>/<device>/State`` channels alone (`alarm_rows`: state only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rich.text import Text

from emsbms.alarms.engine import Transition
from emsbms.monitor._panes import Cell, Column, table
from emsbms.monitor._text import format_age
from emsbms.types import Reading

SEVERITY_STYLE = {"FAULT": "bold red", "WARNING": "yellow", "INFO": "cyan", "—": "dim"}
STATE_STYLE = {"active": "bold", "pending": "cyan", "clearing": "green", "latched": "magenta",
               "no_data": "dim", "inhibited": "dim"}
SEVERITY_ORDER = {"FAULT": 0, "WARNING": 1, "INFO": 2}

COLUMNS = (
    Column("Alarm", 18, grow=2), Column("Severity", 8), Column("State", 9), Column("Acked", 5),
    Column("Age", 5, "right", drop=2), Column("Text", 20, drop=1, grow=60),
)


@dataclass(frozen=True)
class AlarmRow:
    """One alarm that is not ok; `severity` "—" and `acked` None when unknown (from a snapshot)."""

    id: str
    severity: str
    state: str
    acked: bool | None
    since_us: int
    text: str = ""


def rows_of(active: Iterable[Transition]) -> list[AlarmRow]:
    """The rows of the runner's `active()` instances."""
    return [AlarmRow(t.id, t.severity.name, t.state.value, t.acked, t.timestamp_us, t.text) for t in active]


def alarm_rows(snapshot: Mapping[str, Reading]) -> list[AlarmRow]:
    """The rows the ``alarms/<rule>/<device>/State`` channels of a snapshot tell (state only)."""
    out = []
    for address, r in snapshot.items():
        parts = address.split("/")
        if len(parts) == 4 and parts[0] == "alarms" and parts[3] == "State" and r.value not in (None, "ok"):
            out.append(AlarmRow(f"{parts[1]}/{parts[2]}", "—", str(r.value), None, r.timestamp_us))
    return out


def alarm_pane(rows: Iterable[AlarmRow], now_us: int, width: int, limit: int = 8) -> list[Text]:
    """A title line and up to `limit` rows (the last says how many more); nothing when all are ok."""
    ordered = sorted(rows, key=lambda a: (SEVERITY_ORDER.get(a.severity, 3), -a.since_us, a.id))
    if not ordered:
        return []
    shown = ordered if len(ordered) <= limit else ordered[:limit - 1]
    cells: list[list[Cell]] = []
    for a in shown:
        acked = "—" if a.acked is None else "yes" if a.acked else "no"
        cells.append([a.id, Text(a.severity, style=SEVERITY_STYLE.get(a.severity, "")),
                      Text(a.state, style=STATE_STYLE.get(a.state, "")),
                      Text(acked, style="red" if a.acked is False and a.state in ("active", "latched") else ""),
                      format_age(now_us - a.since_us + 1, 1), a.text])
    if len(shown) < len(ordered):
        cells.append([f"… {len(ordered) - len(shown)} more", "", "", "", "", ""])
    return table(COLUMNS, cells, width)
