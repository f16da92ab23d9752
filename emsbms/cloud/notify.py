"""Webhook notifications of alarm raises and clears: the pure rules (which transitions notify, grouping,
backoff, signature) and `Notifier`, the service's thread that delivers the queued ones with httpx.

A notification is one POST of `{"org", "site", "alarms": [transitions]}` to one webhook, signed
`X-Emsbms-Signature: sha256=<hex HMAC-SHA256 of the exact body with the webhook's secret>`. Ingest
(alarms_store.py) queues it: the raises and clears of one site that arrive within `WINDOW_US` of the
first join one notification, due when that window closes. A failed post is tried again after 1 s,
2 s, 4 s ... (capped) until `max_attempts`, then it is `failed`; `last_error` says why.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import psycopg_pool

from emsbms.cloud.database import Database

log = logging.getLogger(__name__)

WINDOW_US = 2_000_000  # transitions within 2 s of a notification's first one join it
LEASE_US = 60_000_000  # a claimed notification is not claimed again for this long (a crash mid-post)
ALARMED = frozenset({"active", "clearing", "latched"})


def notify_event(previous: str, state: str) -> str | None:
    """"raise" for a transition into active, "clear" for one into ok from active, clearing or latched,
    None for anything else (an acknowledgement, pending, no_data, ...)."""
    if state == "active" and previous != "active":
        return "raise"
    if state == "ok" and previous in ALARMED:
        return "clear"
    return None


def open_since(now_us: int, window_us: int = WINDOW_US) -> int:
    """A notification created after this time still takes transitions arriving at `now_us`."""
    return now_us - window_us


def group_due(created_us: int, window_us: int = WINDOW_US) -> int:
    """When a notification created at `created_us` is first sent: its window closed."""
    return created_us + window_us


def group_arrivals(arrivals_us: list[int], window_us: int = WINDOW_US) -> list[list[int]]:
    """The notifications that transitions arriving at these times make (the rule ingest applies)."""
    groups: list[list[int]] = []
    for t in sorted(arrivals_us):
        if groups and groups[-1][0] > open_since(t, window_us):
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def backoff_s(attempts: int, base_s: float = 1.0, cap_s: float = 60.0) -> float:
    """The wait after the `attempts`-th failed attempt: base, 2×base, 4×base, ... at most cap."""
    return float(min(cap_s, base_s * 2 ** max(0, min(attempts - 1, 62))))


def after_failure(attempts: int, now_us: int, max_attempts: int, base_s: float = 1.0,
                  cap_s: float = 60.0) -> tuple[str, int]:
    """(state, next_attempt_us) after the `attempts`-th attempt failed at `now_us`."""
    if attempts >= max_attempts:
        return "failed", now_us
    return "pending", now_us + int(backoff_s(attempts, base_s, cap_s) * 1_000_000)


def body_bytes(org: str, site: str, alarms: list[dict[str, Any]]) -> bytes:
    return json.dumps({"org": org, "site": site, "alarms": alarms}, separators=(",", ":")).encode("utf-8")


def signature(secret: str, body: bytes) -> str:
    """The X-Emsbms-Signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def notify_lock(conn: psycopg.Connection[Any], org: str) -> None:
    """Serialise ingest's queueing and the notifier's bookkeeping of one organisation (released at commit)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('emsbms-notify:' || %s))", [org])


def now_us() -> int:
    return time.time_ns() // 1000


class Notifier:
    """Delivers due notifications of every organisation, one organisation's transaction at a time."""

    def __init__(self, db: Database, max_attempts: int = 8, base_s: float = 1.0, cap_s: float = 60.0,
                 poll_s: float = 0.2, timeout_s: float = 10.0, clock: Callable[[], int] = now_us) -> None:
        self.db = db
        self.max_attempts, self.base_s, self.cap_s = max_attempts, base_s, cap_s
        self.poll_s, self.clock = poll_s, clock
        self.http = httpx.Client(timeout=timeout_s, follow_redirects=False)
        self.delivered = self.failed_attempts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="emsbms-notifier", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.http.close()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.run_once(self.clock())
            except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                log.warning("notifier: the database is unavailable: %s", exc)
            except Exception:  # a bug must not stop deliveries for good
                log.exception("notifier: delivery round failed")

    def run_once(self, now: int) -> int:
        """Send every due notification once; the number delivered."""
        with self.db.pool.connection() as conn:  # no organisation: notify_due alone is readable
            orgs = [str(r[0]) for r in conn.execute("SELECT org_id FROM notify_due WHERE due_us <= %s ORDER BY 1",
                                                    [now]).fetchall()]
        return sum(self._deliver_org(org, now) for org in orgs)

    def _deliver_org(self, org: str, now: int) -> int:
        with self.db.org(org) as conn:
            due: list[Any] = conn.execute(
                "SELECT n.id, n.site, n.body, n.attempts, w.url, w.secret FROM notifications n JOIN webhooks w"
                " ON w.id = n.webhook_id WHERE n.state = 'pending' AND n.next_attempt_us <= %s ORDER BY n.id"
                " LIMIT 100 FOR UPDATE OF n SKIP LOCKED", [now]).fetchall()
            conn.execute("UPDATE notifications SET attempts = attempts + 1, next_attempt_us = %s WHERE id = ANY(%s)",
                         [now + LEASE_US, [r[0] for r in due]])
        delivered = 0
        outcomes = []
        for nid, site, body, attempts, url, secret in due:
            data = body_bytes(org, str(site), list(body["alarms"]))
            error = self._post(str(url), str(secret), data)
            delivered += error is None
            outcomes.append((int(nid), int(attempts) + 1, error))
        with self.db.org(org) as conn:
            notify_lock(conn, org)
            for nid, attempts, error in outcomes:
                self._record(conn, nid, attempts, error)
            next_due: Any = conn.execute(
                "SELECT min(next_attempt_us) FROM notifications WHERE state = 'pending'").fetchone()
            if next_due is None or next_due[0] is None:
                conn.execute("DELETE FROM notify_due")
            else:
                conn.execute("INSERT INTO notify_due (org_id, due_us) VALUES (%s, %s) ON CONFLICT (org_id)"
                             " DO UPDATE SET due_us = excluded.due_us", [org, int(next_due[0])])
        return delivered

    def _post(self, url: str, secret: str, data: bytes) -> str | None:
        """None when the receiver answered 2xx; else why not."""
        try:
            r = self.http.post(url, content=data, headers={"Content-Type": "application/json",
                                                           "X-Emsbms-Signature": signature(secret, data)})
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code} from {url}"

    def _record(self, conn: psycopg.Connection[Any], nid: int, attempts: int, error: str | None) -> None:
        now = self.clock()
        if error is None:
            self.delivered += 1
            conn.execute("UPDATE notifications SET state = 'delivered', delivered_us = %s, last_error = NULL"
                         " WHERE id = %s", [now, nid])
            return
        self.failed_attempts += 1
        state, at = after_failure(attempts, now, self.max_attempts, self.base_s, self.cap_s)
        log.warning("notifier: notification %d attempt %d failed (%s): %s", nid, attempts, error, state)
        conn.execute("UPDATE notifications SET state = %s, next_attempt_us = %s, last_error = %s WHERE id = %s",
                     [state, at, error, nid])
