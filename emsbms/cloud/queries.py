"""Read side of the API: sites, latest channels, series (raw or bucketed with date_bin) and events."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from psycopg import Connection

from emsbms.cloud.repository import ApiError

_BUCKET = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(field: str, text: str) -> datetime:
    """An ISO 8601 time (`Z` allowed); naive means UTC."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ApiError(422, field, f"{field}: expected an ISO 8601 time like 2026-11-26T14:00:00Z,"
                                   f" found {text!r:.60}") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def parse_bucket(text: str) -> int:
    """Seconds of a bucket like `10s`, `1m`, `1h`, `1d`."""
    m = _BUCKET.match(text.strip())
    if m is None:
        raise ApiError(422, "bucket", f"bucket: expected a number and a unit (s, m, h, d) like 1m, found {text!r:.40}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def sites(conn: Connection[Any]) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT site, online, last_seen_us, desired_version, applied_version FROM sites"
                        " ORDER BY site").fetchall()
    return [{"site": r[0], "online": bool(r[1]), "last_seen_us": r[2], "desired_version": r[3],
             "applied_version": r[4]} for r in rows]


def channels(conn: Connection[Any], site: str) -> dict[str, Any]:
    rows = conn.execute(
        "SELECT l.address, l.value, l.text_value, l.quality, l.timestamp_us, coalesce(c.unit, '')"
        " FROM latest l LEFT JOIN channel_info c ON c.org_id = l.org_id AND c.site = l.site AND c.address = l.address"
        " WHERE l.site = %s ORDER BY l.address", [site]).fetchall()
    return {r[0]: {"value": r[2] if r[2] is not None else r[1], "unit": r[5], "timestamp_us": r[4], "quality": r[3]}
            for r in rows}


def series(conn: Connection[Any], site: str, address: str, start: str, end: str,
           bucket: str | None) -> dict[str, Any]:
    t0, t1 = parse_time("from", start), parse_time("to", end)
    if t1 < t0:
        raise ApiError(422, "to", f"to: expected a time at or after from ({start}), found {end!r}")
    if bucket is None:
        rows = conn.execute("SELECT timestamp_us, value FROM telemetry WHERE site = %s AND address = %s"
                            " AND ts >= %s AND ts < %s ORDER BY ts, seq", [site, address, t0, t1]).fetchall()
    else:
        seconds = parse_bucket(bucket)
        rows = conn.execute(
            "SELECT (extract(epoch FROM b) * 1000000)::bigint, avg(value) FROM ("
            " SELECT date_bin(make_interval(secs => %s), ts, timestamptz '1970-01-01 00:00:00+00') AS b, value"
            " FROM telemetry WHERE site = %s AND address = %s AND ts >= %s AND ts < %s) x"
            " GROUP BY b ORDER BY b", [seconds, site, address, t0, t1]).fetchall()
    return {"address": address, "points": [[int(r[0]), r[1]] for r in rows]}


def events(conn: Connection[Any], site: str, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT id, timestamp_us, kind, device, detail FROM events WHERE site = %s"
                        " ORDER BY timestamp_us DESC, id DESC LIMIT %s", [site, limit]).fetchall()
    return [{"id": r[0], "timestamp_us": r[1], "kind": r[2], "device": r[3], "detail": r[4]} for r in rows]
