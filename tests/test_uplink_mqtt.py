"""The MQTT transport against a real Mosquitto: password authentication, per-site ACLs, state and
will, store and forward across a stopped and a killed broker, and `emsbms run` with an [uplink].

Mosquitto runs in a temporary folder on a free loopback port (emsbms/uplink/broker.py). Without it
the tests skip, unless EMSBMS_REQUIRE_MOSQUITTO=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.site.model import UplinkConfig
from emsbms.uplink.broker import Broker, BrokerUser, mosquitto_path
from emsbms.uplink.client import Uplink, UplinkState
from tests.conftest import wait

pytestmark = pytest.mark.slow

EDGE = BrokerUser("acme.plant-1", "edge-secret-1", ("ems/acme/plant-1/#",))
OTHER = BrokerUser("acme.plant-2", "edge-secret-2", ("ems/acme/plant-2/#",))
CLOUD = BrokerUser("cloud", "cloud-secret", ("ems/#",))


def require_mosquitto() -> None:
    if mosquitto_path() is None:
        if os.environ.get("EMSBMS_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("EMSBMS_REQUIRE_MOSQUITTO=1 but mosquitto is not installed (apt-get install mosquitto"
                        " mosquitto-clients)")
        pytest.skip("mosquitto is not installed (Debian packages mosquitto and mosquitto-clients)")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    require_mosquitto()
    b = Broker(tmp_path / "broker", [EDGE, OTHER, CLOUD])
    b.start()
    try:
        yield b
    finally:
        b.stop(signal.SIGKILL)


class Watcher:
    """A test client on the broker: records every message it receives, per topic."""

    def __init__(self, broker: Broker, user: BrokerUser, topics: list[str], persistent: bool = False) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.granted: list[int] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.topics = topics
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=not persistent)
        self.client.username_pw_set(user.name, user.password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = self._connected
        self.client.on_message = self._message
        self.client.on_subscribe = self._subscribed
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the watcher's subscription was not acknowledged"

    def _connected(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                   properties: object) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _subscribed(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[object],
                    properties: object) -> None:
        self.granted = [int(getattr(r, "value", r)) for r in reasons]
        self.subscribed.set()

    def _message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.retain)))

    def payloads(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def edge_config(broker: Broker, user: BrokerUser = EDGE) -> UplinkConfig:
    return UplinkConfig(url=broker.url, username=user.name, password=user.password)


def test_state_online_then_offline_on_clean_stop(broker: Broker) -> None:
    watcher = Watcher(broker, CLOUD, ["ems/acme/plant-1/state"])
    try:
        uplink = Uplink(edge_config(broker), "acme", "plant-1")
        uplink.start()
        assert uplink.wait_state(UplinkState.ONLINE, 20), uplink.state
        assert wait(lambda: watcher.payloads("ems/acme/plant-1/state") == [b"online"])
        uplink.stop()
        assert wait(lambda: watcher.payloads("ems/acme/plant-1/state") == [b"online", b"offline"])
        assert uplink.state is UplinkState.STOPPED
    finally:
        watcher.close()
    late = Watcher(broker, CLOUD, ["ems/acme/plant-1/state"])  # retained: a late subscriber sees offline
    try:
        assert wait(lambda: late.messages == [("ems/acme/plant-1/state", b"offline", True)])
    finally:
        late.close()


EDGE_SCRIPT = """
import sys, time
from emsbms.site.model import UplinkConfig
from emsbms.uplink.client import Uplink, UplinkState
uplink = Uplink(UplinkConfig(url=sys.argv[1], username=sys.argv[2], password=sys.argv[3]), "acme", "plant-1")
uplink.start()
assert uplink.wait_state(UplinkState.ONLINE, 30)
print("online", flush=True)
time.sleep(600)
"""


def test_will_gives_offline_when_the_edge_is_killed(broker: Broker) -> None:
    watcher = Watcher(broker, CLOUD, ["ems/acme/plant-1/state"])
    edge = subprocess.Popen([sys.executable, "-c", textwrap.dedent(EDGE_SCRIPT), broker.url, EDGE.name,
                             EDGE.password], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert edge.stdout is not None
        assert edge.stdout.readline().strip() == "online", edge.stderr.read() if edge.stderr else ""
        assert wait(lambda: watcher.payloads("ems/acme/plant-1/state") == [b"online"])
        edge.send_signal(signal.SIGKILL)
        edge.wait(10)
        # the broker notices the closed socket and publishes the will, retained
        assert wait(lambda: watcher.payloads("ems/acme/plant-1/state") == [b"online", b"offline"], 30)
    finally:
        if edge.poll() is None:
            edge.kill()
        edge.communicate()
        watcher.close()
    late = Watcher(broker, CLOUD, ["ems/acme/plant-1/state"])
    try:
        assert wait(lambda: late.messages == [("ems/acme/plant-1/state", b"offline", True)])
    finally:
        late.close()


def test_an_edge_cannot_use_another_sites_topics(broker: Broker) -> None:
    watcher = Watcher(broker, CLOUD, ["ems/#"])
    # plant-1's credentials: its own topics work, plant-2's are refused both ways
    spy = Watcher(broker, EDGE, ["ems/acme/plant-2/#", "ems/acme/plant-1/cmd"])
    try:
        # Mosquitto grants the SUBACK and then delivers only what the read ACL allows
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="intruder", protocol=mqtt.MQTTv311)
        intruder.username_pw_set(EDGE.name, EDGE.password)
        intruder.connect("127.0.0.1", broker.port)
        intruder.loop_start()
        try:
            # Mosquitto acknowledges a refused QoS 1 publish (MQTT 3.1.1 has no way to say no) and drops it
            intruder.publish("ems/acme/plant-2/cmd", b"forged", qos=1).wait_for_publish(10)
            intruder.publish("ems/acme/plant-1/telemetry", b"own", qos=1).wait_for_publish(10)
            assert wait(lambda: watcher.payloads("ems/acme/plant-1/telemetry") == [b"own"])
            # plant-2's operator publishes a command: plant-1's spy does not get it
            other = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="plant-2", protocol=mqtt.MQTTv311)
            other.username_pw_set(OTHER.name, OTHER.password)
            other.connect("127.0.0.1", broker.port)
            other.loop_start()
            other.publish("ems/acme/plant-2/cmd", b"for-plant-2", qos=1).wait_for_publish(10)
            other.publish("ems/acme/plant-1/cmd", b"from-plant-2", qos=1).wait_for_publish(10)
            intruder.publish("ems/acme/plant-1/cmd", b"marker", qos=1).wait_for_publish(10)
            assert wait(lambda: b"marker" in spy.payloads("ems/acme/plant-1/cmd"))
            other.disconnect()
            other.loop_stop()
        finally:
            intruder.disconnect()
            intruder.loop_stop()
        assert wait(lambda: b"for-plant-2" in watcher.payloads("ems/acme/plant-2/cmd"))
        assert watcher.payloads("ems/acme/plant-2/cmd") == [b"for-plant-2"]  # the forged one never arrived
        assert watcher.payloads("ems/acme/plant-1/cmd") == [b"marker"]  # plant-2 cannot command plant-1
        with spy.lock:
            assert [(t, p) for t, p, _ in spy.messages] == [("ems/acme/plant-1/cmd", b"marker")]
    finally:
        spy.close()
        watcher.close()


def test_a_wrong_password_is_refused(broker: Broker) -> None:
    uplink = Uplink(UplinkConfig(url=broker.url, username=EDGE.name, password="wrong"), "acme", "plant-1")
    uplink.start()
    try:
        assert uplink.wait_state(UplinkState.OFFLINE, 20), uplink.state
    finally:
        uplink.stop()
