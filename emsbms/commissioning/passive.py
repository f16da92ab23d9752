"""Passive discovery: listen to a bus, then score DBC and inline profiles against the traffic heard.

Listening sends nothing. Every frame is tallied by dispatch key (ID, DLCs, count, first and last
time). A profile is then scored against the tally, for every ``id_offset`` the traffic suggests
(the same ID pattern shifted by a CAN bridge):

- coverage: the share of the messages the device sends (every message of the profile except
  those the edge sends: transmitted frames and command messages) heard at ID + offset;
- DLC: the share of those heard only with a length the profile accepts (``min_dlc`` .. length);
- rate: the share of those heard at their expected period (0.6x .. 1.6x the profile's
  ``period_ms`` or the DBC cycle time), or, when heard once, not expected more than twice;

``confidence = coverage * (0.5 + 0.25 dlc + 0.25 rate) * min(1, matched / 3)``, times 0.9 for a
non-zero offset. A match that explains mostly the same frames as a better one is kept as its
alternative (reported from 0.6 on, and only for another profile) and is never commissioned
automatically.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import can

from emsbms.errors import BusError
from emsbms.profile.models import Profile
from emsbms.protocols.base import EXTENDED, frame_key

HIGH_CONFIDENCE = 0.8
"""Candidates at or above this are taken by ``scan --commission --yes``."""

MIN_CONFIDENCE = 0.3
"""Matches below this are not reported."""

ALTERNATIVE_CONFIDENCE = 0.6
"""An alternative (a match overlapping a better one) is reported only from this confidence on."""

Progress = Callable[[float, float], None]
"""Called as progress(seconds listened, seconds to listen)."""


@dataclass
class Heard:
    """What was heard of one dispatch key."""

    count: int = 0
    dlcs: set[int] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0

    @property
    def period_s(self) -> float | None:
        """The mean interval between frames (None when heard once)."""
        return (self.last - self.first) / (self.count - 1) if self.count > 1 else None


@dataclass
class Traffic:
    """The tally of a listening session."""

    seconds: float
    heard: dict[int, Heard] = field(default_factory=dict)
    frames: int = 0

    def add(self, msg: can.Message) -> None:
        if msg.is_error_frame or msg.is_remote_frame:
            return
        self.frames += 1
        key = frame_key(msg.arbitration_id, msg.is_extended_id)
        h = self.heard.get(key)
        if h is None:
            h = self.heard[key] = Heard(first=msg.timestamp)
        h.count += 1
        h.dlcs.add(msg.dlc)
        h.last = msg.timestamp

    def heartbeats(self) -> dict[int, int]:
        """CANopen node IDs heard sending a heartbeat (0x700 + node, 1 byte), with their state byte count."""
        return {k - 0x700: h.count for k, h in self.heard.items() if 0x701 <= k <= 0x77F and h.dlcs == {1}}


def listen(bus: can.BusABC, seconds: float, progress: Progress | None = None) -> Traffic:
    """Tally every frame received on `bus` for `seconds`. Sends nothing."""
    traffic = Traffic(seconds)
    start = time.monotonic()
    deadline = start + seconds
    next_report = start
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = bus.recv(min(left, 0.1))
        except Exception as e:
            raise BusError(f"passive scan: receiving failed: {e}") from e
        if msg is not None:
            traffic.add(msg)
        now = time.monotonic()
        if progress is not None and now >= next_report:
            progress(min(now - start, seconds), seconds)
            next_report = now + 0.1
    if progress is not None:
        progress(seconds, seconds)
    return traffic


@dataclass(frozen=True)
class Expected:
    """A message a device sends: its key, accepted lengths and period."""

    key: int
    name: str
    min_dlc: int
    max_dlc: int
    period_s: float | None


def expected_messages(profile: Profile) -> list[Expected]:
    """The messages the device of a DBC or inline profile sends (not the ones the edge sends)."""
    m = profile.model
    edge_sends = {t.message for t in m.transmit} | {c.message for c in m.commands.values() if c.message}
    heard_by_edge = {c.message for c in m.channels.values() if c.message}
    heard_by_edge |= {s.message for a in m.alarms.values() for s in a.sources}
    heard_by_edge |= {c.ack.message for c in m.commands.values() if c.ack.message}
    out = []
    for msg in profile.db.messages:
        if msg.name in edge_sends and msg.name not in heard_by_edge:
            continue
        settings = m.messages.get(msg.name)
        period_ms = settings.period_ms if settings and settings.period_ms else msg.cycle_time or None
        min_dlc = settings.min_dlc if settings and settings.min_dlc is not None else msg.length
        out.append(Expected(frame_key(msg.frame_id, msg.is_extended_frame), msg.name, min_dlc, msg.length,
                            period_ms / 1000 if period_ms else None))
    return out


@dataclass(frozen=True)
class Match:
    """A profile that fits some of the traffic, at an ID offset."""

    profile: str
    version: str
    id_offset: int
    confidence: float
    matched: tuple[int, ...]  # the keys heard that the profile explains
    expected: int
    coverage: float
    dlc_ok: float
    rate_ok: float
    alternative_to: str | None = None

    def evidence(self) -> str:
        ids = ", ".join(f"0x{k & ~EXTENDED:X}" for k in self.matched[:6]) + (", ..." if len(self.matched) > 6 else "")
        return (f"{len(self.matched)}/{self.expected} messages heard ({ids}); lengths {self.dlc_ok:.0%} ok,"
                f" rates {self.rate_ok:.0%} ok")

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "version": self.version, "id_offset": self.id_offset,
                "confidence": round(self.confidence, 3), "matched_ids": [k & ~EXTENDED for k in self.matched],
                "expected": self.expected, "coverage": round(self.coverage, 3), "dlc_ok": round(self.dlc_ok, 3),
                "rate_ok": round(self.rate_ok, 3), "alternative_to": self.alternative_to}


def _offsets(heard: Iterable[int], expected: Sequence[Expected]) -> list[int]:
    """Offsets that shift enough of the expected IDs onto heard ones (0 always included)."""
    votes: Counter[int] = Counter()
    for k in heard:
        for e in expected:
            if (k & EXTENDED) == (e.key & EXTENDED):
                votes[(k & ~EXTENDED) - (e.key & ~EXTENDED)] += 1
    need = max(2, math.ceil(len(expected) / 2))
    return sorted({0} | {off for off, n in votes.items() if n >= need})


def _rate_ok(e: Expected, h: Heard, seconds: float) -> bool:
    if e.period_s is None:
        return True
    period = h.period_s
    if period is None:
        return seconds / e.period_s <= 2.5  # heard once: fine if it is not expected much more often
    return 0.6 <= period / e.period_s <= 1.6


def score(traffic: Traffic, profile: Profile, offset: int) -> Match | None:
    """How well `profile`, shifted by `offset`, explains the traffic (None if nothing of it was heard)."""
    expected = expected_messages(profile)
    if not expected:
        return None
    hits = [(e, traffic.heard.get(e.key + offset)) for e in expected]
    found = [(e, h) for e, h in hits if h is not None]
    if not found:
        return None
    coverage = len(found) / len(expected)
    dlc_ok = sum(1 for e, h in found if all(e.min_dlc <= d <= e.max_dlc for d in h.dlcs)) / len(found)
    rate_ok = sum(1 for e, h in found if _rate_ok(e, h, traffic.seconds)) / len(found)
    confidence = coverage * (0.5 + 0.25 * dlc_ok + 0.25 * rate_ok) * min(1.0, len(found) / 3)
    if offset:
        confidence *= 0.9
    return Match(profile.name, profile.version, offset, confidence, tuple(sorted(e.key + offset for e, _ in found)),
                 len(expected), coverage, dlc_ok, rate_ok)


def match_traffic(traffic: Traffic, profiles: Iterable[Profile], minimum: float = MIN_CONFIDENCE) -> list[Match]:
    """Every (profile, offset) scoring at least `minimum`, best first; overlapping ones marked alternatives."""
    matches: list[Match] = []
    for profile in profiles:
        if profile.protocol != "dbc" or profile.db is None:
            continue
        expected = expected_messages(profile)
        for offset in _offsets(traffic.heard, expected):
            m = score(traffic, profile, offset)
            if m is not None and m.confidence >= minimum:
                matches.append(m)
    matches.sort(key=lambda m: (-round(m.confidence, 6), m.id_offset != 0, -len(m.matched), m.profile))
    kept: list[Match] = []
    for m in matches:
        better = next((k for k in kept if k.alternative_to is None and _overlap(m, k) >= 0.5), None)
        if better is None:
            kept.append(m)
        elif better.profile != m.profile and m.confidence >= ALTERNATIVE_CONFIDENCE:
            kept.append(_alternative(m, better))  # a shifted shadow of the same profile is not worth a line
    return kept


def _overlap(a: Match, b: Match) -> float:
    return len(set(a.matched) & set(b.matched)) / len(a.matched)


def _alternative(m: Match, better: Match) -> Match:
    label = f"{better.profile}" + (f"@offset {better.id_offset:+#x}" if better.id_offset else "")
    return Match(m.profile, m.version, m.id_offset, m.confidence, m.matched, m.expected, m.coverage, m.dlc_ok,
                 m.rate_ok, alternative_to=label)
