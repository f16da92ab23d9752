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
from collections.abc import Callable
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from emsbms.edge.registry import Registry, Subscription
from emsbms.site.model import UplinkConfig
from emsbms.types import ChannelInfo, ChannelKind, Quality, Reading, Sample, Value
from emsbms.uplink.messages import TelemetryBatcher, Topics, next_bd_seq, state_payload
from emsbms.uplink.outbox import Outbox

log = logging.getLogger(__name__)

class UplinkState(StrEnum):
    """Where the link to the broker stands (the value of `uplink/State`)."""

    STOPPED = "stopped"
    CONNECTING = "connecting"
    ONLINE = "online"
    OFFLINE = "offline"  # the broker is away: reconnecting, the outbox keeps everything


CHANNELS = (
    ChannelInfo("uplink/State", kind=ChannelKind.STATE, description="link to the broker"),
    ChannelInfo("uplink/Queued", description="outbox rows waiting for the broker's PUBACK"),
    ChannelInfo("uplink/Published", description="outbox rows acknowledged by the broker"),
    ChannelInfo("uplink/Dropped", description="updates dropped: the feed queue was full or the outbox over quota"),
    ChannelInfo("uplink/OldestQueuedAge", unit="s", description="age of the oldest outbox row"),
    ChannelInfo("uplink/RoundTrip", unit="ms", description="the last publish-to-PUBACK time"),
)

Hook = Callable[[bytes], None]


def _now_us() -> int:
    return time.time_ns() // 1000


