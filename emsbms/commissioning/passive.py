"""Passive discovery: listen to a bus, then score DBC and inline profiles against the traffic heard.

Listening sends nothing. Every frame is tallied by dispatch key (ID, DLCs, count, first and last
time, last payload). A profile is then scored against the tally, for every ``id_offset`` the
traffic suggests (the same ID pattern shifted by a CAN bridge). The messages the device sends
are every message of the profile except those the edge sends (transmitted frames and command
messages); those marked ``optional`` in the profile's ``messages`` are not required.

- coverage: the share of the required messages heard at ID + offset;
- DLC: the share of the messages heard (required or optional) only with a length the profile
  expects: from ``min_dlc`` (default: the declared length) to ``max_dlc`` (default: 64, excess
  bytes are ignored as the adapter ignores them);
- rate: the share of those heard at their expected period (0.6x .. 1.6x the profile's
  ``period_ms`` or the DBC cycle time), or, when heard once, not expected more than twice;

``messages = coverage * (0.5 + 0.25 dlc + 0.25 rate) * min(1, heard / 3)``; the optional
messages heard add ``(1 - messages) * 0.2 * optional heard / optional``, and never lower it when
absent; times 0.9 for a non-zero offset. The profile's manufacturer identity, when it states one
(`emsbms.commissioning.evidence`), then gives the confidence: ``messages + (1 - messages) * 0.5``
when the device's string matches, ``messages * 0.7`` when it names another maker.

A match that explains mostly the same frames as a better one is kept as its alternative
(reported from 0.6 on, and only for another profile) and is never commissioned automatically.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import can

from emsbms.commissioning.evidence import NO_CLUE, Clue, manufacturer_clue, manufacturer_spec
from emsbms.errors import BusError
from emsbms.profile.models import Profile
from emsbms.protocols.base import EXTENDED, frame_key

log = logging.getLogger(__name__)

HIGH_CONFIDENCE = 0.8
"""Candidates at or above this are taken by ``scan --commission --yes``."""

MIN_CONFIDENCE = 0.3
"""Matches below this are not reported."""

ALTERNATIVE_CONFIDENCE = 0.6
"""An alternative (a match overlapping a better one) is reported only from this confidence on."""

OPTIONAL_WEIGHT = 0.2
"""Every optional message heard closes this share (divided by their number) of the gap to 1."""

MAX_DLC = 64
"""The longest frame (CAN FD); a profile's ``max_dlc`` narrows it."""

Progress = Callable[[float, float], None]
"""Called as progress(seconds listened, seconds to listen)."""


@dataclass
class Heard:
    """What was heard of one dispatch key."""

    count: int = 0
    dlcs: set[int] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0
    data: bytes = b""  # the last payload

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
        h.data = bytes(msg.data)

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
    """A message a device sends: its key, expected lengths and period, and whether every device sends it."""

    key: int
    name: str
    length: int  # as declared (DBC or inline map)
    min_dlc: int
    max_dlc: int
    period_s: float | None
    optional: bool = False


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
        max_dlc = getattr(settings, "max_dlc", None) if settings else None
        out.append(Expected(frame_key(msg.frame_id, msg.is_extended_frame), msg.name, msg.length, min_dlc,
                            MAX_DLC if max_dlc is None else int(max_dlc), period_ms / 1000 if period_ms else None,
                            bool(settings and settings.optional)))
    return out


@dataclass(frozen=True)
class Match:
    """A profile that fits some of the traffic, at an ID offset."""

    profile: str
    version: str
    id_offset: int
    confidence: float
    matched: tuple[int, ...]  # the keys heard that the profile explains
    expected: int  # required messages
    coverage: float  # share of the required messages heard
    dlc_ok: float
    rate_ok: float
    alternative_to: str | None = None
    required_heard: int = 0
    optional: int = 0
    optional_heard: int = 0
    messages: float = 0.0  # the message score (with the offset factor), before the identity evidence
    identity: Clue = NO_CLUE

    def evidence(self) -> str:
        """Why it scored what it did: the message score's terms, then the identity evidence."""
        ids = ", ".join(f"0x{k & ~EXTENDED:X}" for k in self.matched[:6]) + (", ..." if len(self.matched) > 6 else "")
        text = (f"{self.required_heard}/{self.expected} required messages heard ({ids})"
                + (f", {self.optional_heard}/{self.optional} optional" if self.optional else "")
                + f"; lengths {self.dlc_ok:.0%} ok, rates {self.rate_ok:.0%} ok"
                + ("; offset x0.9" if self.id_offset else "") + f"; messages {self.messages:.2f}")
        clue = self.identity.describe(self.messages)
        return text + (f"; {clue}" if clue else "")

    def as_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "version": self.version, "id_offset": self.id_offset,
                "confidence": round(self.confidence, 3), "matched_ids": [k & ~EXTENDED for k in self.matched],
                "expected": self.expected, "required_heard": self.required_heard, "optional": self.optional,
                "optional_heard": self.optional_heard, "coverage": round(self.coverage, 3),
                "dlc_ok": round(self.dlc_ok, 3), "rate_ok": round(self.rate_ok, 3),
                "messages": round(self.messages, 3), "identity": self.identity.evidence.value,
                "identity_text": self.identity.text, "alternative_to": self.alternative_to}


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
    required = [e for e in expected if not e.optional] or expected  # all optional: each one counts
    optional = [e for e in expected if e not in required]
    hits = [(e, traffic.heard.get(e.key + offset)) for e in expected]
    found = [(e, h) for e, h in hits if h is not None]
    if not found:
        return None
    required_heard = sum(1 for e, _ in found if e in required)
    optional_heard = len(found) - required_heard
    coverage = required_heard / len(required)
    dlc_ok = sum(1 for e, h in found if all(e.min_dlc <= d <= e.max_dlc for d in h.dlcs)) / len(found)
    rate_ok = sum(1 for e, h in found if _rate_ok(e, h, traffic.seconds)) / len(found)
    messages = coverage * (0.5 + 0.25 * dlc_ok + 0.25 * rate_ok) * min(1.0, len(found) / 3)
    if optional:
        messages += (1.0 - messages) * OPTIONAL_WEIGHT * optional_heard / len(optional)
    if offset:
        messages *= 0.9
    clue = _identity(traffic, profile, offset)
    return Match(profile.name, profile.version, offset, clue.apply(messages),
                 tuple(sorted(e.key + offset for e, _ in found)), len(required), coverage, dlc_ok, rate_ok,
                 required_heard=required_heard, optional=len(optional), optional_heard=optional_heard,
                 messages=messages, identity=clue)


def _identity(traffic: Traffic, profile: Profile, offset: int) -> Clue:
    """The manufacturer evidence of the traffic for `profile` (none if the profile states no identity)."""
    try:
        spec = manufacturer_spec(profile)
    except ValueError as e:  # a faulty stored profile must not stop the scan: say so in the evidence
        log.warning("scan: %s", e)
        return Clue(NO_CLUE.evidence, f"identity not used: {e}")
    if spec is None:
        return NO_CLUE
    msg = profile.db.get_message_by_name(spec.message)
    key = frame_key(msg.frame_id + offset, msg.is_extended_frame)
    heard = traffic.heard.get(key)
    return manufacturer_clue(spec, msg.frame_id + offset, None if heard is None else heard.data)


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
    return replace(m, alternative_to=label)
