"""Uplink topics and JSON payloads (docs/uplink.md), after Sparkplug B: pure functions, time is an
argument, no I/O.

    topics = Topics("acme", "plant-1")              # topics.telemetry == "ems/acme/plant-1/telemetry"
    state_payload(True, bd_seq, now_us)             # retained on topics.state; the will says offline
    birth_payload(channels, devices, version, bd_seq, session, now_us)
    batcher = TelemetryBatcher(topics, session, health_prefixes={"can0", "uplink"})
    registry.subscribe("*", batcher.update)         # (address, Reading), any thread
    for m in batcher.flush(now_us): outbox.put(m.topic, m.payload, m.kind, now_us)
    events_payload(events, session, seq, now_us)

**Sequence numbers.** Every telemetry, health and events payload carries ``session`` (the µs time
the edge's run started: one per process run, so unique) and ``seq``, a 64-bit counter per stream
(telemetry, health, events) counting from 0 in each session (`Counter`; it wraps to 0 after
2**64 - 1, which no edge reaches). Messages are numbered when they are made, before the outbox, so
the cloud sees every gap exactly, even with live data and backlog interleaved: the set of
``(session, seq)`` of a stream is 0..n with no hole when nothing was lost. State and birth carry
Sparkplug's ``bdSeq`` (0..255, one per connection), matching a birth to its death.

**Historical.** ``historical`` is the first key of every sample-carrying payload; the outbox sets
it (`as_historical`) on backlog rows when it hands them out.

**No NaN.** Payloads are strict JSON: a NaN or infinite value goes out as ``null`` (`json_bytes`),
as the CLI's ``--json`` does. Enum values go out as their value.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NamedTuple

from emsbms.errors import ConfigError
from emsbms.types import ChannelInfo, Reading, Value, json_safe

if TYPE_CHECKING:
    from emsbms.edge.events import Event

SEQ_MODULO = 1 << 64
BD_SEQ_MODULO = 256
SUPERVISION = ("CommState", "LastSeen", "Alarm/CommLoss")
"""Per-device supervision channels (`protocols/supervision.py`), sent on `health`."""
UPLINK_PREFIX = "uplink"
"""The uplink's own counter channels (``uplink/Queued``...), sent on `health`."""
DEFAULT_REFRESH_S = 300.0
DEFAULT_MAX_SAMPLES = 500


class MessageKind(StrEnum):
    """What a message is (the outbox's `kind` column)."""

    STATE = "state"
    BIRTH = "birth"
    TELEMETRY = "telemetry"
    HEALTH = "health"
    EVENTS = "events"
    ALARMS = "alarms"
    CMD_RESULT = "cmd/result"
    CONFIG_STATUS = "config/status"


class Message(NamedTuple):
    """One message to publish: topic, JSON payload, kind."""

    topic: str
    payload: bytes
    kind: MessageKind


@dataclass(frozen=True)
class Topics:
    """Every topic of one site, under ``ems/{org}/{site}/``."""

    org: str
    site: str

    def __post_init__(self) -> None:
        for key, value in (("org", self.org), ("name", self.site)):
            bad = [c for c in "/+#" if c in value]
            if not value or bad or value != value.strip():
                raise ConfigError(f"site: [site] key {key!r} expected a non-empty MQTT topic level without '/', '+',"
                                  f" '#' or surrounding spaces, found {value!r}")

    @property
    def root(self) -> str:
        return f"ems/{self.org}/{self.site}/"

    @property
    def all(self) -> str:
        """The filter for every topic of the site (``ems/acme/plant-1/#``)."""
        return self.root + "#"

    @property
    def state(self) -> str:
        return self.root + "state"

    @property
    def birth(self) -> str:
        return self.root + "birth"

    @property
    def telemetry(self) -> str:
        return self.root + "telemetry"

    @property
    def health(self) -> str:
        return self.root + "health"

    @property
    def events(self) -> str:
        return self.root + "events"

    @property
    def alarms(self) -> str:
        return self.root + "alarms"

    @property
    def cmd(self) -> str:
        return self.root + "cmd"

    @property
    def cmd_result(self) -> str:
        return self.root + "cmd/result"

    @property
    def config(self) -> str:
        return self.root + "config"

    @property
    def config_status(self) -> str:
        return self.root + "config/status"

    @property
    def rebirth(self) -> str:
        """Down: a request to publish the birth (and a full telemetry refresh) again."""
        return self.root + "rebirth"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """A device as the birth announces it."""

    name: str
    bus: str
    protocol: str
    profile: str
    profile_version: str
    profile_hash: str


class Counter:
    """A sequence number: `next()` gives start, start+1, ... wrapping to 0 at `modulo`."""

    def __init__(self, start: int = 0, modulo: int = SEQ_MODULO) -> None:
        self.modulo = modulo
        self._next = start % modulo
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            n = self._next
            self._next = (n + 1) % self.modulo
            return n

    def peek(self) -> int:
        return self._next


# -- JSON ---------------------------------------------------------------------------------------

