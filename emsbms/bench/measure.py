"""Measurement helpers of the benchmark: percentiles, CPU time windows, resident memory."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100.0 * len(ordered)) - 1))
    return ordered[rank]


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (from /proc; 0 where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class CpuWindow:
    """Process CPU time and wall time over a window: ``start()``, then ``stop()``."""

    cpu0: float = 0.0
    wall0: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def start(self) -> CpuWindow:
        self.cpu0 = time.process_time()
        self.wall0 = time.perf_counter()
        return self

    def stop(self) -> CpuWindow:
        self.cpu_s = time.process_time() - self.cpu0
        self.wall_s = time.perf_counter() - self.wall0
        return self

    def percent(self, minus_cpu_s: float = 0.0) -> float:
        """CPU % of one core over the window, leaving out `minus_cpu_s` (e.g. a generator thread)."""
        if self.wall_s <= 0:
            return 0.0
        return 100.0 * max(0.0, self.cpu_s - minus_cpu_s) / self.wall_s


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
