"""Broker tenancy against a real Mosquitto with the dynamic security plugin, all changed live.

`BrokerAdmin` adds a site (a client and a role) while the broker runs; its credentials then work only
under the site's own `ems/{org}/{site}/` topics, never for `cmd` or `config`, and the real edge client
(`Uplink`) goes online with them. Without Mosquitto the tests skip, unless EMSBMS_REQUIRE_MOSQUITTO=1.

A refused publish is shown by a subscriber that gets a later allowed marker but never the message.
With the plugin, Mosquitto 2.0.11 closes the connection of a client that publishes on a denied topic
(with an ACL file it acknowledges and drops it), so each forged publish goes on a connection of its
own, and the marker is sent once the broker has either closed that connection or acknowledged.
"""

from __future__ import annotations

import json
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

from emsbms.cloud.broker_admin import SERVICE_ACLS, SERVICE_ROLE, BrokerAdmin, BrokerAdminError
from emsbms.site.model import UplinkConfig
from emsbms.uplink.broker import Broker, BrokerUser, dynsec_plugin_path
from emsbms.uplink.client import Uplink, UplinkState
from emsbms.uplink.messages import Topics
from tests.conftest import wait
from tests.test_uplink_mqtt import EDGE_SCRIPT, Watcher, require_mosquitto

pytestmark = pytest.mark.slow

ADMIN = ("admin", "admin-secret")
SERVICE = BrokerUser("cloud", "cloud-secret", ())


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    require_mosquitto()
    if dynsec_plugin_path() is None:
        if os.environ.get("EMSBMS_REQUIRE_MOSQUITTO") == "1":
            pytest.fail("EMSBMS_REQUIRE_MOSQUITTO=1 but mosquitto_dynamic_security.so is not installed")
        pytest.skip("the Mosquitto dynamic security plugin is not installed")
    b = Broker(tmp_path / "broker", dynsec_admin=ADMIN)
    b.start()
    try:
        yield b
    finally:
        b.stop(signal.SIGKILL)


@pytest.fixture
def admin(broker: Broker) -> Iterator[BrokerAdmin]:
    with BrokerAdmin(broker.url, *ADMIN) as a:
        a.command("createClient", username=SERVICE.name, password=SERVICE.password)
        a.ensure_service_role(SERVICE.name)
        yield a


def user(credentials: tuple[str, str]) -> BrokerUser:
    return BrokerUser(credentials[0], credentials[1], ())


class Client:
    """A plain paho client: its CONNACK reason code, and QoS 1 publishes acknowledged by the broker."""

    def __init__(self, broker: Broker, name: str, password: str) -> None:
        self.code: int | None = None
        self.done = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(name, password)
        self.client.on_connect = self._connected
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.done.wait(10), "no CONNACK"

    def _connected(self, client: mqtt.Client, userdata: object, flags: object, reason: object,
                   properties: object) -> None:
        self.code = int(getattr(reason, "value", reason))  # type: ignore[call-overload]
        if self.code:
            client.disconnect()
        self.done.set()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def forge(self, topic: str) -> None:
        """A publish the broker must refuse: returns once the broker dealt with it (closed or PUBACK)."""
        info = self.client.publish(topic, b"forged", qos=1)
        assert wait(lambda: not self.client.is_connected() or info.is_published())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_site_added_live_publishes_its_telemetry_to_the_service(broker: Broker, admin: BrokerAdmin) -> None:
    service = Watcher(broker, SERVICE, ["ems/#"])
    username, password = admin.add_site("acme", "plant-1")
    assert username == "acme.plant-1" and len(password) >= 24
    edge = Client(broker, username, password)
    try:
        assert edge.code == 0
        edge.publish("ems/acme/plant-1/telemetry", b'{"seq":0}')
        edge.publish("ems/acme/plant-1/cmd/result", b'{"id":"c1"}')  # cmd/result is up: allowed
        assert wait(lambda: service.payloads("ems/acme/plant-1/cmd/result") == [b'{"id":"c1"}'])
        assert service.payloads("ems/acme/plant-1/telemetry") == [b'{"seq":0}']
    finally:
        edge.close()
        service.close()


