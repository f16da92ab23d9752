"""Ingest: every edge's uplink messages from the broker into PostgreSQL.

    ingest = Ingest(Database(url), "mqtt://127.0.0.1:1883", "ingest", "secret", client_id="ingest-1")
    ingest.start(); ...; ingest.stop()

paho-mqtt 2.x with a persistent session (clean_session=False, a fixed client id) on one shared
subscription per topic (`$share/{group}/ems/+/+/telemetry`, ...) at QoS 1, so several processes
split the load and the broker keeps what a stopped process did not acknowledge. Acknowledgement is
manual: a message is acknowledged only after the transaction holding it committed (a malformed one,
refused and counted, too). Messages are collected up to `batch_size` or `batch_ms`, then written per
organisation in one transaction (ingest_store.py). While PostgreSQL is away the batch is kept,
unacknowledged, and retried every `retry_s`. Sequence gaps become `data_loss` events (ingest_gaps.py).
"""

from __future__ import annotations

import logging
import queue
import signal
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.cloud.database import Database
from emsbms.cloud.ingest_parse import CommandResult, ConfigStatus, Kind, PayloadError, Record, parse_message
from emsbms.cloud.ingest_store import StreamKey, known_sites, scan_gaps, write_records
from emsbms.errors import ConfigError

log = logging.getLogger(__name__)
TOPICS = tuple(k.value for k in Kind)


@dataclass
class Received:
    """One message as it arrived: its connection generation (an ack belongs to its connection)."""

    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_us: int


def subscriptions(group: str) -> list[str]:
    return [f"$share/{group}/ems/+/+/{kind}" for kind in TOPICS]


def now_us() -> int:
    return time.time_ns() // 1000


