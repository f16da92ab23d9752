"""The dashboard's own reads: a site's live channels as server-sent events, and its devices and channel metadata.

``GET /sites/{site}/live`` answers ``text/event-stream``. It authenticates like every route (the
Authorization header, checked before the stream starts: a wrong token is the same 404 as elsewhere), then
sends ``channels`` events (the readings that changed, shaped like ``GET /channels``) and ``site`` events
(online, last seen, config sync) whenever they change.

It polls the site's ``latest`` rows every `POLL_S` seconds inside the organisation's transaction rather than
hooking ingest's writes: ingest reads a shared subscription and may run in several processes, so a callback
in this process would miss what the others store; the database is the one place that has every write, and
row-level security keeps the poll inside the organisation. Each poll re-checks the token, so a rotated token
ends the stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

import anyio.to_thread
from fastapi import FastAPI, Header, Path
from fastapi.responses import StreamingResponse
from psycopg import Connection

from emsbms.cloud import queries
from emsbms.cloud.repository import config_state, desired_body

ORG = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the organisation")]
SITE = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the site")]
AUTH = Annotated[str | None, Header(description="Bearer <org token>")]
POLL_S = 0.5
KEEPALIVE_S = 15.0
Tenant = Callable[[str, str | None], AbstractContextManager[Connection[Any]]]


def devices(conn: Connection[Any], site: str) -> dict[str, Any]:
    """The site's devices and every channel's metadata (unit, kind, description, min, max) as its birth said,
    and the desired configuration as it was last PUT (None before the first)."""
    rows = conn.execute("SELECT name, bus, protocol, profile, version FROM devices WHERE site = %s ORDER BY name",
                        [site]).fetchall()
    info = conn.execute("SELECT address, unit, kind, description, min, max FROM channel_info WHERE site = %s"
                        " ORDER BY address", [site]).fetchall()
    return {"devices": [{"name": r[0], "bus": r[1], "protocol": r[2], "profile": r[3], "version": r[4]}
                        for r in rows],
            "channels": {r[0]: {"unit": r[1] or "", "kind": r[2], "description": r[3] or "", "min": r[4],
                                "max": r[5]} for r in info},
            "desired": desired_body(conn, site)}


def site_state(conn: Connection[Any], site: str) -> dict[str, Any] | None:
    """Online, last seen and config sync of the site (None: no such site in this organisation)."""
    row = conn.execute("SELECT online, last_seen_us FROM sites WHERE site = %s", [site]).fetchone()
    if row is None:
        return None
    return {"online": bool(row[0]), "last_seen_us": row[1], "config": config_state(conn, site)}


def event(name: str, data: object) -> str:
    """One server-sent event; the JSON holds no newline, so one `data:` line."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"


class Poll:
    """One poll of the site: what changed since the previous one."""

    def __init__(self, service: Any, org: str, token: str, site: str) -> None:
        self.service, self.org, self.token, self.site = service, org, token, site
        self.readings: dict[str, Any] = {}
        self.state: dict[str, Any] | None = None

    def __call__(self) -> list[str]:
        if not self.service.check_token(self.org, self.token):
            return [event("end", {"error": f"org: no organisation {self.org!r} with this token"})]
        with self.service.org(self.org) as conn:
            state = site_state(conn, self.site)
            readings = queries.channels(conn, self.site) if state is not None else {}
        if state is None:
            return [event("end", {"error": f"site: no site {self.site!r} in this organisation"})]
        out = []
        changed = {a: r for a, r in readings.items() if self.readings.get(a) != r}
        self.readings = readings
        if changed:
            out.append(event("channels", changed))
        if state != self.state:
            self.state = state
            out.append(event("site", state))
        return out


async def stream(poll: Poll, interval: float = POLL_S) -> AsyncIterator[str]:
    """Events until the client goes away (the response is then cancelled) or `poll` ends the stream."""
    yield "retry: 2000\n\n"
    quiet = 0.0
    while True:
        events = await anyio.to_thread.run_sync(poll)
        for e in events:
            yield e
        if any(e.startswith("event: end") for e in events):
            return
        if events:
            quiet = 0.0
        elif quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(interval)
        quiet += interval


def register(app: FastAPI, prefix: str, service: Any, tenant: Tenant,
             site_of: Callable[[Connection[Any], str], None]) -> None:
    """Add `GET /sites/{site}/live` and `GET /sites/{site}/devices` under `prefix` (/api/v1/orgs/{org})."""

    @app.get(prefix + "/sites/{site}/live", response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {}},
                              "description": "events `channels` (changed readings), `site` (online, last seen,"
                                             " config sync) and `end` (the token or the site is gone)"}})
    def live(org: ORG, site: SITE, authorization: AUTH = None) -> StreamingResponse:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
        token = (authorization or "").partition(" ")[2].strip()
        return StreamingResponse(stream(Poll(service, org, token, site)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get(prefix + "/sites/{site}/devices")
    def site_devices(org: ORG, site: SITE, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            return devices(conn, site)
