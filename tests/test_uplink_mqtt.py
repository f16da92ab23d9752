"""The MQTT transport against a real Mosquitto: password authentication, per-site ACLs, state and
will, store and forward across a stopped and a killed broker, and `emsbms run` with an [uplink].

Mosquitto runs in a temporary folder on a free loopback port (emsbms/uplink/broker.py). Without it
the tests skip, unless EMSBMS_REQUIRE_MOSQUITTO=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from emsbms.demo import site_toml
from emsbms.edge.lock import EdgeLock
from emsbms.edge.registry import Registry
from emsbms.errors import ConfigError
from emsbms.site import parse_site
from emsbms.site.model import UplinkConfig
from emsbms.types import ChannelInfo, Sample
from emsbms.uplink.broker import Broker, BrokerUser, mosquitto_path
from emsbms.uplink.client import Feed, Uplink, UplinkState
from emsbms.uplink.messages import TelemetryBatcher, Topics
from emsbms.uplink.outbox import Outbox, outbox_path
from tests.conftest import wait

pytestmark = pytest.mark.slow

EDGE = BrokerUser("acme.plant-1", "edge-secret-1", ("ems/acme/plant-1/#",))
OTHER = BrokerUser("acme.plant-2", "edge-secret-2", ("ems/acme/plant-2/#",))
CLOUD = BrokerUser("cloud", "cloud-secret", ("ems/#",))
PLANT_1 = Topics("acme", "plant-1")


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

    def states(self, topic: str) -> list[str]:
        """The `state` field of each JSON state payload received on `topic`."""
        return [json.loads(p)["state"] for p in self.payloads(topic)]

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
        uplink = Uplink(edge_config(broker), PLANT_1)
        uplink.start()
        assert uplink.wait_state(UplinkState.ONLINE, 20), uplink.state
        sock = uplink.client.socket()
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert wait(lambda: watcher.states("ems/acme/plant-1/state") == ["online"])
        uplink.stop()
        assert wait(lambda: watcher.states("ems/acme/plant-1/state") == ["online", "offline"])
        assert uplink.state is UplinkState.STOPPED
    finally:
        watcher.close()
    late = Watcher(broker, CLOUD, ["ems/acme/plant-1/state"])  # retained: a late subscriber sees offline
    try:
        assert wait(lambda: late.states("ems/acme/plant-1/state") == ["offline"] and late.messages[0][2])
    finally:
        late.close()


EDGE_SCRIPT = """
import sys, time
from emsbms.demo import site_toml
from emsbms.edge.registry import Registry
from emsbms.errors import ConfigError
from emsbms.site import parse_site
from emsbms.site.model import UplinkConfig
from emsbms.types import ChannelInfo, Sample
from emsbms.uplink.client import Feed, Uplink, UplinkState
from emsbms.uplink.messages import TelemetryBatcher, Topics
from emsbms.uplink.outbox import Outbox, outbox_path
from emsbms.uplink.messages import Topics
uplink = Uplink(UplinkConfig(url=sys.argv[1], username=sys.argv[2], password=sys.argv[3]), Topics("acme", "plant-1"))
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
        assert wait(lambda: watcher.states("ems/acme/plant-1/state") == ["online"])
        edge.send_signal(signal.SIGKILL)
        edge.wait(10)
        # the broker notices the closed socket and publishes the will, retained
        assert wait(lambda: watcher.states("ems/acme/plant-1/state") == ["online", "offline"], 30)
    finally:
        if edge.poll() is None:
            edge.kill()
        edge.communicate()
        watcher.close()
    late = Watcher(broker, CLOUD, ["ems/acme/plant-1/state"])
    try:
        assert wait(lambda: late.states("ems/acme/plant-1/state") == ["offline"] and late.messages[0][2])
    finally:
        late.close()


