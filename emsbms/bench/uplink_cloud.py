"""What the uplink scenarios share: a Mosquitto with an edge's uplink on it, and a cloud client.

`linked(edge, folder)` starts a `Broker` in ``folder/broker`` (password authentication, ACLs, a free
loopback port) and the edge's `EdgeUplink` on it, and waits until the uplink is online. `Cloud` is
the other side: a paho client with TCP_NODELAY that hands every message it receives, with its
arrival time (µs since the epoch), to a callback.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.bench import BenchError
from emsbms.bench.measure import percentile
from emsbms.edge import Edge
from emsbms.site.model import UplinkConfig
from emsbms.uplink.broker import Broker, BrokerUser, mosquitto_path
from emsbms.uplink.client import UplinkState
from emsbms.uplink.link import EdgeUplink
from emsbms.uplink.messages import Topics

CLOUD = BrokerUser("cloud", "bench-cloud-secret", ("ems/#",))
ONLINE_S = 20.0

OnMessage = Callable[[str, bytes, int], None]  # (topic, payload, arrived µs since the epoch)


def _now_us() -> int:
    return time.time_ns() // 1000


def ms_stats(times: list[float]) -> tuple[float | None, float | None]:
    """(p50, p99) of `times`, rounded to 0.01 ms."""
    p50, p99 = percentile(times, 50), percentile(times, 99)
    return (None if p50 is None else round(p50, 2)), (None if p99 is None else round(p99, 2))


def ratio(x: float | None, y: float | None) -> float | None:
    return round(x / y, 2) if x is not None and y else None


def require_mosquitto() -> None:
    if mosquitto_path() is None:
        raise BenchError("the uplink scenarios need Mosquitto: the Debian packages mosquitto and mosquitto-clients"
                         " are not installed")


def edge_user(topics: Topics) -> BrokerUser:
    return BrokerUser(f"{topics.org}.{topics.site}", "bench-edge-secret", (topics.all,))


@contextmanager
def linked(edge: Edge, folder: Path, db: Path | None = None,
           persistence: bool = False) -> Iterator[tuple[Broker, EdgeUplink]]:
    """A broker in `folder` and the edge's uplink on it, online; both stopped afterwards."""
    require_mosquitto()
    topics = Topics(edge.site.org, edge.site.name)
    user = edge_user(topics)
    broker = Broker(folder / "broker", [user, CLOUD], persistence=persistence)
    broker.start()
    link: EdgeUplink | None = None
    try:
        link = EdgeUplink(edge, UplinkConfig(broker.url, user.name, user.password), db or folder / "edge.db")
        link.start()
        if not link.uplink.wait_state(UplinkState.ONLINE, ONLINE_S):
            raise BenchError(f"uplink: not online at {broker.url} within {ONLINE_S:g} s ({link.uplink.state.value})")
        yield broker, link
    finally:
        if link is not None:
            link.close()
        broker.stop()


class Cloud:
    """The cloud's side: subscribes to `topics` (QoS 1) on every connect, hands each message to `on_message`.

    A `persistent` client keeps its session on the broker: what arrives while it is away is kept for it.
    """

    def __init__(self, broker: Broker, user: BrokerUser, topics: list[str], on_message: OnMessage,
                 persistent: bool = False) -> None:
        self.topics = topics
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-cloud-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=not persistent)
        self.client.username_pw_set(user.name, user.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_socket_open = self._socket_open
        self.client.on_connect = self._connected
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: on_message(m.topic, bytes(m.payload), _now_us())
        self.port = broker.port

    @staticmethod
    def _socket_open(client: mqtt.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _connected(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def start(self) -> Cloud:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(ONLINE_S):
            self.stop()
            raise BenchError(f"cloud client: not subscribed on 127.0.0.1:{self.port} within {ONLINE_S:g} s")
        return self

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Cloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