def json_bytes(doc: Any) -> bytes:
    """Compact strict JSON in UTF-8: never a NaN or Infinity token."""
    return json.dumps(json_safe(doc), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


_LIVE = b'"historical":false'
_HISTORICAL = b'"historical":true'


def as_historical(payload: bytes) -> bytes:
    """The payload with its ``historical`` flag set (payloads without the flag are unchanged).

    Only a key can match: inside a JSON string the quotes would be escaped."""
    return payload.replace(_LIVE, _HISTORICAL, 1)


# -- payloads -----------------------------------------------------------------------------------

def state_payload(online: bool, bd_seq: int, now_us: int) -> bytes:
    """`state` (retained): ``online`` after the birth, ``offline`` as the will or on a clean stop."""
    return json_bytes({"state": "online" if online else "offline", "bdSeq": bd_seq, "timestamp_us": now_us})


def channel_doc(info: ChannelInfo) -> dict[str, Any]:
    return {"address": info.address, "unit": info.unit, "kind": info.kind.value, "description": info.description,
            "min": info.minimum, "max": info.maximum}


def birth_payload(channels: Iterable[ChannelInfo], devices: Iterable[DeviceInfo], edge_version: str, bd_seq: int,
                  session: int, now_us: int) -> bytes:
    """`birth`: every channel's metadata (sorted by address), the devices and the edge's version."""
    return json_bytes({
        "timestamp_us": now_us, "bdSeq": bd_seq, "session": session, "edge_version": edge_version,
        "devices": [{"name": d.name, "bus": d.bus, "protocol": d.protocol, "profile": d.profile,
                     "version": d.profile_version, "hash": d.profile_hash} for d in devices],
        "channels": [channel_doc(c) for c in sorted(channels, key=lambda c: c.address)],
    })


def sample_doc(address: str, reading: Reading) -> dict[str, Any]:
    return {"address": address, "value": reading.value, "timestamp_us": reading.timestamp_us,
            "quality": reading.quality.value}


def samples_payload(samples: Sequence[tuple[str, Reading]], session: int, seq: int, now_us: int,
                    refresh: bool = False) -> bytes:
    """`telemetry` and `health`: a batch of samples, each with its own µs timestamp and quality."""
    return json_bytes({"historical": False, "session": session, "seq": seq, "timestamp_us": now_us,
                       "refresh": refresh, "samples": [sample_doc(a, r) for a, r in samples]})


def event_doc(event: Event) -> dict[str, Any]:
    return {"timestamp_us": event.timestamp_us, "source": event.source, "kind": event.kind.value,
            "severity": event.severity.name.lower(), "text": event.text, "repeat": event.repeat}


def events_payload(events: Sequence[Event], session: int, seq: int, now_us: int) -> bytes:
    """`events`: event log entries (EMCY, DM1, comm loss and recovery, alarms, command results)."""
    return json_bytes({"historical": False, "session": session, "seq": seq, "timestamp_us": now_us,
                       "events": [event_doc(e) for e in events]})


def alarms_payload(alarms: Sequence[dict[str, Any]], session: int, seq: int, now_us: int) -> bytes:
    """`alarms`: alarm transitions and acknowledgements (`Transition.as_dict()`), never one per sample."""
    return json_bytes({"historical": False, "session": session, "seq": seq, "timestamp_us": now_us,
                       "alarms": list(alarms)})


def next_bd_seq(previous: int | None) -> int:
    """The birth/death sequence of the next connection: 0 first, then +1 modulo 256."""
    return 0 if previous is None else (previous + 1) % BD_SEQ_MODULO


# -- telemetry by exception ---------------------------------------------------------------------

def _changed(old: Value, new: Value, deadband: float) -> bool:
    """True when `new` differs from the last sent `old` by more than the deadband (numbers), or at
    all (anything else). NaN counts as a value of its own."""
    if type(old) is bool or type(new) is bool or not isinstance(old, int | float) or not isinstance(new, int | float):
        return old != new or type(old) is not type(new)
    old_nan, new_nan = math.isnan(old), math.isnan(new)
    if old_nan or new_nan:
        return old_nan != new_nan
    if math.isinf(old) or math.isinf(new):
        return old != new
    return abs(new - old) > deadband


class TelemetryBatcher:
    """Registry updates in, telemetry and health messages out, by exception.

    - A channel's update is sent when its value differs from the last one *sent* by more than its
      deadband (`deadbands` by address, else `deadband`; default 0: every change), or when its
      quality changed (always, whatever the deadband or rate limit), or when it was never sent.
    - Without a rate limit every such update is sent, in order (no coalescing).
      With `min_interval_s`, a channel sends at most one update per interval (measured on the
      samples' own timestamps); a held update goes out at the first `flush` after its interval,
      as the latest value; one that went back within the deadband is forgotten.
    - Every `refresh_s` (counted from `start_us`, or from the first `flush`), and at the next
      `flush` after `refresh()`, `flush` sends every channel's latest reading, marked
      ``"refresh": true``, and the period counts again from there.
    - Addresses of the buses and the uplink (`health_prefixes`, e.g. ``can0/...``, ``uplink/...``)
      and the devices' supervision channels (`SUPERVISION`) go to `health`, the rest to
      `telemetry`. Each stream has its own sequence counter.

    `update` may be called from any thread; `flush(now_us)` returns the messages to queue.
    """

    def __init__(self, topics: Topics, session: int, health_prefixes: Iterable[str] = (UPLINK_PREFIX,),
                 deadband: float = 0.0, deadbands: Mapping[str, float] | None = None,
                 refresh_s: float = DEFAULT_REFRESH_S, min_interval_s: float | None = None,
                 max_samples: int = DEFAULT_MAX_SAMPLES, start_us: int | None = None,
                 telemetry_seq: int = 0, health_seq: int = 0) -> None:
        if max_samples < 1:
            raise ConfigError(f"uplink: max_samples expected at least 1, found {max_samples}")
        self.topics = topics
        self.session = session
        self.health_prefixes = frozenset(health_prefixes)
        self.deadband = deadband
        self.deadbands = dict(deadbands or {})
        self.refresh_us = int(refresh_s * 1_000_000)
        self.min_interval_us = None if min_interval_s is None else int(min_interval_s * 1_000_000)
        self.max_samples = max_samples
        self.seq = {MessageKind.TELEMETRY: Counter(telemetry_seq), MessageKind.HEALTH: Counter(health_seq)}
        self._lock = threading.Lock()
        self._latest: dict[str, Reading] = {}
        self._sent: dict[str, Reading] = {}
        self._queue: list[tuple[str, Reading]] = []
        self._held: dict[str, Reading] = {}
        self._next_refresh = None if start_us is None else start_us + self.refresh_us
        self._refresh_now = False

    def set_health_prefixes(self, prefixes: Iterable[str]) -> None:
        """The bus names changed (a bus added or removed by a config): route their channels to `health`."""
        with self._lock:
            self.health_prefixes = frozenset(prefixes)

    def is_health(self, address: str) -> bool:
        head, _, rest = address.partition("/")
        return head in self.health_prefixes or rest in SUPERVISION

    def update(self, address: str, reading: Reading) -> None:
        """One registry update (a `Registry.subscribe` callback)."""
        with self._lock:
            self._latest[address] = reading
            last = self._sent.get(address)
            if last is not None and last.quality == reading.quality:
                if not _changed(last.value, reading.value, self.deadbands.get(address, self.deadband)):
                    self._held.pop(address, None)
                    return
                if self.min_interval_us is not None and reading.timestamp_us - last.timestamp_us < self.min_interval_us:
                    self._held[address] = reading
                    return
            self._held.pop(address, None)
            self._sent[address] = reading
            self._queue.append((address, reading))

    def refresh(self) -> None:
        """Send every channel's latest reading at the next `flush` (after a birth or rebirth)."""
        with self._lock:
            self._refresh_now = True

    def flush(self, now_us: int) -> list[Message]:
        """The messages due now: queued updates, held updates whose interval passed, and the full
        refresh when due. Each batch holds at most `max_samples` samples."""
        with self._lock:
            queue, self._queue = self._queue, []
            if self._held and self.min_interval_us is not None:
                for address, reading in list(self._held.items()):
                    if now_us - self._sent[address].timestamp_us >= self.min_interval_us:
                        del self._held[address]
                        self._sent[address] = reading
                        queue.append((address, reading))
            if self._next_refresh is None:  # the period counts from the first flush
                self._next_refresh = now_us + self.refresh_us
            refresh = self._refresh_now or now_us >= self._next_refresh
            full: list[tuple[str, Reading]] = []
            if refresh:
                self._refresh_now = False
                self._next_refresh = now_us + self.refresh_us
                self._held.clear()
                full = sorted(self._latest.items())
                self._sent.update(self._latest)
        out = self._messages(queue, now_us, refresh=False)
        if refresh:
            out += self._messages(full, now_us, refresh=True)
        return out

    def _messages(self, samples: list[tuple[str, Reading]], now_us: int, refresh: bool) -> list[Message]:
        streams: dict[MessageKind, list[tuple[str, Reading]]] = {MessageKind.TELEMETRY: [], MessageKind.HEALTH: []}
        for address, reading in samples:
            streams[MessageKind.HEALTH if self.is_health(address) else MessageKind.TELEMETRY].append((address, reading))
        out: list[Message] = []
        for kind, items in streams.items():
            topic = self.topics.health if kind is MessageKind.HEALTH else self.topics.telemetry
            for i in range(0, len(items), self.max_samples):
                payload = samples_payload(items[i:i + self.max_samples], self.session, self.seq[kind].next(), now_us,
                                          refresh)
                out.append(Message(topic, payload, kind))
        return out


__all__ = ["BD_SEQ_MODULO", "SEQ_MODULO", "SUPERVISION", "Counter", "DeviceInfo", "Message", "MessageKind",
           "TelemetryBatcher", "Topics", "as_historical", "birth_payload", "events_payload",
           "json_bytes", "next_bd_seq", "samples_payload", "state_payload"]
