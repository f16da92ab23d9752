"""The live monitor's drawing code: pure functions from a snapshot, its history and events to rich renderables.

`render(snapshot, now_us, width, height, filters, title, history=..., events=..., devices=...)`
lays out a header line, the bus pane (state, load, rx rate, errors, drops), the device pane
(profile, CommState, last seen, active alarms), the event log and a table of every other
channel (value and unit, age, quality by colour, a sparkline of the last minute). Every line is
built to an exact width, so the frame always fits `width` x `height` (80x24 included). Nothing
here reads a clock or touches a bus: the caller passes the snapshot, the history it keeps
(`History.sample`, on its own thread) and the events (`emsbms.edge.events.EventLog`).

Two more pages: the frames page (every ID each bus received, with its count, period, DLC, last
bytes and the device that claims it; `FrameRow`) and the event details page (every event's whole
text, wrapped); `Filters.show` picks the page and `Filters.text` narrows channels and IDs.
"""

from emsbms.monitor._history import History
from emsbms.monitor._layout import render, render_scene
from emsbms.monitor._model import DeviceMeta, Filters, FrameRow, Scene, Show
from emsbms.monitor._text import abbreviate, fit, format_age, format_number, format_value, sparkline

__all__ = [
    "DeviceMeta",
    "Filters",
    "FrameRow",
    "History",
    "Scene",
    "Show",
    "abbreviate",
    "fit",
    "format_age",
    "format_number",
    "format_value",
    "render",
    "render_scene",
    "sparkline",
]
