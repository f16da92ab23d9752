"""The MQTT transport: one paho-mqtt 2.x client per edge, draining the outbox with QoS 1.

`Uplink` connects to the site's `[uplink]` broker (mqtt:// or mqtts://) with the edge's credentials
and TCP_NODELAY on its socket. Its will is `offline`, retained, on `ems/{org}/{site}/state`; on
connect it publishes `online` there, retained, and a clean stop publishes `offline` itself before it
disconnects. While the broker is away paho's loop thread reconnects with a bounded backoff and the
edge runs on. A publisher thread sends the outbox's oldest rows with QoS 1, never more than
`max_inflight` at once, and deletes a row only after its PUBACK. `cmd` and `config` messages go to
the `on_command` / `on_config` hooks. The uplink's counters are channels in the edge registry.

`Feed` carries registry updates to the outbox: a subscription puts them on a bounded queue (a full
queue drops and counts, never blocks the receive path) and a writer thread hands them to a sink.
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Protocol
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from emsbms.edge.registry import Registry, Subscription
from emsbms.site.model import UplinkConfig
from emsbms.types import ChannelInfo, ChannelKind, Quality, Reading, Sample

log = logging.getLogger(__name__)

ONLINE = b"online"
OFFLINE = b"offline"


class UplinkState(StrEnum):
    """Where the link to the broker stands (the value of `uplink/State`)."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # the broker is away: reconnecting, the outbox keeps everything


CHANNELS = (
    ChannelInfo("uplink/State", kind=ChannelKind.STATE, description="link to the broker"),
    ChannelInfo("uplink/Queued", description="outbox rows waiting for the broker's PUBACK"),
    ChannelInfo("uplink/Published", description="outbox rows acknowledged by the broker since start"),
    ChannelInfo("uplink/Dropped", description="updates dropped: the feed queue was full or the outbox over quota"),
    ChannelInfo("uplink/OldestQueuedAge", unit="s", description="age of the oldest outbox row"),
    ChannelInfo("uplink/RoundTrip", unit="ms", description="last publish to PUBACK time"),
)


