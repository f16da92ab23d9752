"""The uplink pane: one line of the uplink's counters (``uplink/State``, ``Queued``, ``Published``,
``Dropped``, ``OldestQueuedAge``, ``RoundTrip``), shown when the snapshot holds them (an edge with
an ``[uplink]``)."""

from __future__ import annotations

from rich.text import Text

from emsbms.monitor._model import View
from emsbms.monitor._panes import Cell, Column, format_count, table
from emsbms.monitor._text import format_age, format_rate
from emsbms.types import Value

STATE_STYLE = {"online": "green", "connecting": "cyan", "offline": "bold red", "stopped": "dim"}

COLUMNS = (
    Column("Uplink", 10), Column("Queued", 6, "right"), Column("Published", 9, "right"),
    Column("Dropped", 7, "right"), Column("Oldest", 6, "right", drop=1), Column("Round trip", 10, "right", drop=2),
)


def _number(value: Value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: Value, width: int) -> str:
    """A counter whole when it fits `width`, else as `format_count` shortens it (12k, 1.2M)."""
    number = _number(value)
    return str(int(number)) if number is not None and len(str(int(number))) <= width else format_count(value)


def _age(seconds: float) -> str:
    """An age in seconds as `format_age` writes it (0.4s, 12s, 5m)."""
    return format_age(round(seconds * 1e6) + 1, 1)


def uplink_row(view: View) -> list[Cell]:
    """The pane's one row: the link's state and the outbox's figures ("—" for a value not yet known)."""
    def value(name: str) -> Value:
        reading = view.uplink.get(name)
        return None if reading is None else reading.value

    state = str(value("State") or "—")
    dropped = value("Dropped")
    oldest, trip = _number(value("OldestQueuedAge")), _number(value("RoundTrip"))
    return [
        Text(state, style=STATE_STYLE.get(state, "")),
        _count(value("Queued"), COLUMNS[1].width),
        _count(value("Published"), COLUMNS[2].width),
        Text(format_count(dropped), style="red" if isinstance(dropped, int) and dropped > 0 else "dim"),
        "—" if oldest is None else _age(oldest),
        "—" if trip is None else f"{format_rate(trip)} ms",
    ]


def uplink_pane(view: View, width: int) -> list[Text]:
    """A title line and the uplink's row; no line at all without uplink channels."""
    if not view.uplink:
        return []
    return table(COLUMNS, [uplink_row(view)], width)
