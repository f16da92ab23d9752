"""Ingest's writes for the `alarms` topic: the current state of each alarm, its history, and the
notifications of raises and clears queued for the organisation's webhooks (grouped: notify.py).

Called inside ingest's transaction (`Database.org`) with the new batches only (redeliveries were dropped
by the `batches` dedupe), so a transition is stored and notified once.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from emsbms.cloud.ingest_records import AlarmRow, Batch
from emsbms.cloud.notify import WINDOW_US, group_due, notify_event, notify_lock, open_since

Conn = psycopg.Connection[Any]

UPSERT = (
    "INSERT INTO alarms AS a (org_id, site, rule, device, state, severity, acked, value, text, raised_us, changed_us)"
    " VALUES (%(org)s, %(site)s, %(rule)s, %(device)s, %(state)s, %(severity)s, %(acked)s, %(value)s, %(text)s,"
    " CASE WHEN %(state)s = 'active' THEN %(ts)s::bigint END, %(ts)s)"
    " ON CONFLICT (org_id, site, rule, device) DO UPDATE SET state = excluded.state, severity = excluded.severity,"
    " acked = excluded.acked, value = excluded.value, text = excluded.text, changed_us = excluded.changed_us,"
    " raised_us = CASE WHEN excluded.state = 'active' AND a.state NOT IN ('active', 'clearing', 'latched')"
    "   THEN excluded.changed_us ELSE a.raised_us END"
    " WHERE excluded.changed_us >= a.changed_us")
HISTORY = (
    "INSERT INTO alarm_history (org_id, site, rule, device, state, previous, severity, acked, value, text,"
    " timestamp_us, session, seq) VALUES (%(org)s, %(site)s, %(rule)s, %(device)s, %(state)s, %(previous)s,"
    " %(severity)s, %(acked)s, %(value)s, %(text)s, %(ts)s, %(session)s, %(seq)s)")
APPEND = (
    "UPDATE notifications SET body = jsonb_set(body, '{alarms}', (body -> 'alarms') || %(more)s)"
    " WHERE id = (SELECT id FROM notifications WHERE webhook_id = %(hook)s AND site = %(site)s AND state = 'pending'"
    "   AND attempts = 0 AND created_us > %(since)s ORDER BY id DESC LIMIT 1 FOR UPDATE) AND attempts = 0"
    " RETURNING id")


def transition_json(a: AlarmRow, event: str) -> dict[str, Any]:
    return {"id": f"{a.rule}/{a.device}", "rule": a.rule, "device": a.device, "event": event, "state": a.state,
            "previous": a.previous, "severity": a.severity, "acked": a.acked, "value": a.value,
            "timestamp_us": a.timestamp_us, "text": a.text}


def write_alarms(conn: Conn, org: str, batches: list[Batch], at_us: int, window_us: int = WINDOW_US) -> int:
    """Store the alarms of new batches (in seq order) and queue their raises and clears; the number queued."""
    notify: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for b in sorted(batches, key=lambda b: (b.site, b.session, b.seq)):
        for a in b.alarms:
            rows.append({"org": org, "site": b.site, "rule": a.rule, "device": a.device, "state": a.state,
                         "previous": a.previous, "severity": a.severity, "acked": a.acked, "value": a.value,
                         "text": a.text, "ts": a.timestamp_us, "session": b.session, "seq": b.seq})
            event = notify_event(a.previous, a.state)
            if event is not None:
                notify.setdefault(b.site, []).append(transition_json(a, event))
    with conn.cursor() as cur:
        cur.executemany(UPSERT, rows)
        cur.executemany(HISTORY, rows)
    if not notify:
        return 0
    hooks = [int(r[0]) for r in conn.execute("SELECT id FROM webhooks ORDER BY id").fetchall()]
    if not hooks:
        return 0
    notify_lock(conn, org)
    for site, transitions in notify.items():
        for hook in hooks:
            appended = conn.execute(APPEND, {"more": Jsonb(transitions), "hook": hook, "site": site,
                                             "since": open_since(at_us, window_us)}).fetchone()
            if appended is None:
                conn.execute("INSERT INTO notifications (org_id, webhook_id, site, body, next_attempt_us, created_us)"
                             " VALUES (%s, %s, %s, %s, %s, %s)",
                             [org, hook, site, Jsonb({"org": org, "site": site, "alarms": transitions}),
                              group_due(at_us, window_us), at_us])
    conn.execute("INSERT INTO notify_due (org_id, due_us) VALUES (%s, %s) ON CONFLICT (org_id)"
                 " DO UPDATE SET due_us = least(notify_due.due_us, excluded.due_us)",
                 [org, group_due(at_us, window_us)])
    return sum(len(t) for t in notify.values())