class OutboxRow(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def payload(self) -> bytes: ...


class OutboxLike(Protocol):
    """What the uplink needs of the outbox (emsbms/uplink/outbox.py)."""

    def pending(self, limit: int) -> Sequence[Any]: ...
    def done(self, row_id: int) -> None: ...


def topic_root(org: str, site: str) -> str:
    return f"ems/{org}/{site}/"


class Uplink:
    """The edge's MQTT client (see the module docstring)."""

    def __init__(
        self,
        config: UplinkConfig,
        org: str,
        site: str,
        outbox: OutboxLike | None = None,
        registry: Registry | None = None,
        on_command: Callable[[bytes], None] | None = None,
        on_config: Callable[[bytes], None] | None = None,
        on_connect: Callable[[], None] | None = None,
        max_inflight: int = 100,
        counters: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.config = config
        self.root = topic_root(org, site)
        self.outbox = outbox
        self.registry = registry
        self.on_command = on_command
        self.on_config = on_config
        self.on_connected = on_connect
        self.max_inflight = max_inflight
        self.counters = counters  # extra counters for the channels (e.g. Queued, Dropped from the outbox)
        self.state = UplinkState.STOPPED
        self.published = 0
        self.round_trip_ms: float | None = None
        self._cond = threading.Condition()
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (row id, sent at)
        self._acked: list[int] = []  # mids acknowledged, to be deleted by the publisher thread
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client = self._client()
        if registry is not None:
            registry.declare(CHANNELS)

    # -- the paho client ---------------------------------------------------------------------

    def _client(self) -> mqtt.Client:
        url = urlsplit(self.config.url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"emsbms-{self.root.strip('/')}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.username_pw_set(self.config.username, self.config.password)
        if url.scheme == "mqtts":
            client.tls_set(ca_certs=self.config.ca_file, certfile=self.config.cert_file,
                           keyfile=self.config.key_file, cert_reqs=ssl.CERT_REQUIRED)
        client.will_set(self.root + "state", OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        client.max_inflight_messages_set(self.max_inflight)
        client.on_socket_open = self._socket_open
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_message = self._message
        return client

    @staticmethod
    def _socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        raw = getattr(sock, "_sock", sock)  # paho wraps a TLS socket; the TCP socket is inside
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                   properties: Any) -> None:
        if reason.is_failure:
            log.warning("uplink: %s refused the connection: %s", self.config.url, reason)
            self._set_state(UplinkState.OFFLINE)
            return
        client.publish(self.root + "state", ONLINE, qos=1, retain=True)
        client.subscribe([(self.root + "cmd", 1), (self.root + "config", 1)])
        self._set_state(UplinkState.ONLINE)
        if self.on_connected is not None:
            self.on_connected()

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                      properties: Any) -> None:
        if not self._stop.is_set():
            log.warning("uplink: lost %s (%s); reconnecting", self.config.url, reason)
            self._set_state(UplinkState.OFFLINE)

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        with self._cond:
            if mid in self._inflight:
                self._acked.append(mid)
                self._cond.notify_all()

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        hook = {self.root + "cmd": self.on_command, self.root + "config": self.on_config}.get(message.topic)
        if hook is None:
            return
        try:
            hook(bytes(message.payload))
        except Exception:
            log.exception("uplink: the %s handler raised", message.topic)

    def _set_state(self, state: UplinkState) -> None:
        with self._cond:
            self.state = state
            self._cond.notify_all()

    # -- running ------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background; the edge runs on whether the broker is there or not."""
        url = urlsplit(self.config.url)
        default = 8883 if url.scheme == "mqtts" else 1883
        self._set_state(UplinkState.CONNECTING)
        self.client.connect_async(url.hostname or "127.0.0.1", url.port or default, keepalive=30)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._publish_loop, name="emsbms-uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """A clean stop: publish `offline` (retained), wait for it, disconnect."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.state is UplinkState.ONLINE:
            info = self.client.publish(self.root + "state", OFFLINE, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError):
                log.warning("uplink: could not publish offline before stopping")
        self.client.disconnect()
        self.client.loop_stop()
        self._set_state(UplinkState.STOPPED)
        self._update_channels()

    def __enter__(self) -> Uplink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_state(self, state: UplinkState, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.state is state, timeout)

    @property
    def inflight(self) -> int:
        with self._cond:
            return len(self._inflight)

    def _publish_loop(self) -> None:
        next_channels = 0.0
        while not self._stop.is_set():
            try:
                self._publish_step()
            except Exception:
                log.exception("uplink: publishing from the outbox failed")
                self._stop.wait(1.0)
            if time.monotonic() >= next_channels:
                self._update_channels()
                next_channels = time.monotonic() + 1.0

    def _publish_step(self) -> None:
        with self._cond:
            acked, self._acked = self._acked, []
            done = [(self._inflight.pop(mid), mid) for mid in acked]
        now = time.monotonic()
        for (row_id, sent), _ in done:
            assert self.outbox is not None
            self.outbox.done(row_id)
            self.published += 1
            self.round_trip_ms = (now - sent) * 1000.0
        with self._cond:
            room = self.max_inflight - len(self._inflight)
            online = self.state is UplinkState.ONLINE
            busy = {row for row, _ in self._inflight.values()}
        if online and room > 0 and self.outbox is not None:
            rows = [r for r in self.outbox.pending(room + len(busy)) if r.id not in busy][:room]
            for row in rows:
                info = self.client.publish(row.topic, row.payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
                    log.warning("uplink: publish to %s failed: %s", row.topic, mqtt.error_string(info.rc))
                    continue
                with self._cond:
                    self._inflight[info.mid] = (row.id, time.monotonic())
                    if info.is_published():  # the PUBACK came before the mid was recorded
                        self._acked.append(info.mid)
            if rows:
                return
        with self._cond:
            self._cond.wait_for(lambda: bool(self._acked) or self._stop.is_set(), 0.05)

    def _update_channels(self) -> None:
        if self.registry is None:
            return
        now = time.time_ns() // 1000
        values: dict[str, float | str | None] = {
            "uplink/State": self.state.value,
            "uplink/Published": self.published,
            "uplink/RoundTrip": self.round_trip_ms,
        }
        if self.counters is not None:
            values.update(self.counters())
        self.registry.apply(Sample(a, v, now, Quality.OK) for a, v in values.items())


class Feed:
    """Registry updates → bounded queue → writer thread → `sink` (the batcher and the outbox)."""

    def __init__(self, registry: Registry, sink: Callable[[list[tuple[str, Reading]]], None],
                 pattern: str = "*", queue_size: int = 100_000, exclude: str = "uplink/") -> None:
        self.sink = sink
        self.exclude = exclude
        self.dropped = 0
        self.queue: queue.Queue[tuple[str, Reading] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._write_loop, name="emsbms-uplink-feed", daemon=True)
        self._thread.start()
        self._subscription: Subscription | None = registry.subscribe(pattern, self.record)

    def record(self, address: str, reading: Reading) -> None:
        """The registry's callback: never blocks."""
        if address.startswith(self.exclude):
            return
        try:
            self.queue.put_nowait((address, reading))
        except queue.Full:
            self.dropped += 1

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            item = self.queue.get()
            batch: list[tuple[str, Reading]] = []
            while True:
                if item is None:
                    stopping = True
                else:
                    batch.append(item)
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self.sink(batch)
                except Exception:
                    log.exception("uplink: the feed's sink raised; %d updates lost", len(batch))

    def close(self, timeout: float = 10.0) -> None:
        """Stop listening, write what is queued, stop the writer."""
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self.queue.put(None)
        self._thread.join(timeout)

