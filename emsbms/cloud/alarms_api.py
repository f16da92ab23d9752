"""The API's alarm routes: a site's active alarms and history, acknowledging one (a `cmd` to the edge), and
the organisation's webhooks. Added to the app by `api.create_app` through `register`."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path, Query
from psycopg import Connection
from pydantic import BaseModel, ConfigDict, Field

from emsbms.cloud.commands import Outcome, new_id, record, send
from emsbms.cloud.repository import ApiError

ORG = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the organisation")]
SITE = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the site")]
AUTH = Annotated[str | None, Header(description="Bearer <org token>")]
ALARMED = ("active", "clearing", "latched")
COLUMNS = "rule, device, state, severity, acked, value, text"
Tenant = Callable[[str, str | None], AbstractContextManager[Connection[Any]]]


class WebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://[^\s/?#]+[^\s]*$", max_length=2000,
                     description="where notifications are POSTed: an http:// or https:// URL")
    secret: str = Field(min_length=16, max_length=200, description="the HMAC-SHA256 key of X-Emsbms-Signature")


def _alarm(r: tuple[Any, ...]) -> dict[str, Any]:
    return {"id": f"{r[0]}/{r[1]}", "rule": r[0], "device": r[1], "state": r[2], "severity": r[3], "acked": r[4],
            "value": r[5], "text": r[6]}


def alarms(conn: Connection[Any], site: str, limit: int) -> dict[str, Any]:
    """The site's alarms in an alarmed state (active, clearing, latched) and its transitions, newest first."""
    active = conn.execute(f"SELECT {COLUMNS}, raised_us, changed_us FROM alarms WHERE site = %s AND state = ANY(%s)"
                          " ORDER BY raised_us DESC NULLS LAST, rule, device", [site, list(ALARMED)]).fetchall()
    history = conn.execute(f"SELECT {COLUMNS}, previous, timestamp_us FROM alarm_history WHERE site = %s"
                           " ORDER BY timestamp_us DESC, id DESC LIMIT %s", [site, limit]).fetchall()
    return {"active": [{**_alarm(r), "raised_us": r[7], "changed_us": r[8]} for r in active],
            "history": [{**_alarm(r), "previous": r[7], "timestamp_us": r[8]} for r in history]}


def register(app: FastAPI, prefix: str, service: Any, tenant: Tenant,
             site_of: Callable[[Connection[Any], str], None]) -> None:
    """Add the alarm and webhook routes under `prefix` (/api/v1/orgs/{org})."""

    @app.get(prefix + "/sites/{site}/alarms")
    def get_alarms(org: ORG, site: SITE, limit: Annotated[int, Query(ge=1, le=10000)] = 100,
                   authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            return alarms(conn, site, limit)

    @app.post(prefix + "/sites/{site}/alarms/{alarm_id:path}/ack")
    def ack(org: ORG, site: SITE, alarm_id: str, authorization: AUTH = None) -> dict[str, Any]:
        rule, _, device = alarm_id.partition("/")
        address = f"alarms/{rule}/{device}/Ack"
        command_id = new_id()
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            if conn.execute("SELECT 1 FROM alarms WHERE site = %s AND rule = %s AND device = %s",
                            [site, rule, device]).fetchone() is None:
                raise ApiError(404, "id", f"id: no alarm {alarm_id!r} (RULE/DEVICE) at site {site!r}")
            online = conn.execute("SELECT online FROM sites WHERE site = %s", [site]).fetchone()
            if not (online and online[0]):
                out = Outcome(command_id, "offline", f"site {site!r} is offline: nothing sent, nothing queued", None)
            else:
                out = Outcome(command_id, "sent", "waiting for the edge", None)
            record(conn, site, org, out, address, 1.0)
        if out.status == "sent":
            out = send(service.publish, service.waiters, f"ems/{org}/{site}/cmd", command_id, address, 1, 5.0)
            with tenant(org, authorization) as conn:
                record(conn, site, org, out, address, 1.0)
        return out.to_json()

    @app.post(prefix + "/webhooks")
    def add_webhook(org: ORG, body: WebhookBody, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            row: Any = conn.execute("INSERT INTO webhooks (org_id, url, secret, created_us) VALUES (%s, %s, %s, %s)"
                                    " RETURNING id, created_us", [org, body.url, body.secret,
                                                                  time.time_ns() // 1000]).fetchone()
        return {"id": row[0], "url": body.url, "created_us": row[1]}

    @app.get(prefix + "/webhooks")
    def webhooks(org: ORG, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            rows = conn.execute("SELECT id, url, created_us FROM webhooks ORDER BY id").fetchall()
        return {"webhooks": [{"id": r[0], "url": r[1], "created_us": r[2]} for r in rows]}

    @app.delete(prefix + "/webhooks/{webhook_id}")
    def delete_webhook(org: ORG, webhook_id: int, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            if conn.execute("DELETE FROM webhooks WHERE id = %s RETURNING id", [webhook_id]).fetchone() is None:
                raise ApiError(404, "webhook_id", f"webhook_id: no webhook {webhook_id} in this organisation")
        return {"deleted": webhook_id}
