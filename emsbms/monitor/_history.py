"""A bounded per-channel history for the monitor's sparklines, sampled from registry snapshots."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from enum import Enum

from emsbms.types import Quality, Reading

WINDOW_S = 60.0
"""How much history a sparkline shows."""


class History:
    """The numeric values of every channel over the last `window_s`, one point per new reading.

    `sample(snapshot)` is called by the monitor on its own thread (never by the registry), once
    per redraw: a channel whose reading has not changed since the last call adds nothing, so
    the history holds at most one point per redraw and per channel, and at most `max_points`.
    Only ok readings of numbers and booleans are kept; stale spells leave gaps.
    """

    def __init__(self, window_s: float = WINDOW_S, max_points: int = 600) -> None:
        self.window_us = int(window_s * 1e6)
        self.max_points = max_points
        self._series: dict[str, deque[tuple[int, float]]] = {}

    def sample(self, snapshot: Mapping[str, Reading], now_us: int) -> None:
        """Add the readings of `snapshot` that are new since the last call; forget points older
        than the window."""
        horizon = now_us - self.window_us
        for address, reading in snapshot.items():
            value = reading.value
            if isinstance(value, Enum) or not isinstance(value, int | float) or reading.quality is not Quality.OK:
                continue
            series = self._series.get(address)
            if series is None:
                series = self._series[address] = deque(maxlen=self.max_points)
            if series and series[-1][0] == reading.timestamp_us:
                continue
            series.append((reading.timestamp_us, float(value)))
            while series and series[0][0] < horizon:
                series.popleft()

    def series(self, address: str) -> Sequence[tuple[int, float]]:
        """The points of `address` ((timestamp µs, value), oldest first); empty if none."""
        return self._series.get(address, ())

    def __len__(self) -> int:
        return len(self._series)
