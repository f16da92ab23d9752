"""The monitor's event details page: every event with its whole text, long ones wrapped onto
more lines, newest last; scrolled back a page at a time."""

from __future__ import annotations

import textwrap
import time

from rich.text import Text

from emsbms.edge.events import Event
from emsbms.monitor._model import SEVERITY_STYLE, Scene, View
from emsbms.monitor._text import fit, fit_text

MIN_TEXT = 20
"""Narrowest column the text is wrapped to (on a very narrow terminal the prefix goes first)."""


def event_lines(event: Event, source_w: int, width: int) -> list[Text]:
    """One event as lines of exactly `width` cells: time, source, then its text wrapped under
    itself (`×3` for an event that repeated)."""
    clock = time.strftime("%H:%M:%S", time.gmtime(event.timestamp_us / 1e6))
    prefix_w = 9 + source_w + 1
    if width - prefix_w < MIN_TEXT:
        prefix_w = 0
    text = event.text + (f" ×{event.repeat}" if event.repeat > 1 else "")
    wrapped = textwrap.wrap(text, max(1, width - prefix_w), break_on_hyphens=False) or [""]
    style = SEVERITY_STYLE.get(event.severity, "")
    lines: list[Text] = []
    if prefix_w == 0:
        lines.append(fit_text(Text(f"{clock} {event.source}", style="bold"), width))
    for n, part in enumerate(wrapped):
        line = Text()
        if prefix_w:
            if n == 0:
                line.append(clock + " ", style="dim")
                line.append(fit(event.source, source_w) + " ", style="bold")
            else:
                line.append(" " * prefix_w)
        line.append(part, style=style)
        lines.append(fit_text(line, width))
    return lines


def details_page(scene: Scene, view: View, width: int, rows: int, back: int) -> list[Text]:
    """A title line and the events that fit in `rows` - 1 lines, whole: the newest when `back`
    is 0, else `back` pages older (at most the oldest page)."""
    if rows <= 0:
        return []
    total = scene.events_total or len(view.events)
    source_w = max(6, min(16, max((len(e.source) for e in view.events), default=6)))
    blocks = [event_lines(e, source_w, width) for e in view.events]
    room = max(1, rows - 1)
    pages: list[list[list[Text]]] = []  # newest page first, each oldest first
    page: list[list[Text]] = []
    used = 0
    for block in reversed(blocks):
        if page and used + len(block) > room:
            pages.append(page)
            page, used = [], 0
        page.insert(0, block[:room])
        used += min(len(block), room)
    if page:
        pages.append(page)
    index = min(back, max(0, len(pages) - 1))
    where = f" · page {index + 1} of {len(pages)} from the newest (←↑ older)" if len(pages) > 1 else ""
    title = Text(fit(f"Events ({total}, newest last), whole text{where} · e or Esc: back", width),
                 style="bold")
    if not pages:
        return [title, Text(fit("none yet", width), style="dim")]
    return [title, *(line for block in pages[index] for line in block)]