class Uplink:
    """The edge's MQTT client (see the module docstring).

    `birth(bd_seq)` gives the birth payload, published on every connect and on a rebirth request;
    `on_birth` runs after each (the batcher's full refresh: the cloud gets every value again).
    `on_command` and `on_config` get the raw payloads of `cmd` and `config`, on a worker thread of
    their own (a command may wait for a device's acknowledgement; the network thread never waits).
    `send` queues a message in the outbox and wakes the publisher.
    """

    def __init__(
        self,
        config: UplinkConfig,
        topics: Topics,
        outbox: Outbox | None = None,
        registry: Registry | None = None,
        *,
        birth: Callable[[int], bytes] | None = None,
        on_command: Hook | None = None,
        on_config: Hook | None = None,
        on_birth: Callable[[], None] | None = None,
        max_inflight: int = 100,
        dropped: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.topics = topics
        self.outbox = outbox
        self.registry = registry
        self.birth = birth
        self.on_birth = on_birth
        self.max_inflight = max_inflight
        self.extra_dropped = dropped  # drops before the outbox (the feed's queue), for uplink/Dropped
        self.state = UplinkState.STOPPED
        self.bd_seq = next_bd_seq(None)
        self.published = 0  # rows acknowledged since start
        self.round_trip_ms: float | None = None
        self._hooks: dict[str, Hook | None] = {topics.cmd: on_command, topics.config: on_config}
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._cond = threading.Condition()
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (row id, sent at)
        self._acked: list[int] = []  # mids acknowledged, deleted from the outbox by the publisher thread
        self._wake = False
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.client = self._client()
        if registry is not None:
            registry.declare(CHANNELS)

    # -- the paho client ---------------------------------------------------------------------

    def _client(self) -> mqtt.Client:
        url = urlsplit(self.config.url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"emsbms-{self.topics.org}-{self.topics.site}",
                             protocol=mqtt.MQTTv311, clean_session=True)
        client.username_pw_set(self.config.username, self.config.password)
        if url.scheme == "mqtts":
            client.tls_set(ca_certs=self.config.ca_file, certfile=self.config.cert_file,
                           keyfile=self.config.key_file, cert_reqs=ssl.CERT_REQUIRED)
        self._set_will(client)
        client.reconnect_delay_set(min_delay=1, max_delay=8)
        client.max_inflight_messages_set(self.max_inflight)
        client.on_socket_open = self._socket_open
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._published
        client.on_message = self._message
        return client

    def _set_will(self, client: mqtt.Client) -> None:
        client.will_set(self.topics.state, state_payload(False, self.bd_seq, _now_us()), qos=1, retain=True)

    @staticmethod
    def _socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """TCP_NODELAY on every connection (paho never sets it): a QoS 1 round trip in ms, not 40+."""
        raw = getattr(sock, "_sock", None) or sock  # a TLS socket wraps the TCP one
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                   properties: Any) -> None:
        if reason.is_failure:
            log.warning("uplink: %s refused the connection: %s", self.config.url, reason)
            self._set_state(UplinkState.OFFLINE)
            return
        try:  # an exception here would end paho's network thread
            if self.birth is not None:
                client.publish(self.topics.birth, self.birth(self.bd_seq), qos=1)
            if self.on_birth is not None:
                self.on_birth()
        except Exception:
            log.exception("uplink: the birth could not be made")
        client.publish(self.topics.state, state_payload(True, self.bd_seq, _now_us()), qos=1, retain=True)
        client.subscribe([(self.topics.cmd, 1), (self.topics.config, 1), (self.topics.rebirth, 1)])
        self._set_state(UplinkState.ONLINE)

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                      properties: Any) -> None:
        if self._stop.is_set():
            return
        if self.state is UplinkState.ONLINE:
            log.warning("uplink: lost %s (%s); reconnecting", self.config.url, reason)
            self.bd_seq = next_bd_seq(self.bd_seq)  # the next connection is a new birth/death pair
            self._set_will(client)
        self._set_state(UplinkState.OFFLINE)

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        # every mid: a PUBACK may beat the publisher thread's record of its mid (sorted out there)
        with self._cond:
            self._acked.append(mid)
            self._cond.notify_all()

    def _message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._inbox.put((message.topic, bytes(message.payload)))

    def _handle_loop(self) -> None:
        while (item := self._inbox.get()) is not None:
            topic, payload = item
            try:
                if topic == self.topics.rebirth:
                    if self.birth is not None:
                        self.client.publish(self.topics.birth, self.birth(self.bd_seq), qos=1)
                    if self.on_birth is not None:
                        self.on_birth()
                    continue
                hook = self._hooks.get(topic)
                if hook is not None:
                    hook(payload)
            except Exception:
                log.exception("uplink: the handler of %s raised", topic)

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
        self._threads = [threading.Thread(target=self._publish_loop, name="emsbms-uplink", daemon=True),
                         threading.Thread(target=self._handle_loop, name="emsbms-uplink-inbox", daemon=True)]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 5.0) -> None:
        """A clean stop: publish `offline` (retained), wait for its PUBACK, disconnect."""
        self._stop.set()
        self._inbox.put(None)
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout)
        if self.state is UplinkState.ONLINE:
            info = self.client.publish(self.topics.state, state_payload(False, self.bd_seq, _now_us()), qos=1,
                                       retain=True)
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

    def send(self, topic: str, payload: bytes, kind: str) -> None:
        """Queue one message in the outbox (committed when this returns) and wake the publisher."""
        assert self.outbox is not None, "an uplink without an outbox sends nothing"
        self.outbox.put(topic, payload, kind, _now_us())
        self.wake()

    def wake(self) -> None:
        """Something was put in the outbox: publish it now rather than at the next poll."""
        with self._cond:
            self._wake = True
            self._cond.notify_all()

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
            done = [self._inflight.pop(mid) for mid in acked if mid in self._inflight]  # others: state, birth
        if done:
            assert self.outbox is not None
            self.outbox.done(row for row, _ in done)  # deleted only now: the broker has it
            self.published += len(done)
            self.round_trip_ms = (time.monotonic() - done[-1][1]) * 1000.0
        with self._cond:
            room = self.max_inflight - len(self._inflight)
            online = self.state is UplinkState.ONLINE
            self._wake = False
        if online and room > 0 and self.outbox is not None:
            rows = self.outbox.pending(room, _now_us())  # rows in flight are not handed out again
            for row in rows:
                info = self.client.publish(row.topic, row.payload, qos=1)
                if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # paho still holds a message with this mid
                    self.outbox.release([row.id])
                    continue
                with self._cond:  # recorded before this thread next looks at the acknowledged mids
                    self._inflight[info.mid] = (row.id, time.monotonic())
                # a publish while the link drops stays in paho's session: it is sent again on reconnect
            if rows:
                return
        with self._cond:
            self._cond.wait_for(lambda: bool(self._acked) or self._wake or self._stop.is_set(), 0.1)

    def _update_channels(self) -> None:
        if self.registry is None:
            return
        values: dict[str, Value] = {"uplink/State": self.state.value, "uplink/Published": self.published,
                                    "uplink/RoundTrip": self.round_trip_ms}  # Published: since start, or ...
        now = _now_us()
        dropped = self.extra_dropped() if self.extra_dropped is not None else 0
        if self.outbox is not None:
            values["uplink/Queued"] = self.outbox.queued
            values["uplink/Published"] = self.outbox.published  # ... since the outbox file was made
            values["uplink/OldestQueuedAge"] = self.outbox.oldest_age_s(now)
            dropped += self.outbox.dropped
        values["uplink/Dropped"] = dropped
        self.registry.apply([Sample(a, v, now, Quality.OK) for a, v in values.items()])


