"""The API's override routes: a site's active manual overrides (as its edge reports them in the text channel
`core/OverrideList`, stored in `latest` by ingest) and cancelling one (a `cmd` to the edge with the address
`core/overrides/<address>/Cancel`, answered like a command). Added to the app by `api.create_app` through
`register`."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Path
from psycopg import Connection

from emsbms.cloud.commands import Outcome, new_id, record, send
from emsbms.cloud.repository import ApiError

ORG = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the organisation")]
SITE = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the site")]
AUTH = Annotated[str | None, Header(description="Bearer <org token>")]
LIST_CHANNEL = "core/OverrideList"
ADDRESS = re.compile(r"^[^/+#\s]+/[^+#\s]+$")
Tenant = Callable[[str, str | None], AbstractContextManager[Connection[Any]]]


def cancel_address(address: str) -> str:
    """The command address the edge's core takes as the cancel of `address`'s override."""
    return f"core/overrides/{address}/Cancel"


def reported(conn: Connection[Any], site: str, now_us: int) -> dict[str, Any]:
    """The overrides the site's edge reported last, without those expired since (`now_us`)."""
    row = conn.execute("SELECT text_value, timestamp_us FROM latest WHERE site = %s AND address = %s",
                       [site, LIST_CHANNEL]).fetchone()
    if row is None or row[0] is None:
        return {"overrides": [], "reported_us": None}
    try:
        items = json.loads(row[0])
    except ValueError:
        items = None
    if not isinstance(items, list):
        raise ApiError(502, LIST_CHANNEL, f"{LIST_CHANNEL}: expected a JSON list from the edge, found"
                                          f" {str(row[0])[:80]!r}")
    active = [o for o in items if isinstance(o, dict) and isinstance(o.get("expires_us"), int)
              and o["expires_us"] > now_us]
    return {"overrides": active, "reported_us": row[1]}


def register(app: FastAPI, prefix: str, service: Any, tenant: Tenant,
             site_of: Callable[[Connection[Any], str], None]) -> None:
    """Add the override routes under `prefix` (/api/v1/orgs/{org})."""

    @app.get(prefix + "/sites/{site}/overrides")
    def get_overrides(org: ORG, site: SITE, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            return reported(conn, site, time.time_ns() // 1000)

    @app.delete(prefix + "/sites/{site}/overrides/{address:path}")
    def cancel(org: ORG, site: SITE, address: str, authorization: AUTH = None) -> dict[str, Any]:
        if not ADDRESS.match(address):
            raise ApiError(422, "address", f"address: expected DEVICE/CHANNEL, found {address!r}")
        command = cancel_address(address)
        command_id = new_id()
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            listed = [o.get("address") for o in reported(conn, site, time.time_ns() // 1000)["overrides"]]
            if address not in listed:
                raise ApiError(404, "address", f"address: no active override of {address!r} reported by site"
                                               f" {site!r} (active: {', '.join(map(str, listed)) or 'none'})")
            online = conn.execute("SELECT online FROM sites WHERE site = %s", [site]).fetchone()
            if not (online and online[0]):
                out = Outcome(command_id, "offline", f"site {site!r} is offline: nothing sent, nothing queued", None)
            else:
                out = Outcome(command_id, "sent", "waiting for the edge", None)
            record(conn, site, org, out, command, 1.0)
        if out.status == "sent":
            out = send(service.publish, service.waiters, f"ems/{org}/{site}/cmd", command_id, command, 1, 5.0)
            with tenant(org, authorization) as conn:
                record(conn, site, org, out, command, 1.0)
        return out.to_json()
