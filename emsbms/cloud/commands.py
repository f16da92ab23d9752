"""The command API's side of `cmd` / `cmd/result`: cloud checks, publish with a deadline, wait for the result.

The edge is the authority: it validates every command again. The cloud refuses early what it can tell
from the site's desired configuration (an unknown command channel, a value outside the profile's
limits), answers `offline` at once for an edge that is not online (a command is never queued), and
otherwise publishes ``cmd`` with an id and a deadline and waits for the ``cmd/result`` with that id.

Results reach the waiting request through `Waiters`, fed by the serving process's own (non-shared)
subscription to ``ems/+/+/cmd/result``: ingest reads through a shared subscription, so with several
ingest processes a result would land in any one of them, not necessarily the one whose request waits.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from emsbms.cloud.repository import Version, desired_body, find_profile, now_us


@dataclass(frozen=True)
class Outcome:
    """The answer of one command."""

    id: str
    status: str
    detail: str
    round_trip_ms: float | None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "detail": self.detail, "round_trip_ms": self.round_trip_ms}


class Waiters:
    """Futures keyed by command id, resolved by the `cmd/result` payloads that name them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[str, Future[dict[str, Any]]] = {}

    def expect(self, command_id: str) -> Future[dict[str, Any]]:
        future: Future[dict[str, Any]] = Future()
        with self._lock:
            self._futures[command_id] = future
        return future

    def forget(self, command_id: str) -> None:
        with self._lock:
            self._futures.pop(command_id, None)

    def feed(self, payload: bytes) -> bool:
        """Resolve the future of the result's id; False for a result nobody waits for, or not JSON."""
        try:
            data = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return False
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            return False
        with self._lock:
            future = self._futures.pop(data["id"], None)
        if future is None:
            return False
        future.set_result(data)
        return True


def cloud_check(conn: Connection[Any], site: str, address: str, value: float, shipped: list[Version]) -> str | None:
    """Why the site's desired configuration refuses the command (None: it does not know, or allows it)."""
    body = desired_body(conn, site)
    device, _, channel = address.partition("/")
    if body is None:
        return None
    for d in body.get("devices", []):
        if isinstance(d, dict) and d.get("name") == device:
            profile = find_profile(conn, str(d.get("profile")), d.get("version"), shipped)
            if profile is None:
                return None
            commands = profile.document.get("commands", {})
            spec = commands.get(channel)
            if not isinstance(spec, dict):
                return (f"address {address!r}: expected a command of profile {profile.name} {profile.version}"
                        f" ({', '.join(sorted(commands)) or 'none'}), found {channel!r}; nothing sent")
            low, high = spec.get("min"), spec.get("max")
            if isinstance(low, int | float) and isinstance(high, int | float) and not low <= value <= high:
                return (f"value: expected {low:g}..{high:g} for {address} (profile {profile.name}"
                        f" {profile.version}), found {value:g}; nothing sent")
            return None
    return None


def record(conn: Connection[Any], site: str, org: str, out: Outcome, address: str, value: float) -> None:
    conn.execute("INSERT INTO commands (org_id, site, id, address, value, status, detail, round_trip_ms, created_us)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (org_id, id) DO UPDATE SET"
                 " status = excluded.status, detail = excluded.detail, round_trip_ms = excluded.round_trip_ms",
                 [org, site, out.id, address, Jsonb(value), out.status, out.detail, out.round_trip_ms, now_us()])


def new_id() -> str:
    return f"c-{uuid.uuid4().hex[:16]}"


def send(publish: Callable[[str, bytes], None], waiters: Waiters, topic: str, command_id: str, address: str,
         value: float, timeout_s: float) -> Outcome:
    """Publish one `cmd` with deadline now + timeout_s and wait for its result until the deadline."""
    deadline_us = now_us() + int(timeout_s * 1_000_000)
    payload = json.dumps({"id": command_id, "address": address, "value": value, "deadline_us": deadline_us},
                         separators=(",", ":")).encode("utf-8")
    future = waiters.expect(command_id)
    start = time.monotonic()
    try:
        publish(topic, payload)
        result = future.result(timeout=max(0.0, deadline_us / 1e6 - time.time()))
    except FutureTimeout:
        return Outcome(command_id, "timeout", f"no cmd/result from the edge within {timeout_s:g} s", None)
    finally:
        waiters.forget(command_id)
    took = (time.monotonic() - start) * 1000.0
    return Outcome(command_id, str(result.get("status")), str(result.get("detail", "")), round(took, 3))