def connected(broker: Broker, user: BrokerUser, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.username_pw_set(user.name, user.password)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert wait(client.is_connected), f"{user.name} could not connect"
    return client


def test_an_edge_cannot_use_another_sites_topics(broker: Broker) -> None:
    watcher = Watcher(broker, CLOUD, ["ems/#"])
    # plant-1's credentials: its own topics work, plant-2's are refused both ways
    spy = Watcher(broker, EDGE, ["ems/acme/plant-2/#", "ems/acme/plant-1/cmd"])
    try:
        # Mosquitto grants the SUBACK and then delivers only what the read ACL allows
        intruder = connected(broker, EDGE, "intruder")
        try:
            # Mosquitto drops a refused publish: it acknowledges it (MQTT 3.1.1 has no way to say no) or
            # closes the connection
            forger = connected(broker, EDGE, "forger")
            forged = forger.publish("ems/acme/plant-2/cmd", b"forged", qos=1)
            assert wait(lambda: forged.is_published() or not forger.is_connected())
            forger.disconnect()
            forger.loop_stop()
            intruder.publish("ems/acme/plant-1/telemetry", b"own", qos=1).wait_for_publish(10)
            assert wait(lambda: watcher.payloads("ems/acme/plant-1/telemetry") == [b"own"])
            # plant-2's operator publishes a command: plant-1's spy does not get it
            other = connected(broker, OTHER, "plant-2")
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
    uplink = Uplink(UplinkConfig(url=broker.url, username=EDGE.name, password="wrong"), PLANT_1)
    uplink.start()
    try:
        assert uplink.wait_state(UplinkState.OFFLINE, 20), uplink.state
    finally:
        uplink.stop()


CHANNELS = [f"dev/Seq{i}" for i in range(4)]


class Feeder:
    """Applies samples to a registry from a thread: each channel's values are its sequence numbers 0, 1, 2 ..."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        registry.declare(ChannelInfo(a) for a in CHANNELS)
        self.count = 0  # samples per channel applied so far
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            now = time.time_ns() // 1000
            self.registry.apply([Sample(a, self.count, now) for a in CHANNELS])
            self.count += 1

    def close(self) -> int:
        self.stop.set()
        self.thread.join()
        return self.count


def received(watcher: Watcher, topic: str) -> dict[str, list[int]]:
    """Every sample value per channel in the telemetry payloads received (duplicates kept, refreshes left out)."""
    out: dict[str, list[int]] = {a: [] for a in CHANNELS}
    for payload in watcher.payloads(topic):
        doc = json.loads(payload)
        if not doc["refresh"]:
            for sample in doc["samples"]:
                out[sample["address"]].append(sample["value"])
    return out


def outbox_seqs(path: Path) -> set[int]:
    """The `seq` of every telemetry message still in the outbox file (read beside the running edge)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return {json.loads(p)["seq"] for (p,) in db.execute("SELECT payload FROM outbox WHERE kind = 'telemetry'")}


def freeze_with_everything_acknowledged_delivered(broker: Broker, watcher: Watcher, outbox_file: Path) -> None:
    """SIGSTOP the broker at a moment when every telemetry message the edge has deleted (PUBACKed)
    has reached the watcher: each seq is either at the watcher or still in the outbox.

    Mosquitto PUBACKs a message before it writes it to a slow subscriber, so at a given instant some
    acknowledged messages may sit in the broker's memory only; a SIGKILL then would lose them, and no
    edge can prevent that. Counting is not enough (the watcher may hold messages whose PUBACK the
    edge has not handled yet while the broker holds others): compare the sets, after the sockets
    drained, and let the broker run again a moment when they differ."""
    assert broker.process is not None
    for _ in range(30):
        broker.process.send_signal(signal.SIGSTOP)
        time.sleep(1.0)  # what is already in the sockets is read: PUBACKs by the edge, messages by the watcher
        got = {json.loads(p)["seq"] for p in watcher.payloads(PLANT_1.telemetry)}
        known = got | outbox_seqs(outbox_file)
        if got and known == set(range(max(known) + 1)):
            return
        broker.process.send_signal(signal.SIGCONT)
        time.sleep(0.5)
    raise AssertionError("the broker never stood still with every acknowledged message delivered")


def missing(got: dict[str, list[int]], total: int) -> dict[str, list[int]]:
    return {a: sorted(set(range(total)) - set(v)) for a, v in got.items()}


def test_nothing_is_lost_across_a_stopped_and_a_killed_broker(broker: Broker, tmp_path: Path) -> None:
    outage_s = float(os.environ.get("EMSBMS_UPLINK_OUTAGE_S", "30"))
    watcher = Watcher(broker, CLOUD, [PLANT_1.telemetry], persistent=True)
    registry = Registry()
    outbox = Outbox(tmp_path / "edge.db.outbox")
    uplink = Uplink(edge_config(broker), PLANT_1, outbox, registry, max_inflight=20)
    batcher = TelemetryBatcher(PLANT_1, session=1, refresh_s=3600, start_us=time.time_ns() // 1000)
    pipe = Feed(registry, batcher, outbox, wake=uplink.wake, pattern="dev/*", every=0.1)
    feed = Feeder(registry)  # after the feed's subscription: it sees every sample
    uplink.start()
    try:
        assert uplink.wait_state(UplinkState.ONLINE, 20)
        assert wait(lambda: min(len(v) for v in received(watcher, PLANT_1.telemetry).values()) >= 20)
        broker.stop(signal.SIGTERM)  # a clean stop: Mosquitto saves the watcher's session
        assert uplink.wait_state(UplinkState.OFFLINE, 20)
        before = feed.count
        time.sleep(outage_s)  # the outage itself, not a measurement
        assert feed.count > before  # samples kept coming while the broker was away ...
        assert outbox.queued > 0  # ... into the outbox
        assert registry.get("uplink/State") is not None
        assert wait(lambda: registry.get("uplink/Queued") is not None and registry.get("uplink/Queued").value > 0)  # type: ignore[union-attr]
        broker.start()
        assert uplink.wait_state(UplinkState.ONLINE, 30)
        mark = feed.count
        assert wait(lambda: min(len(set(v)) for v in received(watcher, PLANT_1.telemetry).values()) > mark, 60)
        # A crash, with samples flowing. Mosquitto sends PUBACK before it persists anything, so a
        # crash loses what it acknowledged but had not delivered yet: no edge can prevent that.
        # Freeze it first (no more PUBACKs), let the watcher get everything acknowledged, then kill
        # it: the edge's part is what remains, its rows in flight and those queued meanwhile.
        freeze_with_everything_acknowledged_delivered(broker, watcher, tmp_path / "edge.db.outbox")
        assert wait(lambda: outbox.queued > 0)  # samples still flow: the crash leaves the edge rows to send
        broker.stop(signal.SIGKILL)
        assert uplink.wait_state(UplinkState.OFFLINE, 20)
        broker.start()
        assert uplink.wait_state(UplinkState.ONLINE, 30)
        time.sleep(0.5)
        total = feed.close()
        pipe.close()
        assert wait(lambda: outbox.queued == 0, 60), outbox.queued
        assert wait(lambda: all(set(v) == set(range(total)) for v in received(watcher, PLANT_1.telemetry).values()),
                    30), missing(received(watcher, PLANT_1.telemetry), total)
        counts = {a: len(set(v)) for a, v in received(watcher, PLANT_1.telemetry).items()}
        assert counts == dict.fromkeys(CHANNELS, total)  # per channel, the count in equals the count out
        assert pipe.dropped == 0
        assert outbox.dropped == 0
        assert uplink.published == outbox.published
    finally:
        feed.stop.set()
        pipe.close()
        uplink.stop()
        watcher.close()
        outbox.close()


def emsbms_command() -> list[str]:
    script = Path(sys.executable).with_name("emsbms")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from emsbms.cli import main; main()"]


def stop_process(p: subprocess.Popen[str]) -> str:
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err


def test_emsbms_run_sends_telemetry_and_runs_while_the_broker_is_away(tmp_path: Path) -> None:
    require_mosquitto()
    broker = Broker(tmp_path / "broker", [EDGE, OTHER, CLOUD])  # not started yet: the edge starts without it
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(43000, 47990)
    (tmp_path / "uplink.secret").write_text(EDGE.password + "\n", encoding="utf-8")
    site = tmp_path / "site.toml"
    site.write_text(site_toml({
        "site": {"org": "acme", "name": "plant-1"},
        "bus": [{"name": "can0", "interface": "udp_multicast", "channel": "239.74.163.3", "port": port}],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}],
    }) + f'\n[uplink]\nurl = "{broker.url}"\nusername = "{EDGE.name}"\npassword_file = "uplink.secret"\n',
        encoding="utf-8")
    db = tmp_path / "edge.db"
    sim = subprocess.Popen([*emsbms_command(), "--site", str(site), "simulate", "--duration", "300"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = subprocess.Popen([*emsbms_command(), "--site", str(site), "run", "--db", str(db)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher: Watcher | None = None
    try:
        outbox = outbox_path(db)
        assert wait(lambda: outbox.exists() and queued_rows(outbox) >= 3, 60), "no telemetry queued without a broker"
        assert run.poll() is None  # the edge runs on without its broker
        broker.start()
        watcher = Watcher(broker, CLOUD, ["ems/acme/plant-1/#"])
        w = watcher
        assert wait(lambda: any(s["address"] == "bms_0/Soc" for s in samples(w, PLANT_1.telemetry)), 60)
        assert wait(lambda: any(s["address"] == "uplink/State" and s["value"] == "online"
                                for s in samples(w, PLANT_1.health)), 30)
        soc = [s for s in samples(w, PLANT_1.telemetry) if s["address"] == "bms_0/Soc"]
        assert all(0 <= s["value"] <= 100 and s["quality"] == "ok" for s in soc)
        births = [json.loads(p) for p in w.payloads(PLANT_1.birth)]
        assert births and {c["address"]: c["unit"] for c in births[0]["channels"]}["bms_0/Soc"] == "%"
        assert [d["profile"] for d in births[0]["devices"]] == ["pylon-lv"]
        assert w.states(PLANT_1.state)[-1] == "online"
        err = stop_process(run)
        assert run.returncode == 0, err
        assert "uplink to mqtt://127.0.0.1" in err
        assert wait(lambda: w.states(PLANT_1.state)[-1:] == ["offline"])
    finally:
        if run.poll() is None:
            stop_process(run)
        stop_process(sim)
        if watcher is not None:
            watcher.close()
        broker.stop(signal.SIGKILL)


def samples(watcher: Watcher, topic: str) -> list[dict[str, object]]:
    return [s for p in watcher.payloads(topic) for s in json.loads(p)["samples"]]


def queued_rows(outbox: Path) -> int:
    try:
        with sqlite3.connect(outbox, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def test_the_uplink_table_is_checked(tmp_path: Path) -> None:
    base = {"site": {"org": "acme", "name": "plant-1"}}
    (tmp_path / "uplink.secret").write_text("s3cret\n", encoding="utf-8")
    site = parse_site({**base, "uplink": {"url": "mqtts://broker.example:8883", "username": "acme.plant-1",
                                          "password_file": "uplink.secret"}}, "site.toml", tmp_path / "site.toml")
    assert site.uplink == UplinkConfig(url="mqtts://broker.example:8883", username="acme.plant-1", password="s3cret")
    with pytest.raises(ConfigError, match=r"site.toml: \[uplink\]: unknown key 'pasword'.*did you mean 'password'"):
        parse_site({**base, "uplink": {"url": "mqtt://h", "pasword": "x"}}, "site.toml")
    with pytest.raises(ConfigError, match=r"\[uplink\]: key 'url': expected mqtt://host\[:port\] or mqtts://host"
                                          r"\[:port\], found 'http://h'"):
        parse_site({**base, "uplink": {"url": "http://h"}}, "site.toml")
    with pytest.raises(ConfigError, match=r"\[uplink\]: key 'ca_file': expected a readable file, found no file at"):
        parse_site({**base, "uplink": {"url": "mqtts://h", "ca_file": "missing.pem"}}, "site.toml",
                   tmp_path / "site.toml")
    with pytest.raises(ConfigError, match=r"\[uplink\]: keys 'password' and 'password_file': expected one of them"):
        parse_site({**base, "uplink": {"url": "mqtt://h", "password": "a", "password_file": "uplink.secret"}},
                   "site.toml", tmp_path / "site.toml")


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it signed (openssl): (CA, certificate, key)."""
    folder.mkdir()
    ca, ca_key, cert, key = (folder / n for n in ("ca.pem", "ca.key", "server.pem", "server.key"))
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n", encoding="utf-8")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=emsbms test CA",
         "-keyout", ca_key, "-out", ca],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", folder / "s.csr"],
        ["x509", "-req", "-in", folder / "s.csr", "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
         "-extfile", ext, "-out", cert],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


def test_mqtts_with_the_ca_file(tmp_path: Path) -> None:
    require_mosquitto()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca, cert, key = make_certificates(tmp_path / "tls")
    broker = Broker(tmp_path / "broker", [EDGE, CLOUD], tls=(ca, cert, key))
    broker.start()
    try:
        assert broker.url.startswith("mqtts://")
        uplink = Uplink(UplinkConfig(url=broker.url, username=EDGE.name, password=EDGE.password, ca_file=str(ca)),
                        PLANT_1)
        uplink.start()
        try:
            assert uplink.wait_state(UplinkState.ONLINE, 20), uplink.state
            sock = uplink.client.socket()
            assert sock is not None
            raw = getattr(sock, "_sock", None) or sock
            assert raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        finally:
            uplink.stop()
        # a CA that did not sign the broker's certificate: refused, and the uplink keeps trying
        other_ca, _, _ = make_certificates(tmp_path / "other")
        wrong = Uplink(UplinkConfig(url=broker.url, username=EDGE.name, password=EDGE.password,
                                    ca_file=str(other_ca)), PLANT_1)
        wrong.start()
        try:
            assert not wrong.wait_state(UplinkState.ONLINE, 3)
            assert wrong.state in (UplinkState.CONNECTING, UplinkState.OFFLINE)
        finally:
            wrong.stop()
    finally:
        broker.stop(signal.SIGKILL)


def test_emsbms_monitor_runs_the_uplink_and_shows_its_pane_unless_another_edge_holds_the_db(
        broker: Broker, tmp_path: Path) -> None:
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(43000, 47990)
    site = tmp_path / "site.toml"
    site.write_text(site_toml({
        "site": {"org": "acme", "name": "plant-1"},
        "bus": [{"name": "can0", "interface": "udp_multicast", "channel": "239.74.163.4", "port": port}],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}],
    }) + f'\n[uplink]\nurl = "{broker.url}"\nusername = "{EDGE.name}"\npassword = "{EDGE.password}"\n',
        encoding="utf-8")
    db = tmp_path / "edge.db"
    watcher = Watcher(broker, CLOUD, ["ems/acme/plant-1/#"])
    try:
        held = EdgeLock.acquire(db)  # another edge (an `emsbms run`) owns the site's uplink
        out = subprocess.run([*emsbms_command(), "--site", str(site), "--db", str(db), "monitor", "--duration", "2"],
                             capture_output=True, text=True, timeout=120)
        held.release()
        assert out.returncode == 0, out.stderr
        assert "monitor: no uplink, core or alarms from here: database" in " ".join(out.stderr.split())  # rich wraps
        assert watcher.states(PLANT_1.state) == []  # it never connected
        out = subprocess.run([*emsbms_command(), "--site", str(site), "--db", str(db), "monitor", "--duration", "4"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert wait(lambda: watcher.states(PLANT_1.state) == ["online", "offline"])  # a clean stop says offline
        assert "Uplink" in out.stdout and "online" in out.stdout  # the pane, in the last frame drawn
    finally:
        watcher.close()
