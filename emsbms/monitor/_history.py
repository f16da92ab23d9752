"""A bounded per-channel history for the monitor's sparklines, sampled from registry snapshots."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from enum import Enum

from emsbms.types import Quality, Reading

WINDOW_S = 60.0
"""How much history a sparkline shows."""

BIN_US = 1_000_000
"""The history's resolution: the values seen within one second are kept as their mean."""


class History:
    """The numeric values of every channel over the last `window_s`, in one-second bins.

    `sample(snapshot, now_us)` is called by the monitor on its own thread (never by the
    registry), once per redraw: every channel whose value is ok and a number (booleans count
    as 0/1) adds its value to the bin of `now_us`. A stale or invalid spell adds nothing, so it
    is a gap. Each channel keeps at most window/bin + 1 bins (61), whatever the redraw rate, and
    a sparkline costs as little.
    """

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_us = int(window_s * 1e6)
        self._bins: dict[str, deque[list[float]]] = {}  # address -> [bin, sum, count], oldest first
        self._size = self.window_us // BIN_US + 1

    def sample(self, snapshot: Mapping[str, Reading], now_us: int) -> None:
        """Add the ok numeric readings of `snapshot` to the bin of `now_us`."""
        current = now_us // BIN_US
        for address, reading in snapshot.items():
            value = reading.value
            if isinstance(value, Enum) or not isinstance(value, int | float) or reading.quality is not Quality.OK:
                continue
            bins = self._bins.get(address)
            if bins is None:
                bins = self._bins[address] = deque(maxlen=self._size)
            if bins and bins[-1][0] == current:
                bins[-1][1] += value
                bins[-1][2] += 1
            else:
                bins.append([current, float(value), 1])

    def series(self, address: str) -> list[tuple[int, float]]:
        """The points of `address`: (start of a bin in µs, mean of the bin), oldest first."""
        bins = self._bins.get(address)
        if not bins:
            return []
        return [(int(b) * BIN_US, s / n) for b, s, n in bins]

    def __len__(self) -> int:
        return len(self._bins)
