"""Text helpers of the monitor: exact-width cells, numbers, values, ages, short names, sparklines."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from enum import Enum

from rich.text import Span, Text

from emsbms.types import Value

SPARKS = "▁▂▃▄▅▆▇█"
"""The eight sparkline levels, lowest first."""

FLAT = "─"
"""A sparkline bucket of a channel that did not change over the window."""

ABBREVIATIONS = (
    ("Temperature", "Temp"), ("Discharge", "Dis"), ("Current", "Curr"), ("Voltage", "Volt"),
    ("Available", "Avail"), ("Charge", "Chg"), ("Contactor", "Cont"), ("Capacity", "Cap"),
    ("Balancing", "Bal"), ("Requested", "Req"), ("Operational", "Op"), ("Connection", "Conn"),
    ("Energy", "Enrg"), ("Power", "Pwr"), ("Status", "Stat"), ("Warning", "Warn"),
    ("Malfunction", "Mal"), ("Maximum", "Max"), ("Minimum", "Min"), ("Number", "Num"),
    ("Diagnostic", "Diag"), ("Relay", "Rly"), ("Protect", "Prot"),
)
"""Word shortenings tried in order, until a channel name fits its column."""


def fit(text: str, width: int, align: str = "left") -> str:
    """`text` cut (with an ellipsis) or padded to exactly `width` characters."""
    if width <= 0:
        return ""
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if align == "right" else text.ljust(width)


def styled(parts: Iterable[tuple[str, str]]) -> Text:
    """One Text from (text, style) parts: a single allocation, cheaper than appending."""
    plain: list[str] = []
    spans: list[Span] = []
    pos = 0
    for text, style in parts:
        if style:
            spans.append(Span(pos, pos + len(text), style))
        plain.append(text)
        pos += len(text)
    return Text("".join(plain), spans=spans)


def fit_text(text: Text, width: int, align: str = "left") -> Text:
    """A styled `text` cut (with an ellipsis) or padded to exactly `width` cells (`text` itself
    when it already is)."""
    if width <= 0:
        return Text()
    if text.cell_len == width:
        return text
    out = text.copy()
    if out.cell_len > width:
        out.truncate(width - 1)
        out.append("…")
    pad = width - out.cell_len
    if pad > 0:
        if align == "right":
            out = Text(" " * pad) + out
        else:
            out.append(" " * pad)
    return out


@functools.lru_cache(maxsize=4096)
def abbreviate(name: str, width: int) -> str:
    """A channel name shortened word by word until it fits `width` (then cut with an ellipsis).

    ``abbreviate("DischargeMaxCurrent", 12) == "DisMaxCurr"``.
    """
    for long, short in ABBREVIATIONS:
        if len(name) <= width:
            break
        name = name.replace(long, short)
    return fit(name, width) if len(name) > width else name


@functools.lru_cache(maxsize=1024)
def shorten(name: str) -> str:
    """A name with every word of `ABBREVIATIONS` shortened (``OverTemperature`` -> ``OverTemp``)."""
    for long, short in ABBREVIATIONS:
        name = name.replace(long, short)
    return name


def format_number(value: float) -> str:
    """A float with at most 3 decimals and no trailing zeros (77.0 -> 77, 3.3125 -> 3.312)."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 10_000:
        return f"{value:.0f}"
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def format_value(value: Value, unit: str = "") -> str:
    """A channel value with its unit, as the monitor shows it."""
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = format_number(value)
    else:
        text = str(value)
    return f"{text} {unit}" if unit else text


def format_rate(value: float) -> str:
    """A rate: one decimal below 100 (42.6), none above (253)."""
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def format_age(now_us: int, timestamp_us: int) -> str:
    """Time since `timestamp_us`: 0.4s, 12s, 5m, 3h."""
    if timestamp_us <= 0:
        return "—"
    seconds = max(0.0, (now_us - timestamp_us) / 1e6)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def count(n: int, noun: str) -> str:
    """``count(1, "bus") == "1 bus"``, ``count(2, "bus") == "2 buses"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"


def sparkline(points: Sequence[tuple[int, float]], now_us: int, window_us: int, width: int,
              scale: tuple[float, float] | None = None) -> str:
    """The last `window_us` of `points` ((timestamp µs, value), oldest first) in `width` characters.

    Each character covers window/width of time and shows the mean of the points in it, scaled
    between the lowest and highest mean of the window (or the fixed `scale`, e.g. (0, 100) for
    a percentage); a bucket without points is a space, and a window whose values do not change
    is a flat line (``─``).
    """
    if width <= 0:
        return ""
    start = now_us - window_us
    sums = [0.0] * width
    counts = [0] * width
    for ts, value in points:
        if ts < start or ts > now_us or not math.isfinite(value):
            continue
        i = min(width - 1, (ts - start) * width // window_us)
        sums[i] += value
        counts[i] += 1
    means = [s / c if c else None for s, c in zip(sums, counts, strict=True)]
    present = [m for m in means if m is not None]
    if not present:
        return " " * width
    lo, hi = scale if scale is not None else (min(present), max(present))
    if hi - lo <= 1e-9 * max(1.0, abs(hi), abs(lo)):
        return "".join(FLAT if m is not None else " " for m in means)
    top = len(SPARKS) - 1
    return "".join(" " if m is None else SPARKS[max(0, min(top, round((m - lo) / (hi - lo) * top)))]
                   for m in means)