class Ingest:
    """Broker to database; counters: received, written_samples, duplicates, rejected, unknown, gaps."""

    def __init__(self, database: Database, broker_url: str, username: str, password: str, group: str = "ingest",
                 client_id: str | None = None, batch_size: int = 1000, batch_ms: float = 50.0,
                 gap_grace_s: float = 30.0, retry_s: float = 1.0,
                 on_command_result: Callable[[CommandResult], None] | None = None,
                 on_config_status: Callable[[ConfigStatus], None] | None = None) -> None:
        parts = urlsplit(broker_url)
        if parts.scheme != "mqtt" or not parts.hostname:
            raise ConfigError(f"ingest --broker: expected mqtt://host[:port], found {broker_url!r}")
        self.host, self.port = parts.hostname, parts.port or 1883
        self.database = database
        self.group = group
        self.client_id = client_id or f"emsbms-{group}-{socket.gethostname()}"
        self.batch_size, self.batch_s, self.grace_us = batch_size, batch_ms / 1000, int(gap_grace_s * 1e6)
        self.retry_s = retry_s
        self.on_command_result, self.on_config_status = on_command_result, on_config_status
        self.received = self.written_samples = self.duplicates = self.rejected = self.unknown = self.gaps = 0
        self.subscribed = threading.Event()
        self._generation = 0
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._stopping = threading.Event()
        self._unknown_logged: set[tuple[str, str]] = set()
        self._done: set[int] = set()
        self._open_streams: dict[str, set[StreamKey]] = defaultdict(set)
        self._worker: threading.Thread | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311,
                                  clean_session=False, manual_ack=True)
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=8)
        self.client.on_socket_open = _nodelay
        self.client.on_connect = self._connected
        self.client.on_subscribe = self._subscribed
        self.client.on_message = self._message

    def start(self) -> None:
        """Connect in the background (paho retries while the broker is away) and start the writer."""
        self._worker = threading.Thread(target=self._run, name="ingest-writer", daemon=True)
        self._worker.start()
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()

    def stop(self) -> None:
        """Write what was received, acknowledge it, and disconnect (what stays unwritten stays unacked)."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout=60)
        self.client.disconnect()
        self.client.loop_stop()

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            log.warning("ingest: the broker %s:%s refused the connection: %s", self.host, self.port, reason)
            return
        self._generation += 1  # acks of messages from an older connection are not sent: they come again
        client.subscribe([(t, 1) for t in subscriptions(self.group)])

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], properties: Any) -> None:
        refused = [t for t, r in zip(subscriptions(self.group), reasons, strict=False) if r.is_failure]
        if refused:
            log.error("ingest: the broker refused the subscriptions %s (does the user may read ems/#?)", refused)
        else:
            log.info("ingest %s: subscribed to %s", self.client_id, ", ".join(subscriptions(self.group)))
            self.subscribed.set()

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received += 1
        self._inbox.put(Received(self._generation, message.mid, message.qos, message.topic, bytes(message.payload),
                                 now_us()))

    def _ack(self, items: list[Received]) -> None:
        """Mark `items` done; `process` sends their PUBACKs at its end, in arrival order (MQTT 3.1.1 4.6)."""
        self._done.update(id(m) for m in items)

    def _send_acks(self, items: list[Received]) -> None:
        for m in items:
            if id(m) in self._done and m.qos > 0 and m.generation == self._generation:
                self.client.ack(m.mid, m.qos)  # a message of an older connection comes again: not acked
        self._done.clear()

    def _run(self) -> None:
        pending: list[Received] = []
        next_scan = time.monotonic()
        while True:
            stopping = self._stopping.is_set()
            deadline = time.monotonic() + self.batch_s
            while len(pending) < self.batch_size and not stopping:
                try:
                    pending.append(self._inbox.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            while len(pending) < self.batch_size:  # whatever is waiting already
                try:
                    pending.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            if pending:
                pending = self.process(pending)
            if time.monotonic() >= next_scan:
                self.scan(now_us())
                next_scan = time.monotonic() + min(1.0, self.grace_us / 2e6)
            if stopping and (pending or self._inbox.empty()):
                return
            if pending:  # the database is away: keep them, unacknowledged, and try again
                self._stopping.wait(self.retry_s)

    def process(self, items: list[Received]) -> list[Received]:
        """Write `items`; the ones that must wait for the database (the others are acknowledged)."""
        by_org: dict[str, list[tuple[Received, Record]]] = defaultdict(list)
        refused: list[Received] = []
        for m in items:
            try:
                record = parse_message(m.topic, m.payload, m.received_us)
            except PayloadError as exc:
                self.rejected += 1
                log.warning("ingest: refused %s", exc)
                refused.append(m)
                continue
            by_org[record.org].append((m, record))
        self._ack(refused)
        waiting: list[Received] = []
        for org, pairs in by_org.items():
            try:
                self._write_org(org, pairs)
            except psycopg.OperationalError as exc:
                log.warning("ingest: the database is away (%s); %d messages wait unacknowledged", exc, len(pairs))
                waiting.extend(m for m, _ in pairs)
            except psycopg.Error as exc:
                if len(pairs) > 1:  # find the one the database refuses: write them one at a time
                    waiting.extend(self._one_by_one(org, pairs))
                else:
                    self.rejected += 1
                    log.warning("ingest: the database refused %s: %s", pairs[0][0].topic, exc)
                    self._ack([pairs[0][0]])
        self._send_acks(items)
        return waiting

    def _one_by_one(self, org: str, pairs: list[tuple[Received, Record]]) -> list[Received]:
        waiting = []
        for pair in pairs:
            try:
                self._write_org(org, [pair])
            except psycopg.OperationalError:
                waiting.append(pair[0])
            except psycopg.Error as exc:
                self.rejected += 1
                log.warning("ingest: the database refused %s: %s", pair[0].topic, exc)
                self._ack([pair[0]])
        return waiting

    def _write_org(self, org: str, pairs: list[tuple[Received, Record]]) -> None:
        with self.database.org(org) as conn:
            known = known_sites(conn, {r.site for _, r in pairs})
            stored = [(r, m.received_us) for m, r in pairs if r.site in known]
            written = write_records(conn, org, stored)
        for _, r in pairs:
            if r.site not in known:
                self.unknown += 1
                if (org, r.site) not in self._unknown_logged:
                    self._unknown_logged.add((org, r.site))
                    log.warning("ingest: no site %r of organisation %r: its messages are dropped", r.site, org)
        self.written_samples += written.samples
        self.duplicates += written.duplicates
        self._open_streams[org].update(written.new_streams)
        self._ack([m for m, _ in pairs])
        for _, r in pairs:
            self._hand_over(r)

    def _hand_over(self, record: Record) -> None:
        try:
            if isinstance(record, CommandResult) and self.on_command_result is not None:
                self.on_command_result(record)
            elif isinstance(record, ConfigStatus) and self.on_config_status is not None:
                self.on_config_status(record)
        except Exception:  # a callback's bug must not stop ingest
            log.exception("ingest: the %s callback failed", type(record).__name__)

    def scan(self, now: int) -> None:
        """Settle the gaps of the streams written to since their last settled seq."""
        for org, keys in list(self._open_streams.items()):
            for key in sorted(keys):
                try:
                    with self.database.org(org) as conn:
                        gaps, remaining = scan_gaps(conn, org, key, now, self.grace_us)
                except psycopg.Error as exc:
                    log.warning("ingest: gap scan of %s/%s failed: %s", org, key, exc)
                    return
                self.gaps += len(gaps)
                for gap in gaps:
                    log.warning("ingest: data loss %s/%s %s session %s seq %d..%d", org, key[0], key[1], key[2],
                                gap.from_seq, gap.to_seq)
                if not remaining:
                    keys.discard(key)


def _nodelay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY (paho never sets it): acknowledgements leave at once."""
    raw = getattr(sock, "_sock", None) or sock
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def broker_login(broker_url: str) -> tuple[str, str, str]:
    """`mqtt://user:password@host:port` into (URL without the login, user, password); ConfigError without one."""
    parts = urlsplit(broker_url)
    if parts.scheme != "mqtt" or not parts.hostname or parts.username is None or parts.password is None:
        raise ConfigError(f"--broker: expected mqtt://user:password@host[:port], found {parts.scheme}://"
                          f"{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}"
                          f"{' without a user and password' if parts.password is None else ''}")
    return f"mqtt://{parts.hostname}:{parts.port or 1883}", unquote(parts.username), unquote(parts.password)


def run_ingest(database_url: str, broker_url: str, group: str = "ingest", client_id: str | None = None,
               stop: threading.Event | None = None, report: Callable[[str], None] = log.warning,
               **options: Any) -> Ingest:
    """Run one ingest process (`broker_url` with its login) until `stop` is set, or SIGTERM/SIGINT when
    called from the main thread; then write and acknowledge what was received. `report` gets a line
    once subscribed and one with the counters at the end."""
    url, username, password = broker_login(broker_url)
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    database = Database(database_url)
    ingest = Ingest(database, url, username, password, group=group, client_id=client_id, **options)
    ingest.start()
    try:
        while not stop.wait(0.1):
            if ingest.subscribed.is_set():
                report(f"ingest {ingest.client_id}: subscribed to {', '.join(subscriptions(group))}")
                break
        stop.wait()
    finally:
        ingest.stop()
        database.close()
        report(f"ingest {ingest.client_id}: received {ingest.received}, samples written {ingest.written_samples},"
               f" duplicates {ingest.duplicates}, refused {ingest.rejected}, unknown site {ingest.unknown},"
               f" gaps {ingest.gaps}")
    return ingest
