"""A bounded per-channel history for the monitor's sparklines, sampled from registry snapshots."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from enum import Enum

from emsbms.types import Quality, Reading

WINDOW_S = 60.0
"""How much history a sparkline shows."""


HOLD_US = 1_000_000
"""An unchanged value is sampled again after this long, so slow channels draw a continuous line."""


class History:
    """The numeric values of every channel over the last `window_s`, sampled from snapshots.

    `sample(snapshot, now_us)` is called by the monitor on its own thread (never by the
    registry), once per redraw. It keeps a point (now, value) for every channel whose value is
    ok and changed, or unchanged for `HOLD_US`: so a slow channel draws a line while it is
    fresh, and a stale or invalid spell leaves a gap. At most `max_points` per channel.
    """

    def __init__(self, window_s: float = WINDOW_S, max_points: int = 600) -> None:
        self.window_us = int(window_s * 1e6)
        self.max_points = max_points
        self._series: dict[str, deque[tuple[int, float]]] = {}

    def sample(self, snapshot: Mapping[str, Reading], now_us: int) -> None:
        """Add a point for the readings of `snapshot` that are ok and numeric (booleans count
        as 0/1); forget points older than the window."""
        horizon = now_us - self.window_us
        for address, reading in snapshot.items():
            value = reading.value
            if isinstance(value, Enum) or not isinstance(value, int | float) or reading.quality is not Quality.OK:
                continue
            series = self._series.get(address)
            if series is None:
                series = self._series[address] = deque(maxlen=self.max_points)
            elif series[-1][1] == value and now_us - series[-1][0] < HOLD_US:
                continue
            series.append((now_us, float(value)))
            while series[0][0] < horizon:
                series.popleft()

    def series(self, address: str) -> Sequence[tuple[int, float]]:
        """The points of `address` ((timestamp µs, value), oldest first); empty if none."""
        return self._series.get(address, ())

    def __len__(self) -> int:
        return len(self._series)