class Feed:
    """Registry updates → bounded queue → writer thread → `TelemetryBatcher` → outbox.

    The registry's callback only puts on the queue: a full queue drops and counts (`dropped`), the
    receive path never waits for SQLite. The writer hands the updates to the batcher, and puts its
    messages in the outbox in one transaction: the updates of a `window` (20 ms) after the first one
    together, so that a burst makes one message rather than one per update, and at least every
    `every` seconds (the batcher's full refresh is due by time), then calls `wake` (the uplink's
    publisher).
    """

    def __init__(self, registry: Registry, batcher: TelemetryBatcher, outbox: Outbox,
                 wake: Callable[[], None] = lambda: None, pattern: str = "*", queue_size: int = 100_000,
                 every: float = 1.0, window: float = 0.02) -> None:
        self.batcher = batcher
        self.window = window
        self.outbox = outbox
        self.wake = wake
        self.every = every
        self.dropped = 0
        self.queued = 0  # messages put in the outbox
        self.queue: queue.Queue[tuple[str, Reading] | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._write_loop, name="emsbms-uplink-feed", daemon=True)
        self._thread.start()
        self._subscription: Subscription | None = registry.subscribe(pattern, self.record)

    def record(self, address: str, reading: Reading) -> None:
        """The registry's callback: never blocks."""
        try:
            self.queue.put_nowait((address, reading))
        except queue.Full:
            self.dropped += 1

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            items: list[tuple[str, Reading] | None] = []
            try:
                items.append(self.queue.get(timeout=self.every))
                end = time.monotonic() + self.window  # a burst becomes one message, not one per update
                while len(items) < 10_000:
                    try:
                        items.append(self.queue.get_nowait())
                    except queue.Empty:
                        left = end - time.monotonic()
                        if left <= 0 or items[-1] is None:
                            break
                        time.sleep(min(left, 0.005))
            except queue.Empty:
                pass
            for item in items:
                if item is None:
                    stopping = True
                else:
                    self.batcher.update(*item)
            try:
                messages = self.batcher.flush(_now_us())
                if messages:
                    self.outbox.put_many([(m.topic, m.payload, m.kind.value) for m in messages], _now_us())
                    self.queued += len(messages)
                    self.wake()
            except Exception:
                log.exception("uplink: the feed could not queue telemetry")

    def close(self, timeout: float = 60.0) -> bool:
        """Stop listening, queue what is left, stop the writer; False if it is still writing after `timeout`."""
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self.queue.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()
