"""The HTTP API under /api/v1/orgs/{org}: sites, channels, series, commands, profiles, configuration, events.

Every request names its organisation in the path and carries ``Authorization: Bearer <org token>``.
The transaction runs with ``app.org_id`` set to that organisation (row-level security), and the
token's hash must match: an unknown organisation and a wrong token are the same 404. Every refusal is
a 4xx whose JSON names the field, what was expected and what was found; a database or broker outage
is a 503.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Protocol

import psycopg
import psycopg_pool
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import Connection
from pydantic import BaseModel, ConfigDict, Field

from emsbms.cloud import alarms_api, live, overrides_api, queries, web
from emsbms.cloud.commands import Outcome, Waiters, cloud_check, new_id, record, send
from emsbms.cloud.publisher import PublishError
from emsbms.cloud.repository import ApiError, Version, add_profile, config_state, dumps, put_config, validate_profile

log = logging.getLogger(__name__)

ORG = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the organisation")]
SITE = Annotated[str, Path(pattern=r"^[^/+#]+$", description="the site")]
AUTH = Annotated[str | None, Header(description="Bearer <org token>")]


class Service(Protocol):
    """What the API needs of the running service."""

    waiters: Waiters
    shipped: list[Version]

    def org(self, org: str) -> Any: ...  # a context manager yielding a connection with app.org_id set

    def check_token(self, org: str, token: str) -> bool: ...

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None: ...

    def add_site(self, org: str, site: str) -> tuple[str, str]: ...


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SiteBody(_Body):
    site: str = Field(pattern=r"^[^/+#]+$", min_length=1, description="the site's name: one MQTT topic level")


class CommandBody(_Body):
    address: str = Field(pattern=r"^[^/]+/.+$", description="DEVICE/CHANNEL, a command channel")
    value: float = Field(strict=True, description="a number (not a string, not a boolean)")
    timeout_s: float = Field(5.0, gt=0, le=3600, description="the deadline: now + timeout_s")


class ProfileBody(_Body):
    profile: dict[str, Any] = Field(description="the profile JSON (docs/profile.schema.json)")
    files: dict[str, str] = Field(default_factory=dict, description="the DBC or EDS text, by file name")


class ConfigBody(_Body):
    buses: list[dict[str, Any]] = Field(description="[[bus]] tables of a site file")
    devices: list[dict[str, Any]] = Field(description="[[device]] tables; `profile` a name, `version` optional")
    rules: list[dict[str, Any]] = Field(default_factory=list, description="stored with the configuration")


def _found(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        field = ".".join(loc[1:]) if loc and loc[0] in ("body", "path", "query", "header") else ".".join(loc)
        if e["type"] == "json_invalid":
            why = e.get("ctx", {}).get("error", "")
            field, expected, found = "body", "a JSON object", f"text that is not JSON ({why})"
        elif e["type"] == "missing":
            field, expected, found = field or "body", "this field", "nothing"
        elif e["type"] == "extra_forbidden":
            expected, found = "no such key (it is not part of this body)", _found(e.get("input"))
        else:
            expected, found = e["msg"].removeprefix("Input should be "), _found(e.get("input"))
        errors.append({"field": field or "body", "expected": expected, "found": found})
    text = "; ".join(f"{x['field']}: expected {x['expected']}, found {x['found']}" for x in errors)
    return JSONResponse({"error": text, "field": errors[0]["field"], "errors": errors}, status_code=422)


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)


def _outage(request: Request, exc: Exception) -> JSONResponse:
    log.warning("%s %s: %s", request.method, request.url.path, exc)
    what = "the broker" if isinstance(exc, PublishError) else "the database"
    return JSONResponse({"error": f"{what} is unavailable: {exc}", "field": None}, status_code=503)


def _bug(request: Request, exc: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"error": f"internal error: {type(exc).__name__}", "field": None}, status_code=500)


def create_app(service: Service) -> FastAPI:
    """The FastAPI application over `service`."""
    app = FastAPI(title="emsbms cloud", version="1", description=__doc__)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(ApiError, _api_error)
    for outage in (psycopg.OperationalError, psycopg_pool.PoolTimeout, PublishError):
        app.add_exception_handler(outage, _outage)
    app.add_exception_handler(Exception, _bug)

    @contextmanager
    def tenant(org: str, authorization: str | None) -> Iterator[Connection[Any]]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "Authorization", "Authorization: expected 'Bearer <org token>', found"
                                                 f" {'nothing' if not authorization else scheme + ' ...'}")
        if not service.check_token(org, token.strip()):
            raise ApiError(404, "org", f"org: no organisation {org!r} with this token")
        with service.org(org) as conn:
            yield conn

    def site_of(conn: Connection[Any], site: str) -> None:
        if conn.execute("SELECT 1 FROM sites WHERE site = %s", [site]).fetchone() is None:
            raise ApiError(404, "site", f"site: no site {site!r} in this organisation")

    prefix = "/api/v1/orgs/{org}"

    @app.post(prefix + "/sites")
    def add_site(org: ORG, body: SiteBody, authorization: AUTH = None) -> dict[str, str]:
        with tenant(org, authorization) as conn:
            if conn.execute("SELECT 1 FROM sites WHERE site = %s", [body.site]).fetchone() is not None:
                raise ApiError(409, "site", f"site: expected a new site name, found {body.site!r} (it exists)")
            # the row first: a broker refusal rolls it back, and a stored site never lacks its broker client
            conn.execute("INSERT INTO sites (org_id, site) VALUES (%s, %s)", [org, body.site])
            username, password = service.add_site(org, body.site)
            conn.execute("UPDATE sites SET username = %s WHERE site = %s", [username, body.site])
        return {"username": username, "password": password}

    @app.get(prefix + "/sites")
    def sites(org: ORG, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            return {"sites": queries.sites(conn)}

    @app.get(prefix + "/sites/{site}/channels")
    def channels(org: ORG, site: SITE, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            return queries.channels(conn, site)

    @app.get(prefix + "/sites/{site}/series")
    def series(org: ORG, site: SITE, address: Annotated[str, Query(min_length=1)],
               from_: Annotated[str, Query(alias="from", description="ISO 8601")],
               to: Annotated[str, Query(description="ISO 8601")],
               bucket: Annotated[str | None, Query(description="like 1m, 10s, 1h; none: raw")] = None,
               authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            return queries.series(conn, site, address, from_, to, bucket)

    @app.get(prefix + "/sites/{site}/events")
    def events(org: ORG, site: SITE, limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
               authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            return {"events": queries.events(conn, site, limit)}

    @app.post(prefix + "/sites/{site}/commands")
    def command(org: ORG, site: SITE, body: CommandBody, authorization: AUTH = None) -> dict[str, Any]:
        value = float(body.value)
        command_id = new_id()
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            online = conn.execute("SELECT online FROM sites WHERE site = %s", [site]).fetchone()
            refused = cloud_check(conn, site, body.address, value, service.shipped)
            if refused is not None:
                out = Outcome(command_id, "rejected", f"cloud: {refused}", None)
            elif not (online and online[0]):
                out = Outcome(command_id, "offline", f"site {site!r} is offline: nothing sent, nothing queued", None)
            else:
                out = Outcome(command_id, "sent", "waiting for the edge", None)
            record(conn, site, org, out, body.address, value)
        if out.status == "sent":
            out = send(service.publish, service.waiters, f"ems/{org}/{site}/cmd", command_id, body.address, value,
                       body.timeout_s)
            with tenant(org, authorization) as conn:
                record(conn, site, org, out, body.address, value)
        return out.to_json()

    @app.post(prefix + "/profiles")
    def profile(org: ORG, body: ProfileBody, authorization: AUTH = None) -> dict[str, str]:
        with tenant(org, authorization) as conn:
            p = validate_profile(body.profile, body.files)
            v = add_profile(conn, org, p, service.shipped)
        return {"name": v.name, "version": v.version, "hash": v.hash}

    @app.put(prefix + "/sites/{site}/config")
    def put(org: ORG, site: SITE, body: ConfigBody, authorization: AUTH = None) -> dict[str, int]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            version, payload = put_config(conn, org, site, body.model_dump(), service.shipped)
            # published inside the transaction: a refused publish stores nothing
            service.publish(f"ems/{org}/{site}/config", dumps(payload), retain=True)
        return {"version": version}

    @app.get(prefix + "/sites/{site}/config")
    def get_config(org: ORG, site: SITE, authorization: AUTH = None) -> dict[str, Any]:
        with tenant(org, authorization) as conn:
            site_of(conn, site)
            return config_state(conn, site)

    alarms_api.register(app, prefix, service, tenant, site_of)
    overrides_api.register(app, prefix, service, tenant, site_of)
    live.register(app, prefix, service, tenant, site_of)
    web.mount(app)
    return app


def openapi_text() -> str:
    """The OpenAPI document of the API, as docs/openapi.json holds it (`python -m emsbms.cloud.api`)."""
    return json.dumps(create_app(None).openapi(), indent=2, ensure_ascii=False) + "\n"  # type: ignore[arg-type]


if __name__ == "__main__":
    print(openapi_text(), end="")