def test_a_site_cannot_publish_cmd_config_or_into_other_sites(broker: Broker, admin: BrokerAdmin) -> None:
    service = Watcher(broker, SERVICE, ["ems/#"])
    credentials = admin.add_site("acme", "plant-1")
    admin.add_site("acme", "plant-2")
    try:
        for topic in ("ems/acme/plant-1/cmd", "ems/acme/plant-1/config", "ems/acme/plant-2/telemetry",
                      "ems/acme/plant-2/state", "ems/other/plant-1/telemetry", "ems/x"):
            forger = Client(broker, *credentials)
            assert forger.code == 0
            forger.forge(topic)
            forger.close()
        edge = Client(broker, *credentials)
        edge.publish("ems/acme/plant-1/telemetry", b"marker")
        edge.close()
        assert wait(lambda: service.payloads("ems/acme/plant-1/telemetry") == [b"marker"])
        with service.lock:
            assert [(t, p) for t, p, _ in service.messages] == [("ems/acme/plant-1/telemetry", b"marker")]
    finally:
        service.close()


def test_a_site_cannot_subscribe_beyond_its_own_downlink(broker: Broker, admin: BrokerAdmin) -> None:
    spy = Watcher(broker, user(admin.add_site("acme", "plant-1")),
                  ["ems/acme/plant-2/#", "ems/#", "ems/acme/plant-1/#", "ems/acme/plant-1/telemetry",
                   "ems/acme/plant-1/cmd", "ems/acme/plant-1/config", "ems/acme/plant-1/rebirth"])
    try:
        assert spy.granted == [0x80, 0x80, 0x80, 0x80, 1, 1, 1]
    finally:
        spy.close()


def test_the_edge_receives_what_the_service_publishes(broker: Broker, admin: BrokerAdmin) -> None:
    edge = Watcher(broker, user(admin.add_site("acme", "plant-1")),
                   ["ems/acme/plant-1/cmd", "ems/acme/plant-1/config", "ems/acme/plant-1/rebirth"])
    service = Client(broker, SERVICE.name, SERVICE.password)
    try:
        service.publish("ems/acme/plant-1/config", b'{"version":3}', retain=True)
        service.publish("ems/acme/plant-1/rebirth", b"")
        service.publish("ems/acme/plant-1/cmd", b'{"id":"c1"}')
        assert wait(lambda: edge.payloads("ems/acme/plant-1/cmd") == [b'{"id":"c1"}'])
        assert edge.payloads("ems/acme/plant-1/config") == [b'{"version":3}']
        assert edge.payloads("ems/acme/plant-1/rebirth") == [b""]
    finally:
        service.close()
        edge.close()


def test_wrong_password_and_removed_site_are_refused(broker: Broker, admin: BrokerAdmin) -> None:
    username, password = admin.add_site("acme", "plant-1")
    wrong = Client(broker, username, password + "x")
    assert wrong.code == 135  # not authorised (paho 2 reports the 3.1.1 CONNACK 5 as 135)
    wrong.close()
    edge = Client(broker, username, password)
    assert edge.code == 0
    try:
        assert admin.remove_site("acme", "plant-1") is True
        assert wait(lambda: not edge.client.is_connected())  # deleting the client disconnects its edge
    finally:
        edge.close()
    again = Client(broker, username, password)
    assert again.code == 135
    again.close()
    assert admin.remove_site("acme", "plant-1") is False


def test_the_uplink_goes_online_with_site_credentials(broker: Broker, admin: BrokerAdmin) -> None:
    service = Watcher(broker, SERVICE, ["ems/acme/plant-1/#"])
    username, password = admin.add_site("acme", "plant-1")
    uplink = Uplink(UplinkConfig(url=broker.url, username=username, password=password), Topics("acme", "plant-1"),
                    birth=lambda bd_seq: json.dumps({"bdSeq": bd_seq}).encode())
    try:
        uplink.start()
        assert uplink.wait_state(UplinkState.ONLINE, 20), uplink.state
        assert wait(lambda: service.states("ems/acme/plant-1/state") == ["online"])
        assert service.payloads("ems/acme/plant-1/birth") == [b'{"bdSeq": 0}']
        uplink.stop()
        assert wait(lambda: service.states("ems/acme/plant-1/state") == ["online", "offline"])
    finally:
        uplink.stop()
        service.close()
    late = Watcher(broker, SERVICE, ["ems/acme/plant-1/state"])  # the state was stored retained
    try:
        assert wait(lambda: late.states("ems/acme/plant-1/state") == ["offline"] and late.messages[0][2])
    finally:
        late.close()


