"""Ingest's pure part: an uplink MQTT message (docs/uplink.md) into typed records. No I/O; time is an
argument.

    record = parse_message("ems/acme/plant-1/telemetry", payload, now_us)   # or raises PayloadError

Every number is checked: an integer where the contract says integer (never a bool), in its range
(`seq` and `session` fit PostgreSQL's bigint, `bdSeq` 0..255), every float finite, every timestamp
between 2000-01-01 and one day after `now_us` (a wrong edge clock must not create partitions in
1970 or 2100). Strings hold no NUL (PostgreSQL text cannot). A refusal names the topic, the key, what
was expected and what was found; the whole message is refused, nothing of it is stored.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from emsbms.cloud.ingest_records import (
    STREAMS,
    AlarmRow,
    Batch,
    Birth,
    ChannelRow,
    CommandResult,
    ConfigStatus,
    DeviceRow,
    EventRow,
    Kind,
    Record,
    SampleRow,
    State,
)
from emsbms.errors import EmsbmsError

__all__ = ["Batch", "Birth", "CommandResult", "ConfigStatus", "Kind", "PayloadError", "Record", "SampleRow", "State",
           "parse_message", "split_topic"]

BIGINT_MAX = (1 << 63) - 1
MIN_TIMESTAMP_US = 946_684_800_000_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_US = 86_400_000_000  # a timestamp at most one day after the ingest's clock
MAX_TEXT = 4096
QUALITIES = frozenset({"ok", "stale", "not available", "invalid"})
CMD_STATUSES = frozenset({"acked", "sent", "rejected", "timeout", "expired", "unknown"})
CONFIG_STATUSES = frozenset({"applied", "failed"})
EVENT_KINDS = frozenset({"comm", "alarm", "emcy", "dm1", "identity", "command", "bus", "log"})
SEVERITIES = frozenset({"ok", "info", "warning", "alarm"})
PROTOCOLS = frozenset({"dbc", "canopen", "j1939"})
CHANNEL_KINDS = frozenset({"measurement", "alarm", "command", "state"})
ALARM_STATES = frozenset({"ok", "pending", "active", "clearing", "latched", "no_data", "inhibited"})
ALARM_SEVERITIES = frozenset({"INFO", "WARNING", "FAULT"})
RULE_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")


class PayloadError(EmsbmsError):
    """A message that does not follow the uplink contract: names the topic, the key, the expectation and
    what was found."""


class _Reader:
    """Checked access to one JSON object; every refusal names the topic and the key path."""

    def __init__(self, topic: str, now_us: int) -> None:
        self.topic = topic
        self.now_us = now_us

    def fail(self, key: str, expected: str, found: Any) -> PayloadError:
        shown = json.dumps(found)[:80] if not isinstance(found, _Missing) else "nothing"
        kind = "nothing" if isinstance(found, _Missing) else f"{_json_type(found)} {shown}"
        return PayloadError(f"{self.topic}: key '{key}': expected {expected}, found {kind}")

    def obj(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "an object", value)
        return value

    def integer(self, obj: dict[str, Any], key: str, path: str, lo: int, hi: int) -> int:
        value = obj.get(key, MISSING)
        if type(value) is not int or not lo <= value <= hi:
            raise self.fail(path + key, f"an integer {lo}..{hi}", value)
        return value

    def timestamp(self, obj: dict[str, Any], key: str, path: str) -> int:
        return self.integer(obj, key, path, MIN_TIMESTAMP_US, self.now_us + MAX_FUTURE_US)

    def text(self, obj: dict[str, Any], key: str, path: str, nullable: bool = False,
             choices: frozenset[str] | None = None) -> Any:
        value = obj.get(key, MISSING)
        if value is None and nullable:
            return None
        if choices is not None:
            if value not in choices:
                raise self.fail(path + key, "one of " + ", ".join(sorted(choices)), value)
            return value
        if not isinstance(value, str) or "\x00" in value or len(value) > MAX_TEXT:
            raise self.fail(path + key, f"a string of at most {MAX_TEXT} characters without NUL"
                            + (" or null" if nullable else ""), value)
        return value

    def number(self, obj: dict[str, Any], key: str, path: str) -> float | None:
        value = obj.get(key, MISSING)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not _finite(value):
            raise self.fail(path + key, "a finite number or null", value)
        return float(value)

    def boolean(self, obj: dict[str, Any], key: str, path: str) -> bool:
        value = obj.get(key, MISSING)
        if not isinstance(value, bool):
            raise self.fail(path + key, "true or false", value)
        return value

    def array(self, obj: dict[str, Any], key: str, path: str, limit: int = 100_000) -> list[Any]:
        value = obj.get(key, MISSING)
        if not isinstance(value, list) or len(value) > limit:
            raise self.fail(path + key, f"an array of at most {limit} items", value)
        return value


class _Missing:
    pass


MISSING = _Missing()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "value")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond the float range
        return False


def split_topic(topic: str) -> tuple[str, str, Kind]:
    """`ems/{org}/{site}/{kind}` into (org, site, kind); PayloadError for any other topic."""
    parts = topic.split("/", 3)
    if len(parts) != 4 or parts[0] != "ems" or not parts[1] or not parts[2] or parts[3] not in set(Kind):
        raise PayloadError(f"{topic}: expected a topic ems/ORG/SITE/KIND with KIND one of "
                           + ", ".join(k.value for k in Kind) + ", found another topic")
    return parts[1], parts[2], Kind(parts[3])


def parse_message(topic: str, payload: bytes, now_us: int) -> Record:
    """One message into its record; PayloadError names what is wrong."""
    org, site, kind = split_topic(topic)
    try:
        data = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"{topic}: expected a JSON object, found text that is not JSON ({exc})") from None
    r = _Reader(topic, now_us)
    data = r.obj(data, "(payload)")
    if kind in STREAMS:
        return _batch(r, org, site, kind, data)
    if kind is Kind.STATE:
        return State(org, site, r.text(data, "state", "", choices=frozenset({"online", "offline"})) == "online",
                     r.integer(data, "bdSeq", "", 0, 255), r.timestamp(data, "timestamp_us", ""))
    if kind is Kind.BIRTH:
        return _birth(r, org, site, data)
    if kind is Kind.CMD_RESULT:
        return CommandResult(org, site, r.text(data, "id", "", nullable=True),
                             r.text(data, "status", "", choices=CMD_STATUSES), r.text(data, "detail", ""),
                             r.integer(data, "took_us", "", 0, BIGINT_MAX), r.text(data, "address", "", nullable=True),
                             r.number(data, "value", ""))
    switched = r.array(data, "switched", "")
    for i, name in enumerate(switched):
        r.text({"x": name}, "x", f"switched[{i}]")
    return ConfigStatus(org, site, r.text(data, "version", "", nullable=True),
                        r.text(data, "status", "", choices=CONFIG_STATUSES), r.text(data, "detail", ""),
                        tuple(switched))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _batch(r: _Reader, org: str, site: str, kind: Kind, data: dict[str, Any]) -> Batch:
    historical = r.boolean(data, "historical", "")
    session = r.integer(data, "session", "", 0, BIGINT_MAX)
    seq = r.integer(data, "seq", "", 0, BIGINT_MAX)
    stamp = r.timestamp(data, "timestamp_us", "")
    if kind is Kind.EVENTS:
        events = tuple(_event(r, r.obj(e, f"events[{i}]"), f"events[{i}].")
                       for i, e in enumerate(r.array(data, "events", "")))
        return Batch(org, site, kind, session, seq, stamp, historical, events=events)
    if kind is Kind.ALARMS:
        alarms = tuple(_alarm(r, r.obj(a, f"alarms[{i}]"), f"alarms[{i}].")
                       for i, a in enumerate(r.array(data, "alarms", "", limit=10_000)))
        return Batch(org, site, kind, session, seq, stamp, historical, alarms=alarms)
    r.boolean(data, "refresh", "")
    samples = _samples(r, r.array(data, "samples", "", limit=500))
    return Batch(org, site, kind, session, seq, stamp, historical, samples=samples)


def _samples(r: _Reader, items: list[Any]) -> tuple[SampleRow, ...]:
    """The common sample (a finite float, a short address) checked inline; any other goes through `_sample`,
    which accepts the rest and names what is wrong."""
    lo, hi = MIN_TIMESTAMP_US, r.now_us + MAX_FUTURE_US
    out = []
    for i, s in enumerate(items):
        if type(s) is dict:
            address, stamp, quality, value = s.get("address"), s.get("timestamp_us"), s.get("quality"), s.get("value")
            if (type(value) is float and value - value == 0.0 and type(stamp) is int and lo <= stamp <= hi
                    and quality in QUALITIES and type(address) is str and 0 < len(address) <= MAX_TEXT
                    and "\x00" not in address):
                out.append(SampleRow(address, stamp, value, None, quality))
                continue
        out.append(_sample(r, r.obj(s, f"samples[{i}]"), f"samples[{i}]."))
    return tuple(out)


def _sample(r: _Reader, s: dict[str, Any], path: str) -> SampleRow:
    address = r.text(s, "address", path)
    if not address:
        raise r.fail(path + "address", "a non-empty string", address)
    stamp = r.timestamp(s, "timestamp_us", path)
    quality = r.text(s, "quality", path, choices=QUALITIES)
    value = s.get("value", MISSING)
    if isinstance(value, bool):
        return SampleRow(address, stamp, float(value), "true" if value else "false", quality)
    if isinstance(value, str):
        return SampleRow(address, stamp, None, r.text(s, "value", path), quality)
    if value is MISSING:
        raise r.fail(path + "value", "a number, a boolean, a string or null", value)
    return SampleRow(address, stamp, r.number(s, "value", path), None, quality)


def _event(r: _Reader, e: dict[str, Any], path: str) -> EventRow:
    stamp = r.timestamp(e, "timestamp_us", path)
    source = r.text(e, "source", path)
    detail = {"kind": r.text(e, "kind", path, choices=EVENT_KINDS),
              "severity": r.text(e, "severity", path, choices=SEVERITIES),
              "text": r.text(e, "text", path), "repeat": r.integer(e, "repeat", path, 1, BIGINT_MAX)}
    return EventRow(stamp, str(detail["kind"]), source, detail)


def _alarm(r: _Reader, a: dict[str, Any], path: str) -> AlarmRow:
    """One alarm transition: rule a name, device one topic level, `id` = rule/device, states and severity enums."""
    rule, device = r.text(a, "rule", path), r.text(a, "device", path)
    if not RULE_NAME.fullmatch(rule):
        raise r.fail(path + "rule", "a rule name of A-Z, a-z, 0-9, '_', '-'", rule)
    if not device or "/" in device:
        raise r.fail(path + "device", "a non-empty device name without '/'", device)
    if r.text(a, "id", path) != f"{rule}/{device}":
        raise r.fail(path + "id", f"'{rule}/{device}' (rule/device)", a.get("id"))
    return AlarmRow(rule, device, r.text(a, "state", path, choices=ALARM_STATES),
                    r.text(a, "previous", path, choices=ALARM_STATES),
                    r.text(a, "severity", path, choices=ALARM_SEVERITIES), r.boolean(a, "acked", path),
                    r.number(a, "value", path) if "value" in a else _absent(r, path + "value"),
                    r.timestamp(a, "timestamp_us", path), r.text(a, "text", path))


def _absent(r: _Reader, key: str) -> float | None:
    raise r.fail(key, "a finite number or null", MISSING)


def _birth(r: _Reader, org: str, site: str, data: dict[str, Any]) -> Birth:
    devices = []
    for i, d in enumerate(r.array(data, "devices", "")):
        p = f"devices[{i}]."
        d = r.obj(d, p[:-1])
        devices.append(DeviceRow(r.text(d, "name", p), r.text(d, "bus", p),
                                 r.text(d, "protocol", p, choices=PROTOCOLS), r.text(d, "profile", p),
                                 r.text(d, "version", p), r.text(d, "hash", p)))
    channels = []
    for i, c in enumerate(r.array(data, "channels", "")):
        p = f"channels[{i}]."
        c = r.obj(c, p[:-1])
        channels.append(ChannelRow(r.text(c, "address", p), r.text(c, "unit", p),
                                   r.text(c, "kind", p, choices=CHANNEL_KINDS), r.text(c, "description", p),
                                   r.number(c, "min", p), r.number(c, "max", p)))
    return Birth(org, site, r.timestamp(data, "timestamp_us", ""), r.integer(data, "bdSeq", "", 0, 255),
                 r.integer(data, "session", "", 0, BIGINT_MAX), r.text(data, "edge_version", ""),
                 tuple(devices), tuple(channels))
