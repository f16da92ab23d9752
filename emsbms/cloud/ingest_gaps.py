"""Sequence gaps as data-loss events: pure, time as an argument.

Each (org, site, stream, session) has a *settled* mark: every seq up to it was received or reported
lost. Ingest reads the received seqs above it as runs of consecutive seqs and calls `settle`, which
reports the hole before a run as lost once both
- the hole has been visible for `grace_us`: a seq above it arrived at least that long ago, and
- the stream's backlog is not draining: no `historical` message above the mark arrived within `grace_us`
  (after an outage the edge sends its backlog oldest first, interleaved with live data, so a hole
  below live data is normal while the backlog drains).

A hole is reported once: the mark then moves past it. A message of a reported hole that still
arrives later is stored, and the data-loss event stays (it records that the data was missing for
longer than the grace). A loss at the very end of a session cannot be seen: no later seq shows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Run:
    """Consecutive received seqs `lo`..`hi`; `first_received_us`: the earliest arrival among them."""

    lo: int
    hi: int
    first_received_us: int


@dataclass(frozen=True)
class Gap:
    """Seqs `from_seq`..`to_seq` (inclusive) never arrived."""

    from_seq: int
    to_seq: int


def runs_of(received: Iterable[tuple[int, int]]) -> list[Run]:
    """(seq, received_us) pairs into runs of consecutive seqs, ascending (a repeated seq counts once)."""
    runs: list[Run] = []
    for seq, at in sorted(received):
        if runs and seq <= runs[-1].hi + 1:
            last = runs[-1]
            runs[-1] = Run(last.lo, max(last.hi, seq), min(last.first_received_us, at))
        else:
            runs.append(Run(seq, seq, at))
    return runs


def settle(settled: int, runs: Sequence[Run], last_historical_us: int | None, now_us: int,
           grace_us: int) -> tuple[list[Gap], int]:
    """The holes to report now and the new settled mark (runs: above `settled`, ascending; -1: none yet)."""
    draining = last_historical_us is not None and now_us - last_historical_us < grace_us
    # a hole is visible since the earliest arrival of any seq above it
    visible = [0] * len(runs)
    earliest: int | None = None
    for i in range(len(runs) - 1, -1, -1):
        at = runs[i].first_received_us
        earliest = at if earliest is None else min(earliest, at)
        visible[i] = earliest
    gaps: list[Gap] = []
    for run, since in zip(runs, visible, strict=True):
        if run.hi <= settled:
            continue
        if run.lo > settled + 1:
            if draining or now_us - since < grace_us:
                break
            gaps.append(Gap(settled + 1, run.lo - 1))
        settled = run.hi
    return gaps, settled