def test_the_will_of_a_killed_edge_reaches_the_service(broker: Broker, admin: BrokerAdmin) -> None:
    service = Watcher(broker, SERVICE, ["ems/acme/plant-1/state"])
    username, password = admin.add_site("acme", "plant-1")
    edge = subprocess.Popen([sys.executable, "-c", textwrap.dedent(EDGE_SCRIPT), broker.url, username, password],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert edge.stdout is not None
        assert edge.stdout.readline().strip() == "online", edge.stderr.read() if edge.stderr else ""
        assert wait(lambda: service.states("ems/acme/plant-1/state") == ["online"])
        edge.send_signal(signal.SIGKILL)
        edge.wait(10)
        assert wait(lambda: service.states("ems/acme/plant-1/state") == ["online", "offline"], 30)
    finally:
        if edge.poll() is None:
            edge.kill()
        edge.communicate()
        service.close()


def test_ensure_service_role_is_idempotent_and_allows_a_shared_subscription(broker: Broker,
                                                                            admin: BrokerAdmin) -> None:
    ingest = Watcher(broker, SERVICE, ["$share/ingest/ems/+/+/telemetry"])
    drops: list[int] = []
    ingest.client.on_disconnect = lambda *args: drops.append(1)
    try:
        assert ingest.granted == [1]
        admin.ensure_service_role(SERVICE.name)  # at every start: changes nothing, kicks nobody
        role = admin.command("getRole", rolename=SERVICE_ROLE)["role"]
        assert {(a["acltype"], a["topic"], a["priority"], a["allow"]) for a in role["acls"]} == set(SERVICE_ACLS)
        edge = Client(broker, *admin.add_site("acme", "plant-1"))
        edge.publish("ems/acme/plant-1/telemetry", b"shared")
        edge.close()
        assert wait(lambda: ingest.payloads("ems/acme/plant-1/telemetry") == [b"shared"])
        assert drops == []
    finally:
        ingest.close()


def test_the_admin_can_take_the_service_role_itself(broker: Broker, admin: BrokerAdmin) -> None:
    admin.ensure_service_role(ADMIN[0])  # the plugin kicks the admin when its roles change: it reconnects
    admin.ensure_service_role(ADMIN[0])
    roles = admin.command("getClient", username=ADMIN[0])["client"]["roles"]
    assert sorted(r["rolename"] for r in roles) == ["admin", SERVICE_ROLE]


def test_refusals_name_the_command_and_the_brokers_error(broker: Broker, admin: BrokerAdmin) -> None:
    with pytest.raises(BrokerAdminError, match="deleteRole nope failed: Role not found"):
        admin.command("deleteRole", rolename="nope")
    admin.add_site("acme", "plant-1")
    with pytest.raises(BrokerAdminError, match=r"already has a client 'acme\.plant-1'"):
        admin.add_site("acme", "plant-1")
    with pytest.raises(BrokerAdminError, match=r"site: expected one MQTT topic level .* found 'a/b'"):
        admin.add_site("acme", "a/b")
    with pytest.raises(BrokerAdminError, match=r"setClientPassword acme\.nope failed: Client not found"):
        admin.set_password("acme", "nope")
    with pytest.raises(BrokerAdminError, match="no client 'ghost'"):
        admin.ensure_service_role("ghost")


def test_set_password_replaces_the_old_one(broker: Broker, admin: BrokerAdmin) -> None:
    username, old = admin.add_site("acme", "plant-1")
    new = admin.set_password("acme", "plant-1")
    assert new != old
    refused, accepted = Client(broker, username, old), Client(broker, username, new)
    assert (refused.code, accepted.code) == (135, 0)
    refused.close()
    accepted.close()
