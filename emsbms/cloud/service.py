"""`emsbms cloud serve`: the database (migrated, pooled), the MQTT publisher, ingest and the HTTP API in one process.

`CloudService` is what the API needs: per-organisation transactions, token checks, publishing, site
credentials, and the futures of commands in flight (fed by the publisher's own `cmd/result`
subscription). `HttpServer` runs uvicorn on a thread (the CLI and the tests use it alike).
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from contextlib import AbstractContextManager
from typing import Any

import uvicorn
from psycopg import Connection

from emsbms.cloud import database
from emsbms.cloud.api import create_app
from emsbms.cloud.broker_admin import BrokerAdmin, BrokerAdminError
from emsbms.cloud.commands import Waiters
from emsbms.cloud.ingest import Ingest, broker_login
from emsbms.cloud.notify import Notifier
from emsbms.cloud.publisher import Publisher
from emsbms.cloud.repository import ApiError, shipped_profiles
from emsbms.errors import ConfigError, EmsbmsError

log = logging.getLogger(__name__)


class SiteAdmin:
    """What `POST /sites` needs of the broker: `add_site(org, site) -> (username, password)`."""

    def add_site(self, org: str, site: str) -> tuple[str, str]:
        raise ApiError(503, "site", "site: this broker has no dynamic security plugin; its users and ACLs are"
                                    " static: add the site's edge user to its password and ACL files")


class CloudService:
    """The database, the broker connection and the command futures behind the API."""

    def __init__(self, db: database.Database, broker_url: str, admin: Any = None) -> None:
        self.db = db
        self.admin = admin if admin is not None else SiteAdmin()
        self.shipped = shipped_profiles()
        self.waiters = Waiters()
        self.publisher = Publisher(broker_url, self._result)
        self.notifier = Notifier(db)

    def start(self) -> None:
        self.publisher.start()
        self.notifier.start()

    def stop(self) -> None:
        self.notifier.stop()
        self.publisher.stop()

    def org(self, org: str) -> AbstractContextManager[Connection[Any]]:
        return self.db.org(org)

    def check_token(self, org: str, token: str) -> bool:
        return database.check_token(self.db, org, token)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.publisher.publish(topic, payload, retain=retain)

    def add_site(self, org: str, site: str) -> tuple[str, str]:
        username, password = self.admin.add_site(org, site)
        return str(username), str(password)

    def _result(self, org: str, site: str, payload: bytes) -> None:
        self.waiters.feed(payload)


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen: expected HOST:PORT like 127.0.0.1:8080, found {text!r}")
    return host, int(port)


class HttpServer:
    """uvicorn serving `create_app(service)` on a thread of its own."""

    def __init__(self, service: CloudService, host: str, port: int) -> None:
        # a live stream (GET .../live) never ends by itself: stopping cancels what still runs after 2 s
        config = uvicorn.Config(create_app(service), host=host, port=port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="emsbms-cloud-http", daemon=True)
        self.url = f"http://{host}:{port}"

    def start(self, timeout: float = 20.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise EmsbmsError(f"--listen: the HTTP server did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


def broker_admin(url: str, username: str, password: str) -> BrokerAdmin | None:
    """The dynamic security admin with the service role ensured, or None for a broker without the plugin
    (static password and ACL files: sites are then added to those files by hand)."""
    try:
        admin = BrokerAdmin(url, username, password, timeout=3.0)
    except BrokerAdminError as e:
        log.warning("broker admin: %s", e)
        return None
    try:
        admin.command("getDefaultACLAccess")
    except BrokerAdminError as e:
        admin.close()
        log.warning("the broker has no dynamic security plugin (%s): static users and ACLs; POST /sites answers"
                    " 503", e)
        return None
    admin.ensure_service_role(username)
    return admin


def serve(database_url: str, broker_url: str, listen: str, stop: threading.Event | None = None) -> None:
    """Migrate, then run the publisher, ingest and the HTTP API until `stop` (or SIGTERM/SIGINT)."""
    host, port = parse_listen(listen)
    url, username, password = broker_login(broker_url)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    database.migrate(database_url)
    db = database.Database(database_url)
    admin = broker_admin(url, username, password)
    service = CloudService(db, broker_url, admin)
    ingest = Ingest(db, url, username, password, client_id=f"emsbms-serve-{socket.gethostname()}-{port}")
    http = HttpServer(service, host, port)
    try:
        service.start()
        ingest.start()
        http.start()
        tenancy = "dynamic security (POST /sites makes edge credentials)" if admin is not None else "static users"
        print(f"cloud: API on {http.url}/api/v1 (OpenAPI at {http.url}/docs); broker {url} as {username!r},"
              f" {tenancy}; ingest on $share/ingest/ems/+/+/...; Ctrl-C stops", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        http.stop()
        ingest.stop()
        service.stop()
        if admin is not None:
            admin.close()
        db.close()
